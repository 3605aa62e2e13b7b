"""Hostile clients through the real Postfix (+ Dovecot SASL) the lab starts: what the milter
decides must hold at the SMTP level, whatever the client sends and however main.cf trims macros.

The Postfix here runs with what ``postfix-config`` prints (NUL stripping, the loopback listener)
and with ``milter_mail_macros``/``milter_connect_macros`` cut down to values that leave out
``{auth_authen}`` and ``{daemon_name}``: the milter must still see them, because it asks Postfix
for them at negotiation.
"""

from __future__ import annotations

import os
import smtplib
import time
from collections.abc import Iterator

import pytest

from lab.harness import free_port
from lab.stack import Stack, client_tls, make_message

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="private Postfix instances need root"),
]

LONG_LOCAL = "a" * 1500


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    listener = free_port()
    settings = {
        "milter": {"on_internal_error": "accept"},
        "submission_daemon_names": ["ORIGINATING"],
        "lists": {"shop": {"header": None, "footer": None}},
        "verification": {"smtp": f"127.0.0.1:{listener}", "from": "verify@relay.test"},
        "alerts": {"email": {"to": ["it@example.net"], "smtp": f"127.0.0.1:{listener}", "from": "alerts@relay.test"}},
    }
    trimmed = {"milter_mail_macros": "{mail_addr}", "milter_connect_macros": "j"}
    with Stack(settings=settings, postfix_main_cf=trimmed, local_listener=True) as running:
        running.listener_port = listener  # type: ignore[attr-defined]
        yield running


@pytest.fixture(autouse=True)
def _clean_sink(stack: Stack) -> None:
    stack.sink.clear()


def _arrived(stack: Stack, subject: str, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(f"Subject: {subject}".encode() in item.data for item in stack.sink.messages):
            return True
        time.sleep(0.1)
    return False


def test_trimmed_macros_still_identify_the_user(stack: Stack) -> None:
    # With milter_mail_macros lacking {auth_authen}, a milter that relied on main.cf would see
    # an unauthenticated session and pass it (unauthenticated: pass).
    result = stack.send(
        make_message(from_="ceo@paypal.com", subject="macro-spoof"), login="shop-frontend", mail_from="ceo@paypal.com"
    )
    assert (result.accepted, result.stage, result.code) == (False, "mail", 550), result
    assert "sender not authorized for SMTP+ user shop-frontend" in result.text
    good = make_message(from_="info@yourcompany.com", subject="macro-ok")
    assert stack.send(good, login="shop-frontend", mail_from="info@yourcompany.com").accepted
    assert _arrived(stack, "macro-ok")


def test_submission_without_login_is_refused_by_the_milter(stack: Stack) -> None:
    assert stack.postfix is not None
    result = stack.send(
        make_message(from_="anyone@example.org", subject="no-login"),
        login=None,
        mail_from="anyone@example.org",
        port=stack.postfix.submission_port,
    )
    assert (result.accepted, result.stage, result.code) == (False, "mail", 530), result
    assert result.text.startswith("5.7.0 Authentication required")


def test_port_25_without_login_still_passes(stack: Stack) -> None:
    result = stack.send(
        make_message(from_="someone@remote.example", to="user@example.net", subject="inbound"),
        login=None,
        mail_from="someone@remote.example",
        rcpt_to=["user@example.net"],
    )
    assert result.accepted, result
    assert _arrived(stack, "inbound")


def test_nul_in_from_cannot_hide_a_second_address(stack: Stack) -> None:
    message = make_message(from_="info@yourcompany.com\0, ceo@paypal.com", subject="nul-from")
    result = stack.send(message, login="shop-frontend", mail_from="info@yourcompany.com")
    assert (result.accepted, result.stage, result.code) == (False, "data", 550), result
    assert "ceo@paypal.com" in result.text


@pytest.mark.parametrize("where", ["envelope", "from"])
def test_overlong_sender_is_refused_550_not_accepted(stack: Stack, where: str) -> None:
    # on_internal_error: accept here. The reply naming a 1500-character address used to be
    # too long for libmilter; the failure became an internal error and the message was accepted.
    spoof = f"{LONG_LOCAL}@evil.example"
    envelope = spoof if where == "envelope" else "info@yourcompany.com"
    header = spoof if where == "from" else "info@yourcompany.com"
    result = stack.send(make_message(from_=header, subject=f"long-{where}"), login="shop-frontend", mail_from=envelope)
    assert (result.accepted, result.code) == (False, 550), result
    assert result.stage == ("mail" if where == "envelope" else "data")
    assert "sender not authorized for SMTP+ user shop-frontend" in result.text
    assert len(result.text) < 500


def _local_send(stack: Stack, sender: str, subject: str) -> tuple[bool, int]:
    port: int = stack.listener_port  # type: ignore[attr-defined]
    message = make_message(from_=sender, to="it@example.net", subject=subject)
    try:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as client:
            client.sendmail(sender, ["it@example.net"], message)
    except smtplib.SMTPRecipientsRefused as exc:
        return False, next(iter(exc.recipients.values()))[0]
    except smtplib.SMTPResponseException as exc:
        return False, exc.smtp_code
    return True, 250


def test_local_listener_takes_only_our_own_senders(stack: Stack) -> None:
    accepted, code = _local_send(stack, "anyone@evil.example", "local-relay-abuse")
    assert not accepted and 500 <= code < 600
    accepted, code = _local_send(stack, "verify@relay.test", "local-verify")
    assert accepted, code
    assert _arrived(stack, "local-verify")
    # Not seen by the milter: no X-SMTPPlus-Queue header and no message event for it.
    [delivered] = [item.data for item in stack.sink.messages if b"Subject: local-verify" in item.data]
    assert b"X-SMTPPlus-Queue" not in delivered
    assert stack.milter is not None
    assert "local-verify" not in stack.milter.log_file.read_text(encoding="utf-8", errors="replace")


def test_local_listener_refuses_starttls_less_auth(stack: Stack) -> None:
    port: int = stack.listener_port  # type: ignore[attr-defined]
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as client:
        client.ehlo()
        assert not client.has_extn("auth")
        try:
            client.starttls(context=client_tls())
        except smtplib.SMTPNotSupportedError:
            return
        client.ehlo()
        assert not client.has_extn("auth")


def test_latin1_display_name_is_judged_by_its_address(stack: Stack) -> None:
    # Raw 8-bit (Latin-1, not UTF-8) bytes, as older clients send them: the name is free text.
    message = make_message(from_="info@yourcompany.com", subject="latin1-name").replace(
        b"From: info@yourcompany.com", b"From: M\xfcller <info@yourcompany.com>"
    )
    assert stack.send(message, login="shop-frontend", mail_from="info@yourcompany.com").accepted
    assert _arrived(stack, "latin1-name")
    # 8-bit bytes in the address itself stay unreadable, so not authorized.
    message = make_message(from_="info@yourcompany.com", subject="latin1-address").replace(
        b"From: info@yourcompany.com", b"From: inf\xf6@yourcompany.com"
    )
    result = stack.send(message, login="shop-frontend", mail_from="info@yourcompany.com")
    assert (result.accepted, result.stage, result.code) == (False, "data", 550), result
