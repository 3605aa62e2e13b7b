"""The notice mails: every field an IT person needs, on one line each, and never a forged header."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy

from smtpplus_milter.core.notices import digest, notice, notice_subject

NOW = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
BOUNCE = {
    "user": "shop-frontend",
    "recipient": "bob@example.net",
    "state": "bounced",
    "class": "hard",
    "dsn": "5.1.1",
    "reply": "host mx.example.net said: 550 5.1.1 <bob@example.net>: user unknown",
    "subject": "Your order 1001",
    "message_id": "<1001@yourcompany.com>",
    "queue_id": "4jdfvM0wYyzJVF1",
    "node": "relay-1",
    "at": "2026-11-01T10:01:00Z",
}


def test_a_bounce_notice_names_everything() -> None:
    mail = notice("bounce", BOUNCE, sender="postmaster@relay.example", to=["it@example.com"], now=NOW)
    assert mail["Subject"] == "[SMTP+] Bounce: bob@example.net (hard, 5.1.1) for shop-frontend"
    assert mail["Auto-Submitted"] == "auto-generated" and mail["To"] == "it@example.com"
    body = mail.get_content()
    for value in BOUNCE.values():
        assert value in body
    assert "Remote reply" in body and "Relay host" in body


def test_a_reply_with_line_breaks_cannot_forge_headers_or_lines() -> None:
    hostile = dict(
        BOUNCE, reply="550 no\r\nBcc: victim@example.org\r\n\r\nfake body", recipient="a@b.example\nX-Evil: 1"
    )
    mail = notice("bounce", hostile, sender="postmaster@relay.example", to=["it@example.com"], now=NOW)
    raw = mail.as_bytes()
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["Bcc"] is None and parsed["X-Evil"] is None
    assert "550 no Bcc: victim@example.org fake body" in mail.get_content()


def test_complaint_subject_and_missing_fields_show_a_dash() -> None:
    payload = {"user": "news", "recipient": "carol@example.net", "feedback_type": "abuse"}
    assert notice_subject("complaint", payload) == "[SMTP+] Complaint from carol@example.net about mail of news"
    body = notice("complaint", payload, sender="p@relay.example", to=["it@example.com"], now=NOW).get_content()
    assert "Feedback type  abuse" in body and "Message-ID     -" in body


def test_a_digest_lists_one_block_per_event() -> None:
    second = dict(BOUNCE, recipient="dave@example.net", dsn="5.7.1", **{"class": "blocked"})
    mail = digest(
        "bounce",
        "list shop, 2026-11-01",
        [BOUNCE, second],
        sender="p@relay.example",
        to=["a@x.example", "b@x.example"],
        now=NOW,
    )
    assert mail["Subject"] == "[SMTP+] Daily digest: 2 bounces for list shop, 2026-11-01"
    assert mail["To"] == "a@x.example, b@x.example"
    body = mail.get_content()
    assert body.count("Recipient") == 2 and "dave@example.net" in body and "bob@example.net" in body
