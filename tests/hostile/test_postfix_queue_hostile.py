"""Hostile queue files and queue directories for infra.postfix_queue: every bound of the reader,
and what a scan does with names, modes and files that are not (or no longer) messages.

The message part of a queue file is the client's, and a damaged file must cost one "unknown"
(never held, never urgent), never an exception other than QueueFileError: the preemption loop
reads every new queue id on every scan, so one file that raises anything else would stop it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from smtpplus_milter.infra import postfix_queue
from smtpplus_milter.infra.postfix_queue import (
    MAX_HEADER_BYTES,
    MAX_JUMPS,
    MAX_RECORD_BYTES,
    MAX_RECORDS,
    QueuedMessage,
    QueueFileError,
    QueueFileInfo,
    queued_file,
    read_info,
    scan,
)
from tests.support.queuefile import Layout, length_octets, pointer, postfix_file, record

ARRIVAL = pytest.approx(1796118890.715184, abs=1e-6)


def _content() -> Layout:
    """A minimal envelope (the size record, T, M): the records added next are the content."""
    return Layout().size_record("content").add("T", "1796118890 715184").add("M").label("content")


def _read(tmp_path: Path, data: bytes) -> QueueFileInfo:
    path = tmp_path / "4jdfvM0wYyzJVF1"
    path.write_bytes(data)
    return read_info(path)


def _looping(kind: str) -> bytes:
    start = _content()
    if kind == "self":
        return start.label("a").pointer_to("a").build()
    if kind == "two":
        return start.label("a").pointer_to("b").add("N", "Subject: x").label("b").pointer_to("a").build()
    # A loop through header lines only: each turn reads a record before it jumps.
    return start.label("a").add("N", "Subject: x").pointer_to("a").build()


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        pytest.param("self", "pointer records that do not end", id="pointer-to-itself"),
        pytest.param("two", "pointer records that do not end", id="a-to-b-to-a"),
        pytest.param("lines", "pointer records that do not end", id="through-header-lines"),
    ],
)
def test_pointer_loops_end(tmp_path: Path, kind: str, problem: str) -> None:
    with pytest.raises(QueueFileError, match=problem):
        _read(tmp_path, _looping(kind))


def test_pointer_jumps_are_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # MAX_JUMPS is the bound that ends the loop, not the record count.
    monkeypatch.setattr(postfix_queue, "MAX_JUMPS", 3)
    chain = _content().pointer_to("b").label("b").pointer_to("c").label("c").pointer_to("d").label("d")
    assert _read(tmp_path, chain.add("N", "X-SMTPPlus-Queue: low").add("N", "").build()).queue == "low"
    chain = _content().pointer_to("b").label("b").pointer_to("c").label("c").pointer_to("d")
    data = chain.label("d").pointer_to("e").label("e").add("N", "X-SMTPPlus-Queue: low").build()
    with pytest.raises(QueueFileError, match="pointer records that do not end"):
        _read(tmp_path, data)
    assert MAX_JUMPS < MAX_RECORDS  # a loop ends on the jump count first


def test_more_than_max_records(tmp_path: Path) -> None:
    lines = _content()
    for _ in range(MAX_RECORDS):
        lines.add("N", "A: b")
    with pytest.raises(QueueFileError, match=f"more than {MAX_RECORDS} records"):
        _read(tmp_path, lines.add("N", "X-SMTPPlus-Queue: low").build())


class _CountingFile:
    """A file that counts the bytes read from it (the reader must stop at its bound)."""

    total = 0

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def __enter__(self) -> _CountingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.handle.read(size)
        _CountingFile.total += len(data)
        return data

    def seek(self, offset: int) -> int:
        return int(self.handle.seek(offset))


@pytest.mark.parametrize(
    ("header_bytes", "queue"),
    [
        pytest.param(MAX_HEADER_BYTES - 64 * 1024, "low", id="under-the-bound-read-to-the-end"),
        pytest.param(MAX_HEADER_BYTES + 1, None, id="just-over-the-bound-unknown"),
        pytest.param(10 * 1024 * 1024, None, id="ten-MiB-unknown"),
    ],
)
def test_a_huge_header_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, header_bytes: int, queue: str | None
) -> None:
    line = "X-Pad: " + "x" * 993  # 1,000 bytes of data per record
    count = -(-header_bytes // len(line))
    data = postfix_file(headers=(line,) * count, appended=("X-SMTPPlus-Queue: low",))
    monkeypatch.setattr(postfix_queue, "open", lambda path, mode: _CountingFile(open(path, mode)), raising=False)
    _CountingFile.total = 0
    assert _read(tmp_path, data).queue == queue
    # Never more than the envelope, the bound and one more record's worth of the file.
    assert _CountingFile.total <= MAX_HEADER_BYTES + 4096


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        pytest.param(b"N\xff\xff\xff\xff\xff\x01", "too many bits", id="five-continued-groups"),
        pytest.param(b"N" + b"\x80" * 1000, "too many bits", id="endless-continuation"),
        pytest.param(
            b"N" + length_octets(MAX_RECORD_BYTES + 1), f"a record of {MAX_RECORD_BYTES + 1} bytes", id="over"
        ),
        pytest.param(record("p", "-5"), "pointer records that do not end", id="negative-pointer"),
        pytest.param(record("p", "12ab"), "a pointer record", id="garbage-pointer"),
        pytest.param(record("p", "\xb9\xb2"), "a pointer record", id="non-ascii-digits"),
        pytest.param(record("p", "1" * 19), "an offset of", id="pointer-past-what-seek-takes"),
        pytest.param(record("p", "9" * 40), "an offset of", id="pointer-past-64-bits"),
        pytest.param(record("p", "9" * 5000), "a pointer record", id="pointer-with-5000-digits"),
    ],
)
def test_bad_records_in_the_content(tmp_path: Path, raw: bytes, problem: str) -> None:
    with pytest.raises(QueueFileError, match=problem):
        _read(tmp_path, _content().raw(raw).add("N", "X-SMTPPlus-Queue: low").build())


@pytest.mark.parametrize(
    ("envelope", "problem"),
    [
        pytest.param(record("T", "9" * 400), "a time record", id="time-too-large-for-a-float"),
        pytest.param(record("T", "1 " + "9" * 400), "a time record", id="microseconds-too-large"),
        pytest.param(record("T", "1e9"), "a time record", id="time-not-an-integer"),
        pytest.param(record("C", "1 " + "9" * 40) + record("T", "1"), "an offset of", id="content-offset-past-64-bits"),
    ],
)
def test_bad_envelope_records(tmp_path: Path, envelope: bytes, problem: str) -> None:
    data = envelope + record("M") + record("N", "X-SMTPPlus-Queue: low") + record("N", "")
    with pytest.raises(QueueFileError, match=problem):
        _read(tmp_path, data)


def test_a_pointer_past_the_end_ends_the_content(tmp_path: Path) -> None:
    data = _content().add("N", "X-SMTPPlus-Queue: high").raw(pointer(10**9)).add("N", "X-SMTPPlus-Queue: low").build()
    assert _read(tmp_path, data) == QueueFileInfo(1796118890.715184, "high")


@pytest.mark.parametrize(
    ("headers", "appended", "queue"),
    [
        pytest.param(("X-SMTPPlus-Queue: high",), ("X-SMTPPlus-Queue: low",), "low", id="client-high-milter-low"),
        pytest.param(
            ("X-SMTPPlus-Queue: low",), ("X-SMTPPlus-Queue: normal",), "normal", id="client-low-milter-normal"
        ),
        pytest.param(
            ("X-SMTPPlus-Queue: high", "x-smtpplus-queue: HIGH"), ("X-SMTPPlus-Queue: low",), "low", id="two-forged"
        ),
    ],
)
def test_the_milters_header_wins_over_a_forged_one(
    tmp_path: Path, headers: tuple[str, ...], appended: tuple[str, ...], queue: str
) -> None:
    # The milter deletes a client's own X-SMTPPlus-Queue and adds its own, which cleanup links in
    # at the end of the header section: the reader takes the last one in reading order, so a
    # copy the deletion missed still cannot make bulk mail urgent.
    assert _read(tmp_path, postfix_file(headers=headers, appended=appended)).queue == queue


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param("X-SMTPPlus-Queue: high", id="long-enough"),
        pytest.param("X-SMTPPlus-Queue: high (really, trust me)", id="longer"),
    ],
)
def test_a_forged_header_the_milter_deleted(tmp_path: Path, forged: str) -> None:
    # How cleanup deletes a header: the first bytes of its record are overwritten in place by a
    # pointer to what follows the header; the rest of the old record stays in the file, skipped.
    old = record("N", forged)
    data = (
        _content()
        .add("N", "From: a@b.example")
        .pointer_to("next")
        .raw(old[len(pointer(0)) :])
        .label("next")
        .add("N", "X-SMTPPlus-Queue: low")
        .add("N", "")
        .build()
    )
    assert _read(tmp_path, data).queue == "low"


@pytest.mark.parametrize(
    "first_body_line",
    [
        pytest.param("not a header: x", id="space-in-the-name"),
        pytest.param(":colon first", id="empty-name"),
        pytest.param("Subj\x01ect: x", id="control-character"),
        pytest.param("Sübject: x", id="eight-bit-name"),
    ],
)
def test_a_forged_header_in_the_body(tmp_path: Path, first_body_line: str) -> None:
    # A client ends its header section with a line Postfix does not take for a header (a header
    # name is printable ASCII without spaces or colons, then optional blanks and a colon): cleanup
    # and the milter see it and everything after it as body, so the milter deletes nothing there.
    # The reader must end the header section where Postfix did, or that body line would win.
    data = postfix_file(
        appended=("X-SMTPPlus-Queue: low",),
        body=(first_body_line, "X-SMTPPlus-Queue: high", "", "Hello."),
        blank_line=False,
    )
    assert _read(tmp_path, data).queue == "low"


def test_obsolete_blanks_before_the_colon_are_a_header(tmp_path: Path) -> None:
    # "Name :" is a header for Postfix (obsolete syntax): the section goes on after it.
    data = postfix_file(headers=("Subject : x", "X-SMTPPlus-Queue: normal"), appended=())
    assert _read(tmp_path, data).queue == "normal"


# --- scan() -------------------------------------------------------------------------------------

READY = 0o700
WRITING = 0o600


def _queue_file(path: Path, mode: int = READY) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(postfix_file())
    path.chmod(mode)
    return path


def _found(queue_dir: Path, queues: tuple[str, ...] = postfix_queue.MESSAGE_QUEUES) -> list[tuple[str, str, str]]:
    return sorted(
        (m.postfix_queue, m.queue_id, str(Path(m.path).relative_to(queue_dir))) for m in scan(queue_dir, queues)
    )


def test_scan_finds_messages_and_only_messages(tmp_path: Path) -> None:
    for name in ("4jdfvM0wYyzJVF1", "ABCDEF1234"):
        _queue_file(tmp_path / "incoming" / name)
    _queue_file(tmp_path / "active" / "4jdfvM0wYyzJVF2", WRITING)  # active/hold: no mode check
    _queue_file(tmp_path / "hold" / "4jdfvM0wYyzJVF3", WRITING)
    _queue_file(tmp_path / "deferred" / "4" / "4jdfvM0wYyzJVF4")  # hash_queue_depth 1
    _queue_file(tmp_path / "deferred" / "4" / "j" / "4jdfvM0wYyzJVF5")  # depth 2
    # Not messages: names that are not queue ids, files still being written, odd directories.
    for name in ("", ".hidden", "ABCD", "A" * 41, "ABC-DEF123", "ABCDEF123.tmp", "ÄBCDEF123", "ABCDEF\u0661\u0662"):
        if name:
            _queue_file(tmp_path / "incoming" / name)
    _queue_file(tmp_path / "incoming" / "4jdfvM0wYyzJVF6", WRITING)
    _queue_file(tmp_path / "deferred" / "5" / "4jdfvM0wYyzJVF7", WRITING)
    _queue_file(tmp_path / "deferred" / "subdir" / "4jdfvM0wYyzJVF8")  # not a hash directory
    _queue_file(tmp_path / "maildrop" / "4jdfvM0wYyzJVF9")  # not a queue we scan
    assert _found(tmp_path) == [
        ("active", "4jdfvM0wYyzJVF2", "active/4jdfvM0wYyzJVF2"),
        ("deferred", "4jdfvM0wYyzJVF4", "deferred/4/4jdfvM0wYyzJVF4"),
        ("deferred", "4jdfvM0wYyzJVF5", "deferred/4/j/4jdfvM0wYyzJVF5"),
        ("hold", "4jdfvM0wYyzJVF3", "hold/4jdfvM0wYyzJVF3"),
        ("incoming", "4jdfvM0wYyzJVF1", "incoming/4jdfvM0wYyzJVF1"),
        ("incoming", "ABCDEF1234", "incoming/ABCDEF1234"),
    ]
    assert _found(tmp_path, ("active", "hold")) == [
        ("active", "4jdfvM0wYyzJVF2", "active/4jdfvM0wYyzJVF2"),
        ("hold", "4jdfvM0wYyzJVF3", "hold/4jdfvM0wYyzJVF3"),
    ]


def test_deferred_mtime_is_the_retry_time(tmp_path: Path) -> None:
    path = _queue_file(tmp_path / "deferred" / "A" / "ABCDEF1234")
    os.utime(path, (1796118990.0, 1796118990.0))
    assert list(scan(tmp_path, ("deferred",))) == [
        QueuedMessage("ABCDEF1234", "deferred", str(path), 1796118990.0, path.stat().st_ino)
    ]


def test_a_missing_queue_directory_is_empty(tmp_path: Path) -> None:
    assert _found(tmp_path / "nowhere") == []


def test_a_symlinked_directory_is_not_followed(tmp_path: Path) -> None:
    _queue_file(tmp_path / "elsewhere" / "ABCDEF1234")
    (tmp_path / "deferred").mkdir()
    (tmp_path / "deferred" / "A").symlink_to(tmp_path / "elsewhere")
    assert _found(tmp_path) == []


def test_files_vanishing_mid_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """qmgr moves files while we list: a file or a hash directory gone between listing and stat."""
    for name in ("ABCDEF1001", "ABCDEF1002", "ABCDEF1003"):
        _queue_file(tmp_path / "incoming" / name)
    _queue_file(tmp_path / "deferred" / "B" / "ABCDEF2001")
    _queue_file(tmp_path / "deferred" / "C" / "ABCDEF3001")
    real_scandir = os.scandir

    def vanishing(path: Any) -> Any:
        entries = list(real_scandir(path))
        for entry in entries:
            if entry.name in ("ABCDEF1002", "ABCDEF2001"):
                os.unlink(entry.path)  # listed, then gone before its stat
        if Path(path).name == "C":
            raise FileNotFoundError(path)  # the whole hash directory went
        return iter(entries)

    monkeypatch.setattr(os, "scandir", vanishing)  # the module postfix_queue lists with
    assert sorted(m.queue_id for m in scan(tmp_path, ("incoming", "deferred"))) == ["ABCDEF1001", "ABCDEF1003"]


def test_a_file_vanishing_before_it_is_read(tmp_path: Path) -> None:
    path = _queue_file(tmp_path / "active" / "ABCDEF1234")
    listed = list(scan(tmp_path, ("active",)))
    path.unlink()
    with pytest.raises(FileNotFoundError):
        read_info(listed[0].path)


def test_queued_file_reports_one_file_as_scan_would(tmp_path: Path) -> None:
    # The idle look between full scans reads only new names, one file at a time.
    ready = _queue_file(tmp_path / "incoming" / "4jdfvM0wYyzJVF1")
    _queue_file(tmp_path / "incoming" / "4jdfvM0wYyzJVF2", WRITING)
    _queue_file(tmp_path / "active" / "4jdfvM0wYyzJVF3", WRITING)  # active: complete by definition
    (tmp_path / "incoming" / "not-an-id!").write_bytes(b"")
    (tmp_path / "incoming" / "4jdfvM0wYyzJVF4").mkdir()
    [scanned] = [m for m in scan(tmp_path, ("incoming",)) if m.queue_id == "4jdfvM0wYyzJVF1"]
    assert queued_file(tmp_path, "incoming", "4jdfvM0wYyzJVF1") == scanned
    assert scanned.path == str(ready)
    assert queued_file(tmp_path, "incoming", "4jdfvM0wYyzJVF2") is None  # still being written
    assert queued_file(tmp_path, "active", "4jdfvM0wYyzJVF3") is not None
    assert queued_file(tmp_path, "incoming", "not-an-id!") is None
    assert queued_file(tmp_path, "incoming", "4jdfvM0wYyzJVF4") is None  # a directory
    assert queued_file(tmp_path, "incoming", "4jdfvM0wYyzJVF9") is None  # gone
