"""The milter's tracking writer and the spool it shares with the follower: the milter only appends
(never a store), a full spool loses whole batches and counts them, and an appender and a reader
with separate spool objects, working at once in two threads, see every record once and in order."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import Milter
import pytest

from smtpplus_milter.core.tracking import MessageRecord
from smtpplus_milter.infra.spool import SpoolAppender, SpoolReader, segments
from smtpplus_milter.observe.metrics import Metrics
from smtpplus_milter.services import tracking
from smtpplus_milter.services.runtime import Runtime
from smtpplus_milter.services.tracking import TrackingWriter
from tests.support.builders import config_with, message_record
from tests.support.milterctx import Session

AT = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def record(queue_id: str) -> MessageRecord:
    return message_record(queue_id, accepted_at=AT)


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def spooled_ids(directory: Path) -> list[str]:
    return [str(item["queue_id"]) for item in SpoolReader(directory).read(limit=100_000).records]


def test_records_reach_the_spool_and_the_milter_opens_no_store(tmp_path: Path) -> None:
    metrics = Metrics()
    writer = TrackingWriter(SpoolAppender(tmp_path / "spool", max_bytes=1 << 20), metrics, interval=0.01)
    writer.start()
    try:
        writer.submit(record("4jdfvM0wYyzJVF1"))
        writer.submit(record("4jdfvM0wYyzJVF2"))
        eventually(lambda: spooled_ids(tmp_path / "spool") == ["4jdfvM0wYyzJVF1", "4jdfvM0wYyzJVF2"])
    finally:
        writer.stop()
    assert writer.spooled == 2
    assert not hasattr(tracking, "open_store")  # the milter's side has no way to a store any more
    assert metrics.registry.get_sample_value("smtpplus_tracking_spooled") is None  # the follower's metric


def test_stop_spools_what_is_still_queued(tmp_path: Path) -> None:
    writer = TrackingWriter(SpoolAppender(tmp_path / "spool", max_bytes=1 << 20), Metrics(), interval=3600)
    writer.start()
    for number in range(3):
        writer.submit(record(f"4jdfvM0wYyzJV{number}"))
    writer.stop()  # the thread never flushed (an hour's interval): stop does
    assert spooled_ids(tmp_path / "spool") == [f"4jdfvM0wYyzJV{number}" for number in range(3)]


def test_a_full_spool_loses_whole_batches_and_counts_them(tmp_path: Path) -> None:
    metrics = Metrics()
    size = len(record("4jdfvM0wYyzJVF1").as_dict().__repr__())
    writer = TrackingWriter(SpoolAppender(tmp_path / "spool", max_bytes=size * 3), metrics, interval=3600)
    writer.submit(record("4jdfvM0wYyzJVF1"))
    writer._flush()
    for number in range(5):
        writer.submit(record(f"4jdfvM0wYyzJW{number}"))
    writer._flush()  # one batch of five: over the bound, refused whole
    writer.stop()
    assert metrics.registry.get_sample_value("smtpplus_tracking_lost_total") == 5
    assert spooled_ids(tmp_path / "spool") == ["4jdfvM0wYyzJVF1"]


def test_the_milter_records_an_accepted_message_with_its_recipients(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tracking.db"
    config = config_with(tmp_path, settings={"tracking": {"store": url, "node": "relay-1", "spool_dir": "spool"}})
    assert config.tracking is not None
    metrics = Metrics()
    writer = TrackingWriter(SpoolAppender(config.tracking.spool_dir, max_bytes=1 << 20), metrics, interval=0.01)
    writer.start()
    runtime = Runtime(config, metrics=metrics, tracking=writer)
    session = Session(runtime, "shop-frontend", queue_id="4jdfvM0wYyzJVF9")
    headers = [("From", "Shop <info@yourcompany.com>"), ("Subject", "=?UTF-8?Q?Bestellbest=C3=A4tigung?=")]
    assert session.message("info@yourcompany.com", headers) == ("eom", Milter.CONTINUE)
    refused = Session(runtime, "shop-frontend", queue_id="4jdfvM0wYyzJVF8")
    assert refused.message("ceo@bank.example", headers)[1] == Milter.REJECT
    writer.stop()
    [item] = SpoolReader(config.tracking.spool_dir).read().records  # refused: never queued, never recorded
    message = MessageRecord.from_dict(item)
    assert (message.node, message.queue_id, message.user, message.subject, message.recipients) == (
        "relay-1",
        "4jdfvM0wYyzJVF9",
        "shop-frontend",
        "Bestellbestätigung",
        ("rcpt@example.org",),
    )


@pytest.mark.parametrize(
    ("segment_bytes", "limit"),
    [
        pytest.param(1 << 20, 500, id="one-segment"),
        pytest.param(2_000, 7, id="many-small-segments-small-batches"),
    ],
)
def test_an_appender_and_a_reader_at_once_see_every_record_once_in_order(
    tmp_path: Path, segment_bytes: int, limit: int
) -> None:
    directory = tmp_path / "spool"
    total = 3_000
    appender = SpoolAppender(directory, max_bytes=1 << 30, segment_bytes=segment_bytes)
    reader = SpoolReader(directory)  # its own object, as in the follower's process
    seen: list[int] = []
    done = threading.Event()
    problems: list[BaseException] = []

    def read() -> None:
        try:
            while not (done.is_set() and len(seen) == total):
                batch = reader.read(limit=limit)
                seen.extend(int(str(item["n"])) for item in batch.records)
                assert batch.skipped == ()
                if batch.end != reader.mark:
                    reader.mark_done(batch.end)
                if not batch.records:
                    time.sleep(0.001)
        except BaseException as exc:  # reported to the test's thread
            problems.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    for start in range(0, total, 30):
        appender.append([{"n": n, "pad": "x" * 40} for n in range(start, start + 30)])
    done.set()
    thread.join(60)
    assert not thread.is_alive() and problems == []
    assert seen == list(range(total))
    assert segments(directory) == [appender.segment]  # every done segment but the newest is deleted
    assert SpoolReader(directory).count() == 0
