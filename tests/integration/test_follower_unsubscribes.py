"""The follower counts mailto: unsubscribes that ingest recorded in the store (a real SQLite store):
``smtpplus_unsubscribes_total{list, source="mailto"}``; the web's own sources are not its to count."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from smtpplus_milter.infra.store import open_store
from smtpplus_milter.infra.store.base import Unsubscribe
from smtpplus_milter.observe.metrics import FollowerMetrics
from smtpplus_milter.services.follower import Follower
from tests.support.builders import message_record

NODE = "relay-1"


def run_out(f: Follower) -> None:
    for _ in range(1000):
        if not f.step():
            return
    raise AssertionError("the follower never reached the end of the file")


def test_mailto_unsubscribes_are_counted_per_list(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    store = open_store(url)
    store.migrate()
    recipients = ("a@example.org", "b@example.org", "c@example.org")
    store.record_messages([message_record("QA1", list="news", recipients=recipients)])
    log = tmp_path / "postfix.log"
    log.write_text("")
    metrics = FollowerMetrics()
    f = Follower(url, NODE, log, metrics, poll=0.01)

    def unsubscribe(address: str, source: str) -> None:
        store.record_unsubscribe(Unsubscribe("shop-frontend", "news", address, datetime.now(UTC), source, "ingest"))

    def duties() -> None:
        f._next_duties = 0.0  # the duties now rather than in a few seconds
        run_out(f)

    try:
        unsubscribe("a@example.org", "mailto")  # before the start: the baseline, not counted
        duties()
        unsubscribe("b@example.org", "mailto")
        unsubscribe("c@example.org", "one_click")  # the web process counts its own
        duties()
        assert metrics.unsubscribes.labels(list="news", source="mailto")._value.get() == 1
        assert metrics.unsubscribes.labels(list="news", source="one_click")._value.get() == 0
    finally:
        f.close()
        store.close()
