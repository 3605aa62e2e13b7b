"""SIGHUP to a real ``smtpplus-milter follow`` process: the new suppression rules apply to the next
outcome, a key that needs a restart is named and not applied, and a broken file changes nothing."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lab.harness import free_port
from lab.milter_process import FollowerProcess
from smtpplus_milter.infra.store import TrackingStore, open_store
from smtpplus_milter.infra.store.base import Suppression
from tests.support.builders import message_record, write_config

NODE = "relay-1"
AT = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def qid(n: int) -> str:
    return f"4jdfvM0wYyz{n}"


def hard_bounce(q: str, to: str, second: int) -> str:
    at = (AT + timedelta(seconds=second)).isoformat(timespec="microseconds")
    return (
        f"{at} relay postfix/smtp[200]: {q}: to=<{to}>, relay=mx.example.org[192.0.2.25]:25, delay=1.2,"
        f" delays=0.1/0/0.5/0.6, dsn=5.1.1, status=bounced (host mx.example.org[192.0.2.25] said:"
        f" 550 5.1.1 no such user (in reply to RCPT TO))\n"
    )


def append(path: Path, text: str) -> None:
    with path.open("ab") as handle:
        handle.write(text.encode())


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/t.db"


@pytest.fixture
def store(url: str) -> Iterator[TrackingStore]:
    opened = open_store(url)
    opened.migrate()
    yield opened
    opened.close()


def _wait_for(found: Callable[[], Any], seconds: float = 20.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (value := found()) is not None:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def _suppression(store: TrackingStore, address: str) -> Callable[[], Suppression | None]:
    return lambda: next(store.suppressions(address=address), None)


def test_sighup_applies_new_bounce_rules_to_the_next_outcome_and_a_broken_file_keeps_them(
    store: TrackingStore, url: str, tmp_path: Path
) -> None:
    log = tmp_path / "postfix.log"
    log.touch()
    port = free_port()
    addresses = {n: f"gone{n}@example.org" for n in (1, 2, 3)}
    store.record_messages([message_record(qid(n), recipients=(addresses[n],)) for n in addresses])

    def configure(suppress_hard_days: int, node: str = NODE) -> Path:
        tracking = {
            "store": url,
            "node": node,
            "maillog": str(log),
            "metrics_listen": f"127.0.0.1:{port}",
            "spool_dir": str(tmp_path / "spool"),
        }
        return write_config(
            tmp_path, settings={"tracking": tracking, "bounces": {"suppress_hard_days": suppress_hard_days}}
        )

    config = configure(180)
    with FollowerProcess(config, port, tmp_path / "follow.log") as follower:
        append(log, hard_bounce(qid(1), addresses[1], 1))
        first = _wait_for(_suppression(store, addresses[1]))
        assert first.expires == AT + timedelta(seconds=1, days=180)

        # A new policy, and a node that only a restart can change.
        configure(30, node="relay-2")
        follower.reload()
        follower.wait_for_event("config_reloaded")
        warned = follower.wait_for_event("config_reload_needs_restart")
        assert warned["keys"] == ["tracking.node"]
        append(log, hard_bounce(qid(2), addresses[2], 2))
        second = _wait_for(_suppression(store, addresses[2]))
        assert second.expires == AT + timedelta(seconds=2, days=30)
        assert second.source_node == NODE  # still written as the node it started as

        # A file that does not validate: logged, and the 30 days stay in force.
        configure(0)
        follower.reload()
        failed = follower.wait_for_event("config_reload_failed")
        assert any("suppress_hard_days" in problem for problem in failed["problems"])
        append(log, hard_bounce(qid(3), addresses[3], 3))
        third = _wait_for(_suppression(store, addresses[3]))
        assert third.expires == AT + timedelta(seconds=3, days=30)
        assert follower.alive()
        assert len(follower.events("config_reloaded")) == 1
