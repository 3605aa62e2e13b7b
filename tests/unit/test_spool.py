"""The tracking spool shared by an appender and a reader: order, segments, marks, the bound, torn lines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smtpplus_milter.infra.spool import (
    DONE,
    HEADER,
    Mark,
    SpoolAppender,
    SpoolFull,
    SpoolProblem,
    SpoolReader,
    segment_name,
    segments,
)


def records(*numbers: int) -> list[dict[str, object]]:
    return [{"n": number, "subject": "Grüße"} for number in numbers]


def numbers(batch_records: tuple[dict[str, object], ...]) -> list[object]:
    return [record["n"] for record in batch_records]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_records_come_back_in_order_until_marked_done(tmp_path: Path) -> None:
    appender = SpoolAppender(tmp_path, max_bytes=1 << 20)
    reader = SpoolReader(tmp_path)
    appender.append(records(1, 2))
    appender.append(records(3))
    first = reader.read(limit=2)
    assert numbers(first.records) == [1, 2] and first.skipped == ()
    reader.mark_done(first.end)
    rest = reader.read()
    assert numbers(rest.records) == [3] and rest.records[0]["subject"] == "Grüße"
    reader.mark_done(rest.end)
    assert reader.read().records == () and reader.count() == 0


def test_a_reader_restart_reads_again_what_was_not_marked_done(tmp_path: Path) -> None:
    appender = SpoolAppender(tmp_path, max_bytes=1 << 20)
    appender.append(records(1, 2, 3))
    reader = SpoolReader(tmp_path)
    reader.mark_done(reader.read(limit=1).end)  # killed here: 2 and 3 never reached the store
    again = SpoolReader(tmp_path)
    assert again.count() == 2
    assert numbers(again.read().records) == [2, 3]


def test_the_appender_starts_a_new_segment_at_start_and_when_the_current_is_full(tmp_path: Path) -> None:
    first = SpoolAppender(tmp_path, max_bytes=1 << 20, segment_bytes=100)
    first.append(records(1))
    first.append(records(2))  # the segment passed 100 bytes after this one
    first.append(records(3))  # so this one opens segment 2
    first.close()
    second = SpoolAppender(tmp_path, max_bytes=1 << 20, segment_bytes=100)
    second.append(records(4))
    assert segments(tmp_path) == [1, 2, 3]
    reader = SpoolReader(tmp_path)
    batch = reader.read()
    assert numbers(batch.records) == [1, 2, 3, 4] and batch.end.segment == 3
    reader.mark_done(batch.end)
    assert segments(tmp_path) == [3]  # the done segments go; the newest stays (the appender writes it)


def test_the_reader_waits_for_a_partial_line_of_the_newest_segment(tmp_path: Path) -> None:
    appender = SpoolAppender(tmp_path, max_bytes=1 << 20)
    appender.append(records(1))
    path = tmp_path / segment_name(appender.segment)
    with open(path, "ab") as file:
        file.write(b'{"n":2,"sub')  # the appender is in the middle of this write
    reader = SpoolReader(tmp_path)
    batch = reader.read()
    assert numbers(batch.records) == [1] and batch.skipped == () and reader.count() == 1
    with open(path, "ab") as file:
        file.write(b'ject":"x"}\n')
    reader.mark_done(batch.end)
    assert numbers(reader.read().records) == [2]


def test_a_torn_line_of_an_older_segment_is_skipped_and_reported(tmp_path: Path) -> None:
    appender = SpoolAppender(tmp_path, max_bytes=1 << 20)
    appender.append(records(1))
    with open(tmp_path / segment_name(appender.segment), "ab") as file:
        file.write(b'{"n":2,"sub')  # a crash mid-write: never fsynced, never acknowledged
    appender.close()
    restarted = SpoolAppender(tmp_path, max_bytes=1 << 20)  # a new segment: the old one is final
    restarted.append(records(3))
    batch = SpoolReader(tmp_path).read()
    assert numbers(batch.records) == [1, 3]
    assert len(batch.skipped) == 1 and "partial last line" in batch.skipped[0]


def test_a_line_that_is_not_a_record_is_skipped(tmp_path: Path) -> None:
    appender = SpoolAppender(tmp_path, max_bytes=1 << 20)
    appender.append(records(1))
    with open(tmp_path / segment_name(appender.segment), "ab") as file:
        file.write(b"garbage\n[1]\n")
    appender.append(records(2))
    batch = SpoolReader(tmp_path).read()
    assert numbers(batch.records) == [1, 2] and len(batch.skipped) == 2


@pytest.mark.parametrize(
    ("first_line", "message"),
    [
        pytest.param(b'{"format":"smtpplus-tracking-spool","version":99}\n', "version 99", id="newer-version"),
        pytest.param(b'{"n":1}\n', "not a tracking spool segment", id="no-header"),
    ],
)
def test_a_segment_of_another_format_is_refused_not_misread(tmp_path: Path, first_line: bytes, message: str) -> None:
    (tmp_path / segment_name(1)).write_bytes(first_line + b'{"n":2}\n')
    with pytest.raises(SpoolProblem, match=message):
        SpoolReader(tmp_path).read()


def test_every_segment_starts_with_the_versioned_header(tmp_path: Path) -> None:
    appender = SpoolAppender(tmp_path, max_bytes=1 << 20)
    appender.append(records(1))
    assert (tmp_path / segment_name(appender.segment)).read_bytes().startswith(HEADER)


def test_the_bound_refuses_a_whole_batch_and_counts_only_what_is_not_done(tmp_path: Path) -> None:
    clock = Clock()
    appender = SpoolAppender(tmp_path, max_bytes=120, clock=clock)
    appender.append(records(1))
    before = appender.size
    with pytest.raises(SpoolFull, match="follower"):
        appender.append(records(2, 3, 4))
    assert appender.size == before  # nothing of the refused batch was written
    reader = SpoolReader(tmp_path)
    reader.mark_done(reader.read().end)
    appender.append(records(2, 3))  # the reader's mark freed the room (read again before refusing)
    assert appender.waiting_bytes < 120


def test_the_appender_reads_the_mark_at_most_once_a_second(tmp_path: Path) -> None:
    clock = Clock()
    appender = SpoolAppender(tmp_path, max_bytes=1 << 20, clock=clock)
    appender.append(records(1))
    reader = SpoolReader(tmp_path)
    reader.mark_done(reader.read().end)
    appender.append(records(2))
    assert appender.waiting_bytes > len(records(1)[0]) * 2  # still the old mark: nothing read yet
    clock.now = 1.0
    appender.append(records(3))
    assert appender.waiting_bytes == (tmp_path / segment_name(1)).stat().st_size - reader.mark.offset


def test_waiting_bytes_span_segments(tmp_path: Path) -> None:
    clock = Clock()
    appender = SpoolAppender(tmp_path, max_bytes=1 << 20, segment_bytes=60, clock=clock)
    for number in range(5):
        appender.append(records(number))
    total = sum((tmp_path / segment_name(n)).stat().st_size for n in segments(tmp_path))
    assert appender.waiting_bytes == total
    reader = SpoolReader(tmp_path)
    reader.mark_done(reader.read(limit=2).end)
    clock.now = 5.0
    appender._refresh()
    left = sum((tmp_path / segment_name(n)).stat().st_size for n in segments(tmp_path))
    assert appender.waiting_bytes == left - (reader.mark.offset if reader.mark.segment in segments(tmp_path) else 0)
    assert SpoolReader(tmp_path).count() == 3


def test_a_mark_beyond_the_segments_makes_the_appender_start_after_it(tmp_path: Path) -> None:
    (tmp_path / DONE).write_text("7 300\n", encoding="ascii")  # segments removed by hand, mark kept
    appender = SpoolAppender(tmp_path, max_bytes=1 << 20)
    appender.append(records(1))
    assert appender.segment == 8
    assert numbers(SpoolReader(tmp_path).read().records) == [1]


@pytest.mark.parametrize(
    ("text", "mark"),
    [
        pytest.param("3 120\n", Mark(3, 120), id="ok"),
        pytest.param("", None, id="empty"),
        pytest.param("3\n", None, id="one-field"),
        pytest.param("x 1\n", None, id="not-a-number"),
    ],
)
def test_mark_parse(text: str, mark: Mark | None) -> None:
    assert Mark.parse(text) == mark


def test_the_directory_is_private_to_the_daemons_user(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    old = os.umask(0)
    try:
        SpoolAppender(directory, max_bytes=1 << 20).append(records(1))
    finally:
        os.umask(old)
    assert directory.stat().st_mode & 0o777 == 0o750
    assert (directory / segment_name(1)).stat().st_mode & 0o777 == 0o640
