"""Sender authorization end to end: smtplib -> real Postfix (+ real Dovecot SASL) -> milter -> sink."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
import yaml

from lab.stack import OUTSIDER, Stack, make_message

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="private Postfix instances need root"),
]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # No banner/footer here: these tests check that an authorized message arrives as it was sent.
    with Stack(settings={"lists": {"shop": {"header": None, "footer": None}}}) as running:
        yield running


@pytest.fixture(autouse=True)
def _clean_sink(stack: Stack) -> None:
    stack.sink.clear()


def _delivered(stack: Stack, count: int = 1) -> list[bytes]:
    return [item.data for item in stack.sink.wait_for(count, timeout=30)]


def _normalise(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def _nothing_else_arrives(stack: Stack, subject: str) -> None:
    """Prove a refused message was not delivered: a later good message overtakes nothing."""
    marker = make_message(from_="info@yourcompany.com", subject="marker")
    assert stack.send(marker, login="shop-frontend", mail_from="info@yourcompany.com").accepted
    deadline = time.monotonic() + 30
    while not any(b"Subject: marker" in item.data for item in stack.sink.messages):
        assert time.monotonic() < deadline, "marker message never arrived"
        time.sleep(0.05)
    time.sleep(0.5)
    assert not any(subject.encode() in item.data for item in stack.sink.messages)


def test_authorized_message_arrives_unchanged(stack: Stack) -> None:
    original = make_message(from_="Shop <info@yourcompany.com>", subject="Order 1001", body="Thank you.\r\n" * 20)
    result = stack.send(original, login="shop-frontend", mail_from="info@yourcompany.com")
    assert result.accepted, result
    [data] = _delivered(stack)
    # Postfix prepends its Received: header; everything the client sent arrives byte for byte.
    assert _normalise(data).endswith(_normalise(original))
    assert _normalise(data).startswith(b"Received: ")
    event = stack.milter.wait_for_event(
        "message", lambda e: e["decision"] == "accepted" and e["user"] == "shop-frontend"
    )  # type: ignore[union-attr]
    # The log line names Postfix's queue id, so an operator can follow the message in mail.log.
    assert event["queue_id"] and f"{event['queue_id']}: " in stack.postfix.log_text()  # type: ignore[union-attr]
    assert event["size"] == len(original)  # smtplib announces SIZE=, Postfix passes it on


def test_unauthorized_envelope_sender_refused_at_mail_from(stack: Stack) -> None:
    result = stack.send(
        make_message(from_="info@yourcompany.com", subject="envelope-spoof"),
        login="shop-frontend",
        mail_from="bounce@evil.example",
    )
    assert (result.accepted, result.stage, result.code) == (False, "mail", 550)
    assert result.text.startswith("5.7.1 <bounce@evil.example>: sender not authorized for SMTP+ user shop-frontend")
    _nothing_else_arrives(stack, "envelope-spoof")


def test_unauthorized_from_refused_at_data(stack: Stack) -> None:
    result = stack.send(
        make_message(from_='"info@yourcompany.com" <visitor@gmail.example>', subject="from-spoof"),
        login="shop-frontend",
        mail_from="info@yourcompany.com",
    )
    assert (result.accepted, result.stage, result.code) == (False, "data", 550)
    assert result.text.startswith("5.7.1 <visitor@gmail.example>: sender not authorized for SMTP+ user shop-frontend")
    assert "Reply-To" in result.text
    _nothing_else_arrives(stack, "from-spoof")


def test_missing_from_refused(stack: Stack) -> None:
    message = b"To: someone@example.org\r\nSubject: no-from\r\n\r\nbody\r\n"
    result = stack.send(message, login="shop-frontend", mail_from="info@yourcompany.com")
    assert (result.stage, result.code) == ("data", 550), result
    assert "no From: header" in result.text


def test_inactive_user_refused(stack: Stack) -> None:
    result = stack.send(make_message(from_="crm@yourcompany.com"), login="old-crm", mail_from="crm@yourcompany.com")
    assert (result.stage, result.code) == ("mail", 550)
    assert result.text.startswith("5.7.1 ") and "disabled" in result.text


def test_unknown_user_refused(stack: Stack) -> None:
    result = stack.send(make_message(from_="x@yourcompany.com"), login=OUTSIDER, mail_from="x@yourcompany.com")
    assert (result.stage, result.code) == ("mail", 550)
    assert "not an SMTP+ user" in result.text


def test_bad_password_refused_by_postfix(stack: Stack) -> None:
    result = stack.send(
        make_message(from_="info@yourcompany.com"),
        login="shop-frontend",
        password="wrong",
        mail_from="info@yourcompany.com",
    )
    assert (result.accepted, result.stage, result.code) == (False, "auth", 535)


def test_unauthenticated_mail_passes_untouched(stack: Stack) -> None:
    original = make_message(from_="anyone@elsewhere.example", to="postmaster@example.net", subject="inbound")
    result = stack.send(original, login=None, mail_from="anyone@elsewhere.example", rcpt_to=["postmaster@example.net"])
    assert result.accepted, result
    [data] = _delivered(stack)
    assert _normalise(data).endswith(_normalise(original))


def test_several_messages_in_one_session(stack: Stack) -> None:
    import smtplib

    from lab.stack import client_tls

    assert stack.postfix is not None
    with smtplib.SMTP("127.0.0.1", stack.postfix.submission_port, timeout=30) as client:
        client.starttls(context=client_tls())
        client.login("shop-frontend", stack.passwords["shop-frontend"])
        client.sendmail(
            "info@yourcompany.com", ["a@example.org"], make_message(from_="info@yourcompany.com", subject="one")
        )
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail(
                "x@evil.example", ["a@example.org"], make_message(from_="info@yourcompany.com", subject="two")
            )
        assert refused.value.smtp_code == 550
        client.rset()
        client.sendmail(
            "info@yourcompany.com", ["a@example.org"], make_message(from_="info@yourcompany.com", subject="three")
        )
    subjects = sorted(
        line for data in _delivered(stack, 2) for line in data.split(b"\r\n") if line.startswith(b"Subject:")
    )
    assert subjects == [b"Subject: one", b"Subject: three"]


def test_reload_to_alert_mode_and_back(stack: Stack) -> None:
    assert stack.milter is not None
    reloads = len(stack.milter.events("config_reloaded"))
    settings = yaml.safe_load(stack.config_path.read_text())
    settings["authorization"]["mode"] = "alert"
    stack.write_settings(settings)
    stack.milter.reload()
    deadline = time.monotonic() + 10
    while len(stack.milter.events("config_reloaded")) <= reloads:
        assert time.monotonic() < deadline, stack.milter.log_tail()
        time.sleep(0.05)
    try:
        result = stack.send(
            make_message(from_="visitor@gmail.example", subject="alert-mode"),
            login="shop-frontend",
            mail_from="info@yourcompany.com",
        )
        assert result.accepted, result
        [data] = _delivered(stack)
        assert b"Subject: alert-mode" in data
        alert = stack.milter.wait_for_event(
            "unauthorized_sender", lambda e: e["sender"] == "visitor@gmail.example" and e["mode"] == "alert"
        )
        assert (alert["field"], alert["action"], alert["user"]) == ("header_from", "delivered", "shop-frontend")
        # An invalid new config is refused; the running (alert) config keeps serving.
        stack.users_path.write_text(
            stack.users_path.read_text() + "\nbroken:\n  authorized_domains: a.example,b.example\n"
        )
        failed = len(stack.milter.events("config_reload_failed"))
        stack.milter.reload()
        event = stack.milter.wait_for_event("config_reload_failed", lambda e: True, timeout=10)
        assert len(stack.milter.events("config_reload_failed")) == failed + 1
        assert any("separated with ';'" in problem for problem in event["problems"])
        assert stack.send(
            make_message(from_="visitor@gmail.example", subject="still-alert"),
            login="shop-frontend",
            mail_from="info@yourcompany.com",
        ).accepted
    finally:
        settings["authorization"]["mode"] = "block"
        stack.write_settings(settings)
        stack.users_path.write_text(stack.users_path.read_text().split("\nbroken:")[0])
        before = len(stack.milter.events("config_reloaded"))
        stack.milter.reload()
        deadline = time.monotonic() + 10
        while len(stack.milter.events("config_reloaded")) <= before:
            assert time.monotonic() < deadline, stack.milter.log_tail()
            time.sleep(0.05)
    refused = stack.send(
        make_message(from_="visitor@gmail.example"), login="shop-frontend", mail_from="info@yourcompany.com"
    )
    assert (refused.stage, refused.code) == ("data", 550)
