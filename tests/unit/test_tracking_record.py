"""The tracking record of an accepted message, built from the session's outcome (values only)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from smtpplus_milter.core import tracking
from smtpplus_milter.core.session import Action, MessageSession, Outcome
from smtpplus_milter.core.tracking import MessageRecord, decode_subject
from tests.support import builders

AT = datetime(2026, 12, 1, 2, 40, tzinfo=UTC)
SHOP = builders.user("shop", domains=["shop.example"], list="news", priority=2)


def outcome(
    headers: list[tuple[str, str]],
    *,
    login: str | None = "shop",
    sender: str = "info@shop.example",
    recipients: tuple[str, ...] = ("<a@example.org>", "<B@Example.org>"),
    queue_id: str | None = "4jdfvM0wYyzJVF1",
) -> Outcome:
    session = MessageSession(builders.rules(builders.directory(SHOP)))
    step = session.mail_from(login, f"<{sender}>", queue_id=queue_id)
    if step.action is Action.CONTINUE:
        for rcpt in recipients:
            session.recipient(rcpt)
        for name, value in headers:
            session.header(name, value)
        if session.end_of_headers().action is Action.CONTINUE and not session.end_of_message().step.refused:
            session.accept()
    result = session.outcome()
    assert result is not None
    return result


def test_an_accepted_message_gives_its_record() -> None:
    headers = [
        ("From", "Shop <Info@Shop.Example>"),
        ("Subject", "=?UTF-8?B?R3LDvMOfZSBhdXMgZGVtIFNob3A=?="),
        ("Message-ID", " <1234@shop.example>"),
        ("X-Priority", "5"),
    ]
    record = outcome(headers).record("relay-1", AT)
    assert record == MessageRecord(
        node="relay-1",
        queue_id="4jdfvM0wYyzJVF1",
        user="shop",
        list="news",
        envelope_from="info@shop.example",
        header_from="info@shop.example",
        subject="Grüße aus dem Shop",
        message_id="<1234@shop.example>",
        size=record.size if record else 0,
        priority=2,  # the user's 2 beats the message's 5
        queue="high",
        accepted_at=AT,
        recipients=("a@example.org", "B@Example.org"),
    )
    assert record is not None and record.size > 0
    assert MessageRecord.from_dict(record.as_dict()) == record


@pytest.mark.parametrize(
    ("kwargs", "headers"),
    [
        pytest.param({"sender": "ceo@bank.example"}, [("From", "info@shop.example")], id="refused-at-mail-from"),
        pytest.param({}, [("From", "ceo@bank.example")], id="refused-at-end-of-headers"),
        pytest.param({"login": None}, [], id="unauthenticated"),
        pytest.param({"queue_id": None}, [("From", "info@shop.example")], id="no-queue-id"),
    ],
)
def test_nothing_else_is_recorded(kwargs: dict[str, object], headers: list[tuple[str, str]]) -> None:
    assert outcome(headers, **kwargs).record("relay-1", AT) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        pytest.param("Order 1234", "Order 1234", id="plain"),
        pytest.param("=?ISO-8859-1?Q?M=FCller?= und =?UTF-8?Q?S=C3=B6hne?=", "Müller und Söhne", id="two-words"),
        pytest.param("=?UTF-8?B?broken?=", "=?UTF-8?B?broken?=", id="broken-encoded-word-as-written"),
        pytest.param("=?x-unknown?Q?abc?=", "=?x-unknown?Q?abc?=", id="unknown-charset-as-written"),
        pytest.param("folded\r\n subject", "folded subject", id="folded"),
    ],
)
def test_subject_decoding(raw: str, shown: str) -> None:
    assert decode_subject(raw) == shown


def test_a_hostile_message_cannot_make_a_large_record() -> None:
    many = tuple(f"<r{number}@example.org>" for number in range(tracking.MAX_RECIPIENTS + 50))
    headers = [("From", "info@shop.example"), ("Subject", "x" * 100_000), ("Message-ID", "<" + "m" * 5000 + ">")]
    record = outcome(headers, recipients=many).record("relay-1", AT)
    assert record is not None
    assert len(record.recipients) == tracking.MAX_RECIPIENTS
    assert len(record.subject) == tracking.MAX_SUBJECT
    assert record.message_id is not None and len(record.message_id) == tracking.MAX_FIELD


def test_an_unreadable_from_is_recorded_as_none() -> None:
    # Alert mode delivers a message whose From: could not be read; the record says so.
    directory = builders.directory(SHOP, mode="alert")
    session = MessageSession(builders.rules(directory))
    session.mail_from("shop", "<info@shop.example>", queue_id="Q1")
    session.header("From", "info@shop.example\x00, ceo@bank.example")
    session.end_of_headers()
    session.end_of_message()
    session.accept()
    result = session.outcome()
    assert result is not None
    record = result.record("relay-1", AT)
    assert record is not None and record.header_from is None
