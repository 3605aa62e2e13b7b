"""The milter's tracking writer with a real SQLite store: records arrive, wait while the store is
down, drain in order afterwards, and a restart replays its spool without counting twice."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

import Milter
import pytest

from smtpplus_milter.core.tracking import MessageRecord
from smtpplus_milter.infra.spool import Pending, Spool
from smtpplus_milter.infra.store import TrackingStore, open_store
from smtpplus_milter.infra.store.base import RecordResult
from smtpplus_milter.infra.store.sql import SqlStore
from smtpplus_milter.observe.metrics import Metrics
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


def stored(url: str, queue_id: str) -> bool:
    store = open_store(url)
    try:
        store.migrate()
        return store.message(queue_id) is not None
    finally:
        store.close()


def test_records_reach_the_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tracking.db"
    metrics = Metrics()
    writer = TrackingWriter(url, Spool(tmp_path / "spool", max_bytes=1 << 20), metrics, interval=0.01)
    writer.start()
    try:
        writer.submit(record("4jdfvM0wYyzJVF1"))
        writer.submit(record("4jdfvM0wYyzJVF2"))
        eventually(lambda: stored(url, "4jdfvM0wYyzJVF2"))
    finally:
        writer.stop()
    assert stored(url, "4jdfvM0wYyzJVF1")
    assert metrics.registry.get_sample_value("smtpplus_tracking_spooled") == 0


def test_records_wait_while_the_store_is_down_then_drain(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tracking.db"
    down = True

    def opener(address: str) -> TrackingStore:
        if down:
            raise OSError("connection refused (store down)")
        return open_store(address)

    metrics = Metrics()
    writer = TrackingWriter(url, Spool(tmp_path / "spool", max_bytes=1 << 20), metrics, opener=opener, interval=0.01)
    writer.start()
    try:
        for number in range(5):
            writer.submit(record(f"4jdfvM0wYyzJVF{number}"))
        eventually(lambda: metrics.registry.get_sample_value("smtpplus_tracking_spooled") == 5)
        writer._next_try = 0.0  # no need to wait out the back-off in a test
        down = False
        eventually(lambda: metrics.registry.get_sample_value("smtpplus_tracking_spooled") == 0)
    finally:
        writer.stop()
    assert all(stored(url, f"4jdfvM0wYyzJVF{number}") for number in range(5))


def test_a_restart_drains_the_spool_without_counting_twice(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tracking.db"
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    # As if the milter was killed after writing the spool and after the store took the first
    # record, but before the spool's done mark moved.
    spool.append([record("4jdfvM0wYyzJVF1").as_dict(), record("4jdfvM0wYyzJVF2").as_dict()])
    spool.close()
    first = open_store(url)
    first.migrate()
    first.record_messages([record("4jdfvM0wYyzJVF1")])
    first.close()
    metrics = Metrics()
    writer = TrackingWriter(url, Spool(tmp_path / "spool", max_bytes=1 << 20), metrics, interval=0.01)
    assert metrics.registry.get_sample_value("smtpplus_tracking_spooled") == 2
    writer.start()
    writer.stop()
    store = open_store(url)
    try:
        assert len(list(store.messages(limit=None))) == 2
    finally:
        store.close()


def test_the_milter_records_an_accepted_message_with_its_recipients(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tracking.db"
    config = config_with(tmp_path, settings={"tracking": {"store": url, "node": "relay-1", "spool_dir": "spool"}})
    assert config.tracking is not None
    metrics = Metrics()
    writer = TrackingWriter(url, Spool(config.tracking.spool_dir, max_bytes=1 << 20), metrics, interval=0.01)
    writer.start()
    runtime = Runtime(config, metrics=metrics, tracking=writer)
    session = Session(runtime, "shop-frontend", queue_id="4jdfvM0wYyzJVF9")
    headers = [("From", "Shop <info@yourcompany.com>"), ("Subject", "=?UTF-8?Q?Bestellbest=C3=A4tigung?=")]
    assert session.message("info@yourcompany.com", headers) == ("eom", Milter.CONTINUE)
    refused = Session(runtime, "shop-frontend", queue_id="4jdfvM0wYyzJVF8")
    assert refused.message("ceo@bank.example", headers)[1] == Milter.REJECT
    writer.stop()
    store = open_store(url)
    try:
        message = store.message("4jdfvM0wYyzJVF9")
        assert message is not None
        assert (message.record.node, message.record.user, message.record.subject) == (
            "relay-1",
            "shop-frontend",
            "Bestellbestätigung",
        )
        assert [(story.address, story.state) for story in message.recipients] == [("rcpt@example.org", "queued")]
        assert store.message("4jdfvM0wYyzJVF8") is None  # refused: never queued, never recorded
    finally:
        store.close()


@pytest.mark.parametrize(
    ("left_over", "read_back", "store_calls"),
    [
        # Nothing older in the spool: the three flushes' batches go to the store as they are, in one call.
        pytest.param(0, 0, [3], id="nothing-older-no-read-back"),
        # Lines from before a restart: read back, in order, with what came after them.
        pytest.param(2, 1, [5], id="left-over-lines-read-back-first"),
    ],
)
def test_the_store_gets_the_spool_in_order_reading_back_only_what_it_must(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, left_over: int, read_back: int, store_calls: list[int]
) -> None:
    url = f"sqlite:///{tmp_path}/tracking.db"
    if left_over:
        spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
        spool.append([record(f"OLD{number}").as_dict() for number in range(left_over)])
        spool.close()
    reads: list[int] = []
    pending = Spool.pending

    def counted(self: Spool, limit: int = 1000) -> Pending:
        found = pending(self, limit)
        if found.records:
            reads.append(len(found.records))
        return found

    monkeypatch.setattr(Spool, "pending", counted)
    order: list[str] = []
    calls: list[int] = []
    real = SqlStore.record_messages

    def recorded(self: SqlStore, records: Iterable[MessageRecord]) -> RecordResult:
        records = list(records)
        order.extend(one.queue_id for one in records)
        calls.append(len(records))
        return real(self, records)

    monkeypatch.setattr(SqlStore, "record_messages", recorded)
    metrics = Metrics()
    writer = TrackingWriter(url, Spool(tmp_path / "spool", max_bytes=1 << 20), metrics, interval=3600)
    writer._next_store = float("inf")  # the store's turn has not come: the flushes only write the spool
    for number in range(3):
        writer.submit(record(f"NEW{number}"))
        writer._spool_incoming()
        writer._drain()
    assert calls == []
    writer.stop()  # the store's turn: everything spooled goes in

    assert order == [*(f"OLD{number}" for number in range(left_over)), "NEW0", "NEW1", "NEW2"]
    assert len(reads) == read_back
    assert calls == store_calls
    assert writer.stored == left_over + 3
    assert metrics.registry.get_sample_value("smtpplus_tracking_spooled") == 0
    assert Spool(tmp_path / "spool", max_bytes=1 << 20).count_pending() == 0
