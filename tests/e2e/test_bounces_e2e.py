"""Bounce management end to end: the lab's real Postfix, the milter, the follower, a SQLite store.

A recipient the next hop refuses with 550 5.1.1 is a hard bounce: a notice reaches IT's mailbox
(an SMTP sink standing in for notify.smtp), and the next message to that address is refused at
RCPT with the suppression reply while its other recipient is delivered. A 5.7.1 block never
suppresses. With bounces.return_path, mail leaves with a signed b+TOKEN envelope sender.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email import message_from_bytes, policy

import pytest

from lab.harness import Sink
from lab.stack import Stack, make_message
from smtpplus_milter.infra.store import open_store
from smtpplus_milter.infra.store.base import Suppression

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="private Postfix instances need root"),
]

USER = "shop-frontend"
SENDER = "info@yourcompany.com"


@pytest.fixture
def it_mailbox() -> Iterator[Sink]:
    with Sink() as sink:
        yield sink


@pytest.fixture
def stack(it_mailbox: Sink) -> Iterator[Stack]:
    notify = {
        "smtp": f"127.0.0.1:{it_mailbox.port}",
        "from": "postmaster@relay.example",
        "bounces": {"to": ["it@example.com"], "mode": "immediate"},
    }
    with Stack(tracking="sqlite", follower=True, priority_routing=None, settings={"notify": notify}) as running:
        yield running


def _send(stack: Stack, subject: str, recipients: list[str]) -> dict[str, tuple[int, str]]:
    result = stack.send(
        make_message(from_=f"Shop <{SENDER}>", subject=subject), login=USER, mail_from=SENDER, rcpt_to=recipients
    )
    assert result.accepted, result
    return result.refused


def _wait(what: str, condition: Callable[[], bool], stack: Stack, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    follower = stack.follower.log_tail(25) if stack.follower else ""
    raise AssertionError(f"{what}: not within {timeout}s\nfollower:\n{follower}")


def test_a_hard_bounce_notifies_it_and_suppresses_the_next_message(stack: Stack, it_mailbox: Sink) -> None:
    assert _send(stack, "first order", ["unknown-9@example.org", "blocked-9@example.org", "ok@example.org"]) == {}
    # One notice per bounced recipient: the hard bounce and the block (both bounced, both told).
    notices = it_mailbox.wait_for(2, timeout=40)
    subjects = {}
    for notice in notices:
        assert notice.rcpt_tos == ["it@example.com"] and notice.mail_from == "postmaster@relay.example"
        parsed = message_from_bytes(notice.data, policy=policy.default)
        subjects[str(parsed["Subject"]).strip()] = parsed.get_body().get_content()  # type: ignore[union-attr]
    hard = f"[SMTP+] Bounce: unknown-9@example.org (hard, 5.1.1) for {USER}"
    blocked = f"[SMTP+] Bounce: blocked-9@example.org (blocked, 5.7.1) for {USER}"
    assert set(subjects) == {hard, blocked}
    assert "550 5.1.1" in subjects[hard] and "first order" in subjects[hard]

    snapshot = stack.workdir / "tracking-spool" / "suppressions.tsv"
    _wait(
        "the suppression snapshot", lambda: snapshot.exists() and "unknown-9@example.org" in snapshot.read_text(), stack
    )
    assert "blocked-9@example.org" not in snapshot.read_text()  # a block never suppresses
    time.sleep(1.2)  # the milter looks at the file at most once a second

    delivered_before = len(stack.sink.messages)
    refused = _send(stack, "second order", ["unknown-9@example.org", "blocked-9@example.org", "ok2@example.org"])
    code, text = refused["unknown-9@example.org"]
    assert code == 550
    assert re.fullmatch(
        r"5\.7\.1 <unknown-9@example\.org>: recipient suppressed \(hard_bounce since \d{4}-\d\d-\d\d\)", text
    )
    assert "blocked-9@example.org" not in refused
    _wait(
        "the second order delivered to ok2",
        lambda: any("ok2@example.org" in m.rcpt_tos for m in stack.sink.messages),
        stack,
    )
    assert len(stack.sink.messages) > delivered_before
    assert stack.milter is not None
    event = stack.milter.wait_for_event("message", lambda e: bool(e.get("suppressed")))
    assert event["suppressed"] == [
        {"recipient": "unknown-9@example.org", "scope": f"user:{USER}", "reason": "hard_bounce", "dropped": False}
    ]


def test_drop_accepts_a_suppressed_recipient_and_delivers_only_the_others() -> None:
    settings = {"suppression": {"action": "drop"}}
    with Stack(tracking="sqlite", follower=True, priority_routing=None, settings=settings) as stack:
        store = open_store(str(stack.settings["tracking"]["store"]))
        try:
            store.migrate()
            store.suppress([Suppression(f"user:{USER}", "gone@example.org", "manual", datetime.now(UTC))])
        finally:
            store.close()
        snapshot = stack.workdir / "tracking-spool" / "suppressions.tsv"
        _wait("the snapshot", lambda: snapshot.exists() and "gone@example.org" in snapshot.read_text(), stack)
        time.sleep(1.2)
        assert _send(stack, "dropped one", ["gone@example.org", "kept@example.org"]) == {}  # nothing refused
        [delivered] = stack.sink.wait_for(1, timeout=30)
        assert delivered.rcpt_tos == ["kept@example.org"]
        assert _send(stack, "all dropped", ["gone@example.org"]) == {}  # accepted, then discarded
        assert stack.milter is not None
        event = stack.milter.wait_for_event("message", lambda e: "discarded" in " ".join(e.get("reasons", [])))
        assert event["suppressed"][0]["dropped"] is True
        assert stack.postfix is not None
        stack.postfix.wait_for_empty_queue(timeout=20)
        assert len(stack.sink.messages) == 1  # the discarded message went nowhere
