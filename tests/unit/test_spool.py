"""The on-disk spool of tracking records: order, bound, done marks, crash replay."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpplus_milter.infra.spool import DONE, RECORDS, Spool, SpoolFull


def records(*numbers: int) -> list[dict[str, object]]:
    return [{"n": number, "subject": "Grüße"} for number in numbers]


def test_records_come_back_in_order_until_marked_done(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(records(1, 2))
    spool.append(records(3))
    first = spool.pending(limit=2)
    assert [r["n"] for r in first.records] == [1, 2]
    spool.mark_done(first.end)
    rest = spool.pending()
    assert [r["n"] for r in rest.records] == [3] and rest.records[0]["subject"] == "Grüße"
    spool.mark_done(rest.end)
    assert spool.size == 0 and spool.done == 0  # all done: the file is emptied
    assert spool.pending().records == ()


def test_a_restart_replays_what_was_not_marked_done(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(records(1, 2, 3))
    spool.mark_done(spool.pending(limit=1).end)
    spool.close()  # as if killed here: 2 and 3 never reached the store
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert again.count_pending() == 2
    assert [r["n"] for r in again.pending().records] == [2, 3]


def test_a_torn_last_line_is_neither_read_nor_marked(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(records(1))
    spool.close()
    with open(tmp_path / RECORDS, "ab") as file:
        file.write(b'{"n": 2, "subj')  # a crash in the middle of a write that was never fsynced
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert again.count_pending() == 1  # the torn line is not counted
    pending = again.pending()
    assert [r["n"] for r in pending.records] == [1]
    again.mark_done(pending.end)
    assert again.done == pending.end and again.size > pending.end  # the torn bytes stay unmarked


def test_the_bound_refuses_a_whole_batch(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=60)
    spool.append(records(1))
    size = spool.size
    with pytest.raises(SpoolFull):
        spool.append(records(2, 3, 4))
    assert spool.size == size  # nothing of the refused batch was written


def test_an_emptied_file_with_a_stale_mark_starts_afresh(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(records(1, 2))
    spool.close()
    (tmp_path / DONE).write_text("999\n", encoding="ascii")  # crash between emptying and marking
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert again.done == 0 and [r["n"] for r in again.pending().records] == [1, 2]
