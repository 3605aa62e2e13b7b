"""infra.postfix_queue.read_info on queue files written record by record (tests/support/queuefile.py).

The layout is the one Postfix's cleanup writes when the milter adds headers: the original header
section ends with a pointer to the added headers at the end of the file, which point back to the
empty line. What the reader must get from it: the arrival time (T record) and the value of the
X-SMTPPlus-Queue header, wherever the pointers put it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpplus_milter.infra.postfix_queue import QueueFileError, QueueFileInfo, read_info
from tests.support.queuefile import Layout, Line, length_octets, postfix_file, record

ARRIVAL = pytest.approx(1796118890.715184, abs=1e-6)

# The headers of a real file's dump, in file order (the milter added the last four).
REAL_HEADERS: tuple[Line, ...] = (
    "Received: from client.test (client.test [127.0.0.1])",
    "\tby relay.test (Postfix) with ESMTPSA id 4jdfvM0wYyzJVF1",
    "From: News <news@shop.example>",
    "Subject: offers",
    "Message-ID: <1@shop.example>",
)
REAL_APPENDED: tuple[Line, ...] = (
    "X-Priority: 5 (Lowest)",
    "X-MSMail-Priority: Low",
    "Importance: low",
    "X-SMTPPlus-Queue: low",
)


def _read(tmp_path: Path, data: bytes) -> QueueFileInfo:
    path = tmp_path / "4jdfvM0wYyzJVF1"
    path.write_bytes(data)
    return read_info(path)


@pytest.mark.parametrize(
    ("length", "octets"),
    [
        pytest.param(0, b"\x00", id="zero"),
        pytest.param(127, b"\x7f", id="one-group"),
        pytest.param(128, b"\x80\x01", id="two-groups"),
        pytest.param(300, b"\xac\x02", id="least-significant-first"),
        pytest.param(2**21, b"\x80\x80\x80\x01", id="four-groups"),
    ],
)
def test_the_writer_encodes_lengths_as_postfix_does(length: int, octets: bytes) -> None:
    # The writer is what every other test here relies on; the example values are Postfix's rule
    # worked by hand (7-bit groups, least significant first, high bit: another group follows).
    assert length_octets(length) == octets


@pytest.mark.parametrize(
    ("headers", "appended", "queue"),
    [
        pytest.param(REAL_HEADERS, REAL_APPENDED, "low", id="real-layout-pointer-chain"),
        pytest.param(REAL_HEADERS, ("X-SMTPPlus-Queue: high",), "high", id="one-appended-header"),
        pytest.param(("From: a@b.example", "X-SMTPPlus-Queue: normal"), (), "normal", id="no-pointer-in-line"),
        pytest.param(REAL_HEADERS, ("x-smtpplus-QUEUE:   HIGH  ",), "high", id="name-and-value-any-case"),
        pytest.param(REAL_HEADERS, (("X-SMTPPlus-", "Queue: ", "low"),), "low", id="split-over-L-records"),
        pytest.param(
            (("Subject: " + "x" * 2048, "y" * 2048, "z"), "X-SMTPPlus-Queue: high"),
            (),
            "high",
            id="long-header-before-it",
        ),
        pytest.param(("Subject: a", "\tb", " c", "X-SMTPPlus-Queue: low"), (), "low", id="after-a-folded-header"),
        pytest.param(("Subject: a", " X-SMTPPlus-Queue: high"), (), None, id="a-continuation-line-is-not-the-header"),
        pytest.param(
            ("X-SMTPPlus-Queue-Note: high", "X-SMTPPlus-Queued: high"), (), None, id="longer-names-are-others"
        ),
        pytest.param(("To: a@b.cd", "Subject: hi", "X-Mailer: x"), REAL_APPENDED, "low", id="short-headers-padded"),
        pytest.param(("Subject: hi", "\tthere", "X-SMTPPlus-Queue: high"), (), "high", id="padding-before-a-fold"),
        pytest.param(REAL_HEADERS, REAL_APPENDED[:3], None, id="no-queue-header"),
        pytest.param(REAL_HEADERS, (), None, id="nothing-appended"),
    ],
)
def test_queue_header(tmp_path: Path, headers: tuple[Line, ...], appended: tuple[Line, ...], queue: str | None) -> None:
    info = _read(tmp_path, postfix_file(headers, appended))
    assert info.queue == queue
    assert info.arrival == ARRIVAL


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(("X-SMTPPlus-Queue: high",), id="header-like-body-line"),
        pytest.param(("Hello.", "X-SMTPPlus-Queue: high"), id="later-body-line"),
    ],
)
def test_the_body_is_not_read_as_headers(tmp_path: Path, body: tuple[str, ...]) -> None:
    data = postfix_file(REAL_HEADERS, ("X-SMTPPlus-Queue: low",), body=body)
    assert _read(tmp_path, data).queue == "low"


def test_a_body_line_without_the_empty_line_ends_the_headers(tmp_path: Path) -> None:
    # A message whose "header section" ends in a line without a colon (Postfix then treats the
    # rest as body): a header-like line after it is body text, not our header.
    data = postfix_file(("From: a@b.example", "no colon here", "X-SMTPPlus-Queue: high"), ())
    assert _read(tmp_path, data).queue is None


@pytest.mark.parametrize(
    ("time_record", "arrival"),
    [
        pytest.param("1796118890 715184", ARRIVAL, id="seconds-and-microseconds"),
        pytest.param("1796118890", 1796118890.0, id="seconds-only"),
        pytest.param("1700000000 5", pytest.approx(1700000000.000005, abs=1e-7), id="microseconds-not-a-fraction"),
    ],
)
def test_arrival(tmp_path: Path, time_record: str, arrival: object) -> None:
    assert _read(tmp_path, postfix_file(time_record=time_record)).arrival == arrival


def _envelope(*records: bytes) -> bytes:
    return Layout().size_record("content").raw(b"".join(records)).add("M").label("content").build()


_GOOD_CONTENT = record("N", "X-SMTPPlus-Queue: low") + record("N", "")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        pytest.param(postfix_file(time_record=None), "no arrival time", id="no-T-record"),
        pytest.param(postfix_file(time_record="soon"), "a time record", id="T-not-a-number"),
        pytest.param(postfix_file(time_record=""), "a time record", id="T-empty"),
        pytest.param(record("T", "1796118890 1") + record("S", "a@b.example"), "no message content", id="no-M-record"),
        pytest.param(
            record("C", "garbage") + record("T", "1796118890 1") + record("M") + _GOOD_CONTENT,
            "a size record",
            id="C-not-sizes",
        ),
        pytest.param(b"", "no message content", id="empty-file"),
        pytest.param(record("T", "1796118890 1")[:1], "inside a record length", id="ends-after-type"),
        pytest.param(b"T\x80", "inside a record length", id="ends-inside-length"),
        pytest.param(b"T\x80\x80", "inside a record length", id="ends-inside-length-later"),
        pytest.param(record("T", "1796118890 1")[:-3], "inside a record", id="ends-inside-data"),
        pytest.param(postfix_file(filter_record=None)[:-10], "inside a record", id="pointer-back-truncated"),
        pytest.param(_envelope(record("T", "1"))[:-1], "inside a record length", id="ends-after-M-type"),
    ],
)
def test_unreadable_files(tmp_path: Path, data: bytes, problem: str) -> None:
    with pytest.raises(QueueFileError, match=problem):
        _read(tmp_path, data)


def test_content_ending_inside_the_headers_keeps_what_was_found(tmp_path: Path) -> None:
    # The content section ends (X record) before an empty line: still a readable file.
    data = _envelope(record("T", "1796118890 715184")) + record("N", "X-SMTPPlus-Queue: low") + record("X")
    info = _read(tmp_path, data)
    assert info.queue == "low"
    assert info.arrival == ARRIVAL


def test_the_content_offset_is_followed(tmp_path: Path) -> None:
    # Records between M and the content offset are skipped: the reader starts where qmgr does.
    data = (
        Layout()
        .size_record("content")
        .add("T", "1796118890 715184")
        .add("M")
        .add("N", "X-SMTPPlus-Queue: high")
        .add("N", "")
        .label("content")
        .add("N", "X-SMTPPlus-Queue: low")
        .add("N", "")
        .build()
    )
    assert _read(tmp_path, data).queue == "low"


def test_a_file_that_left(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_info(tmp_path / "4jdfvM0wYyzJVF1")
