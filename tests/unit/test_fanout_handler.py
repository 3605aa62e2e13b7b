"""The fanout filter's answer per delivery (FanoutHandler.deliver), with the re-injection and the
journal replaced by fakes: which reply, which result counted, what is journaled and sent."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from smtpplus_milter.infra.fanout_journal import JournalError, Made
from smtpplus_milter.observe.metrics import FanoutMetrics
from smtpplus_milter.services.fanout import FanoutHandler, ReinjectError, Sent
from tests.support.builders import config_with

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
TAGGED = (
    b"X-SMTPPlus-Fanout: QID1 bcc\r\nFrom: news@shop.example\r\nTo: alice@example.net\r\n"
    b"Bcc: bob@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
)
UNTAGGED = b"From: news@shop.example\r\nTo: alice@example.net\r\n\r\nbody\r\n"


@dataclass
class FakeJournal:
    rows: dict[tuple[str, str], Made] = field(default_factory=dict)
    fail_find: bool = False
    fail_record: bool = False

    def find(self, queue_id: str, recipient: str) -> Made | None:
        if self.fail_find:
            raise JournalError("disk on fire")
        return self.rows.get((queue_id, recipient.lower()))

    def record(self, queue_id: str, recipient: str, new_queue_id: str | None, now: datetime) -> None:
        if self.fail_record:
            raise JournalError("disk full")
        self.rows[(queue_id, recipient.lower())] = Made(new_queue_id, now)

    def prune(self, now: datetime, days: int) -> int:
        return 0

    def close(self) -> None:
        pass


@dataclass
class FakeReinjector:
    reply: Sent | ReinjectError = field(default_factory=lambda: Sent("NEW1", "2.0.0 Ok: queued as NEW1"))
    sent: list[tuple[str, str, bytes]] = field(default_factory=list)
    target: Any = None

    def send(self, sender: str, recipient: str, data: bytes, options: tuple[str, ...] = ()) -> Sent:
        if isinstance(self.reply, ReinjectError):
            raise self.reply
        self.sent.append((sender, recipient, data))
        return self.reply

    def close(self) -> None:
        pass


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.events.append((level, event, fields))


@pytest.mark.parametrize(
    ("raw", "recipient", "journal", "reinjector", "reply", "result", "journaled", "sent"),
    [
        pytest.param(
            TAGGED,
            "bob@example.org",
            FakeJournal(),
            FakeReinjector(),
            "250 2.0.0 Ok: queued as NEW1",
            "rewritten",
            True,
            True,
            id="bcc-rewritten",
        ),
        pytest.param(
            TAGGED,
            "alice@example.net",
            FakeJournal(),
            FakeReinjector(),
            "250 2.0.0 Ok: queued as NEW1",
            "unchanged",
            True,
            True,
            id="named-unchanged",
        ),
        pytest.param(
            TAGGED,
            "bob@example.org",
            FakeJournal({("QID1", "bob@example.org"): Made("OLD9", NOW)}),
            FakeReinjector(),
            "250 2.0.0 Ok: queued as OLD9",
            "replayed",
            True,
            False,
            id="journal-hit",
        ),
        pytest.param(
            TAGGED,
            "bob@example.org",
            FakeJournal(),
            FakeReinjector(ReinjectError("refused RCPT")),
            "451 4.3.0 Copy not made now, try again later",
            "deferred",
            False,
            False,
            id="refused",
        ),
        pytest.param(
            TAGGED,
            "bob@example.org",
            FakeJournal(fail_find=True),
            FakeReinjector(),
            "451 4.3.0 Copy not made now, try again later",
            "deferred",
            False,
            False,
            id="journal-unreadable",
        ),
        pytest.param(
            TAGGED,
            "bob@example.org",
            FakeJournal(fail_record=True),
            FakeReinjector(),
            "250 2.0.0 Ok: queued as NEW1",
            "rewritten",
            False,
            True,
            id="journal-write-fails-after-send",
        ),
        pytest.param(
            TAGGED,
            "bob@example.org",
            FakeJournal(),
            FakeReinjector(Sent(None, "2.0.0 Ok")),
            "250 2.0.0 Ok: queued",
            "rewritten",
            True,
            True,
            id="no-queue-id-in-reply",
        ),
        pytest.param(
            UNTAGGED,
            "bob@example.org",
            FakeJournal(),
            FakeReinjector(),
            "250 2.0.0 Ok: queued as NEW1",
            "passed",
            False,
            True,
            id="untagged",
        ),
    ],
)
def test_deliver(
    tmp_path: Path,
    raw: bytes,
    recipient: str,
    journal: FakeJournal,
    reinjector: FakeReinjector,
    reply: str,
    result: str,
    journaled: bool,
    sent: bool,
) -> None:
    metrics, log = FanoutMetrics(), Log()
    handler = FanoutHandler(config_with(tmp_path), log, metrics, journal, now=lambda: NOW, reinjector=reinjector)  # type: ignore[arg-type]
    try:
        assert handler.deliver(raw, "news@shop.example", recipient) == reply
    finally:
        handler.close()
    assert metrics.copies.labels(result=result)._value.get() == 1
    assert (("QID1", recipient) in journal.rows) is journaled
    assert bool(reinjector.sent) is sent
    if sent:
        assert reinjector.sent[0][:2] == ("news@shop.example", recipient)
        assert (b"To: <bob@example.org>" in reinjector.sent[0][2]) is (result == "rewritten")
        assert (reinjector.sent[0][2] == raw) is (result == "passed")
    [copy_event] = [fields for _, event, fields in log.events if event == "fanout_copy"]
    assert copy_event["result"] == result and copy_event["recipient"] == recipient
    assert any(event == "fanout_journal_failed" for _, event, _ in log.events) is journal.fail_record
