"""Bounce notices end to end below the follower: an outcome recorded in a real SQLite store
enqueues its notices, and the notifier hands them to a real SMTP server (the lab's aiosmtpd sink)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from types import MappingProxyType

import pytest

from lab.harness import Sink, free_port
from smtpplus_milter.config.values import HostPort
from smtpplus_milter.infra.store import open_store
from smtpplus_milter.infra.store.base import Attempt
from smtpplus_milter.infra.store.sql import SqlStore
from smtpplus_milter.services.notifier import Audience, Notifier, Plan, planner
from tests.support.builders import message_record

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
PLAN = Plan(
    bounces=Audience(("it@example.com",), "immediate", original_sender=True),
    lists=MappingProxyType({"news": Plan(bounces=Audience(("news-team@example.com",), "daily"))}),
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    opened = open_store(f"sqlite:///{tmp_path}/t.db")
    assert isinstance(opened, SqlStore)
    opened.migrate()
    yield opened
    opened.close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as running:
        yield running


def _bounce(queue_id: str, to: str, at: datetime, dsn: str = "5.1.1", cls: str = "hard") -> Attempt:
    reply = f"host mx.example.net said: 550 {dsn} no such user"
    return Attempt("relay-1", queue_id, to, at, "bounced", dsn, "mx.example.net[192.0.2.1]:25", 0.5, reply, cls)


def _notifier(store: SqlStore, port: int, now: datetime, counts: list[tuple[str, str]]) -> Notifier:
    return Notifier(
        store,
        HostPort("127.0.0.1", port),
        "postmaster@relay.example",
        "relay-1",
        count=lambda kind, result: counts.append((kind, result)),
        now=lambda: now,
    )


def test_a_hard_bounce_reaches_it_and_the_original_sender_once(store: SqlStore, sink: Sink) -> None:
    store.record_messages([message_record("Q1", recipients=("bob@example.net", "carol@example.net"), accepted_at=T0)])
    bounced = _bounce("Q1", "bob@example.net", T0 + timedelta(minutes=1))
    delivered = Attempt("relay-1", "Q1", "carol@example.net", T0 + timedelta(minutes=1), "sent", "2.0.0")
    store.record_attempts([bounced, delivered], None, on_outcome=planner(PLAN))
    store.record_attempts([bounced, delivered], None, on_outcome=planner(PLAN))  # a re-read log: no second notice
    counts: list[tuple[str, str]] = []
    notifier = _notifier(store, sink.port, T0 + timedelta(minutes=2), counts)
    assert notifier.run_once() == 2
    assert notifier.run_once() == 0
    received = sink.wait_for(2)
    assert sorted(m.rcpt_tos[0] for m in received) == ["info@yourcompany.com", "it@example.com"]
    mail = message_from_bytes(received[0].data, policy=policy.default)
    assert mail["Subject"] == "[SMTP+] Bounce: bob@example.net (hard, 5.1.1) for shop-frontend"
    assert received[0].mail_from == "postmaster@relay.example"
    body = mail.get_body().get_content()  # type: ignore[union-attr]
    for text in ("shop-frontend", "550 5.1.1 no such user", "Q1", "<Q1@yourcompany.com>", "relay-1", "hard"):
        assert text in body
    assert counts == [("bounce", "sent"), ("bounce", "sent")]


def test_a_refused_or_unreachable_server_retries_later(store: SqlStore, sink: Sink) -> None:
    store.record_messages([message_record("Q1", recipients=("bob@example.net",), accepted_at=T0)])
    store.record_attempts(
        [_bounce("Q1", "bob@example.net", T0)], None, on_outcome=planner(Plan(bounces=Audience(("it@example.com",))))
    )
    counts: list[tuple[str, str]] = []
    down = free_port()  # nothing listens there
    assert _notifier(store, down, T0 + timedelta(minutes=1), counts).run_once() == 0
    assert counts == [("bounce", "failed")]
    # Before the retry time nothing is tried; after it the notice goes out.
    assert _notifier(store, sink.port, T0 + timedelta(minutes=1, seconds=30), counts).run_once() == 0
    assert _notifier(store, sink.port, T0 + timedelta(minutes=3), counts).run_once() == 1
    assert [m.rcpt_tos for m in sink.wait_for(1)] == [["it@example.com"]]


def test_a_daily_digest_waits_for_the_day_to_end_and_is_one_mail(store: SqlStore, sink: Sink) -> None:
    records = [
        message_record(f"Q{n}", recipients=(f"r{n}@example.net",), accepted_at=T0, list="news") for n in range(3)
    ]
    store.record_messages(records)
    attempts = [_bounce(f"Q{n}", f"r{n}@example.net", T0 + timedelta(minutes=n), "5.7.1", "blocked") for n in range(3)]
    store.record_attempts(attempts, None, on_outcome=planner(PLAN))
    counts: list[tuple[str, str]] = []
    assert _notifier(store, sink.port, T0 + timedelta(hours=5), counts).run_once() == 0  # the day is not over
    assert _notifier(store, sink.port, T0 + timedelta(days=1), counts).run_once() == 3
    [mail] = sink.wait_for(1)
    assert mail.rcpt_tos == ["news-team@example.com"]
    parsed = message_from_bytes(mail.data, policy=policy.default)
    assert parsed["Subject"] == "[SMTP+] Daily digest: 3 bounces for list news, 2026-11-01"
    assert _notifier(store, sink.port, T0 + timedelta(days=2), counts).run_once() == 0
