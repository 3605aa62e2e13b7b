"""The milter's refund line to the policy daemon (infra/policy_client.py) against a real daemon:
a refund gives the place back once, a kept connection the daemon closed is replaced, and a daemon
that is not there is reported, never waited for on the mail path."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from smtpplus_milter.config import load_config
from smtpplus_milter.config.values import SocketSpec
from smtpplus_milter.core.limits import Limits, Message
from smtpplus_milter.infra.limit_store import MemoryLimitStore
from smtpplus_milter.infra.policy_client import RefundSender
from smtpplus_milter.services.policyd import PolicyService
from tests.support.builders import write_config

NOW = 1_796_118_890.0
ONE_AN_HOUR = Limits(messages_per_hour=1)


class Results:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.changed = threading.Condition()

    def __call__(self, result: str, reason: str) -> None:
        with self.changed:
            self.seen.append((result, reason))
            self.changed.notify_all()

    def wait(self, count: int, timeout: float = 10.0) -> list[tuple[str, str]]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.seen) >= count, timeout), self.seen
            return list(self.seen)


def _daemon(tmp_path: Path, store: MemoryLimitStore, idle: int = 60) -> tuple[PolicyService, SocketSpec]:
    listen = tmp_path / "policy.sock"
    refund = tmp_path / "refund.sock"
    settings = {"policy": {"listen": f"unix:{listen}", "refund_listen": f"unix:{refund}", "idle_timeout_seconds": idle}}
    config = load_config(write_config(tmp_path, settings=settings))
    service = PolicyService(config, store=store, clock=lambda: NOW, emit=lambda level, event, fields: None)
    threading.Thread(target=service.serve, daemon=True).start()
    deadline = time.monotonic() + 5
    while not refund.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert config.policy.refund_listen is not None
    return service, config.policy.refund_listen


def test_a_refund_reaches_the_daemon_and_frees_the_place(tmp_path: Path) -> None:
    store = MemoryLimitStore()
    service, refund = _daemon(tmp_path, store)
    results = Results()
    sender = RefundSender(refund, results)
    try:
        assert store.admit("shop-frontend", ONE_AN_HOUR, Message(1, 10), "Q1", NOW).allowed
        assert not store.admit("shop-frontend", ONE_AN_HOUR, Message(1, 10), "Q2", NOW).allowed
        sender.submit("Shop-Frontend", "Q1")
        sender.submit("shop-frontend", "Q1")  # a second time: nothing left to give back
        assert results.wait(2) == [("refunded", ""), ("unknown", "")]
        assert store.admit("shop-frontend", ONE_AN_HOUR, Message(1, 10), "Q3", NOW).allowed
    finally:
        sender.stop()
        service.stop()


def test_a_connection_the_daemon_closed_is_replaced(tmp_path: Path) -> None:
    store = MemoryLimitStore()
    service, refund = _daemon(tmp_path, store, idle=1)
    results = Results()
    sender = RefundSender(refund, results)
    try:
        sender.submit("shop-frontend", "Q1")
        results.wait(1)
        time.sleep(1.5)  # the daemon closes the idle kept connection
        store.admit("shop-frontend", ONE_AN_HOUR, Message(1, 10), "Q2", NOW)
        sender.submit("shop-frontend", "Q2")
        assert results.wait(2)[1] == ("refunded", "")
    finally:
        sender.stop()
        service.stop()


def test_no_daemon_is_reported_and_never_blocks(tmp_path: Path) -> None:
    results = Results()
    sender = RefundSender(SocketSpec.parse(f"unix:{tmp_path}/nobody.sock"), results)
    try:
        started = time.monotonic()
        for n in range(100):
            sender.submit("shop-frontend", f"Q{n}")
        assert time.monotonic() - started < 0.1  # the mail path only queues
        seen = results.wait(100)
        assert {result for result, _ in seen} == {"failed"} and "No such file" in seen[0][1]
    finally:
        sender.stop()
