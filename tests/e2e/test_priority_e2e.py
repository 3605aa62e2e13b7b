"""Priority routing through a real Postfix: milter headers -> milter_header_checks FILTER -> transports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from email import message_from_bytes, policy

import pytest

from lab.harness import Sink
from lab.stack import Stack, make_message

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="private Postfix instances need root"),
]

PRIORITY_NAMES = ("x-priority", "x-msmail-priority", "importance", "priority", "x-smtpplus-queue")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # No banner/footer here: these tests look at headers and routes of otherwise unchanged mail.
    with Stack(priority_routing="sinks", settings={"lists": {"shop": {"header": None, "footer": None}}}) as running:
        yield running


@pytest.fixture(autouse=True)
def _clean(stack: Stack) -> None:
    for sink in (stack.sink, stack.high_sink, stack.low_sink):
        assert sink is not None
        sink.clear()


def _arrives_only_at(stack: Stack, target: Sink, subject: str) -> dict[str, list[str]]:
    [received] = target.wait_for(1, timeout=30)
    others = [sink for sink in (stack.sink, stack.high_sink, stack.low_sink) if sink is not target]
    assert stack.postfix is not None
    stack.postfix.wait_for_empty_queue(timeout=30)
    assert all(not sink.messages for sink in others if sink is not None), "delivered to the wrong next hop"
    message = message_from_bytes(received.data, policy=policy.SMTP)
    assert message["Subject"] == subject
    headers: dict[str, list[str]] = {}
    for name, value in message.items():
        headers.setdefault(name.lower(), []).append(str(value))
    assert "x-smtpplus-queue" not in headers, "the routing header must never reach a recipient"
    return {name: values for name, values in headers.items() if name in PRIORITY_NAMES}


def _send(stack: Stack, login: str, sender: str, subject: str, extra: list[tuple[str, str]]) -> None:
    result = stack.send(make_message(from_=sender, subject=subject, extra=extra), login=login, mail_from=sender)
    assert result.accepted, result


def test_message_priority_raises_normal_user_to_high(stack: Stack) -> None:
    assert stack.high_sink is not None
    _send(stack, "shop-frontend", "info@yourcompany.com", "urgent order", [("X-Priority", "1")])
    headers = _arrives_only_at(stack, stack.high_sink, "urgent order")
    assert headers == {"x-priority": ["1 (Highest)"], "x-msmail-priority": ["High"], "importance": ["high"]}


def test_high_priority_user_without_header_goes_high(stack: Stack) -> None:
    assert stack.high_sink is not None
    _send(stack, "ceo-outlook", "ceo@yourcompany.com", "board", [])
    headers = _arrives_only_at(stack, stack.high_sink, "board")
    assert headers == {"x-priority": ["1 (Highest)"], "x-msmail-priority": ["High"], "importance": ["high"]}


@pytest.mark.parametrize("extra", [[("Priority", "non-urgent")], []], ids=["low-header", "user-default-low"])
def test_low_priority_goes_low(stack: Stack, extra: list[tuple[str, str]]) -> None:
    assert stack.low_sink is not None
    _send(stack, "newsletter", "news@news.yourcompany.com", "weekly news", extra)
    headers = _arrives_only_at(stack, stack.low_sink, "weekly news")
    assert headers == {"x-priority": ["5 (Lowest)"], "x-msmail-priority": ["Low"], "importance": ["low"]}


def test_normal_message_keeps_default_route_and_headers(stack: Stack) -> None:
    original = make_message(from_="info@yourcompany.com", subject="plain order")
    assert stack.send(original, login="shop-frontend", mail_from="info@yourcompany.com").accepted
    headers = _arrives_only_at(stack, stack.sink, "plain order")
    assert headers == {}
    [received] = stack.sink.messages
    assert received.data.replace(b"\r\n", b"\n").endswith(original.replace(b"\r\n", b"\n"))


def test_forged_queue_header_does_not_jump_the_queue(stack: Stack) -> None:
    _send(
        stack,
        "shop-frontend",
        "info@yourcompany.com",
        "forged",
        [("X-SMTPPlus-Queue", "high"), ("X-SMTPPlus-Note", "x")],
    )
    headers = _arrives_only_at(stack, stack.sink, "forged")
    assert headers == {}
    assert b"X-SMTPPlus" not in stack.sink.messages[0].data


def test_conflicting_headers_collapse_to_one_set(stack: Stack) -> None:
    assert stack.high_sink is not None
    extra = [("X-Priority", "2 (High)"), ("x-priority", "2"), ("Importance", "low"), ("Priority", "urgent")]
    _send(stack, "shop-frontend", "info@yourcompany.com", "many headers", extra)
    headers = _arrives_only_at(stack, stack.high_sink, "many headers")
    assert headers == {"x-priority": ["2 (High)"], "x-msmail-priority": ["High"], "importance": ["high"]}


def test_unauthenticated_forged_header_is_not_routed(stack: Stack) -> None:
    message = make_message(
        from_="a@elsewhere.example",
        to="postmaster@example.net",
        subject="inbound forged",
        extra=[("X-SMTPPlus-Queue", "high")],
    )
    assert stack.send(message, login=None, mail_from="a@elsewhere.example", rcpt_to=["postmaster@example.net"]).accepted
    _arrives_only_at(stack, stack.sink, "inbound forged")


def test_relayhost_case_routes_through_transport_to_relayhost() -> None:
    with Stack(priority_routing="relayhost") as stack:
        _send(stack, "ceo-outlook", "ceo@yourcompany.com", "via relayhost", [])
        [received] = stack.sink.wait_for(1, timeout=30)
        assert b"X-Priority: 1 (Highest)" in received.data and b"X-SMTPPlus-Queue" not in received.data
        assert stack.postfix is not None
        stack.postfix.wait_for_empty_queue(timeout=30)
        stack.postfix.wait_for_log(
            rf"postfix/smtpplus-high/smtp\[\d+\]: \w+: to=<someone@example.org>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:{stack.sink.port}",
            timeout=30,
        )
