"""What became of each recipient, end to end: the lab's real Postfix, the milter recording into a
SQLite store, and ``smtpplus-milter follow`` reading Postfix's own log (postlogd's maillog_file).

The sink answers by local part (``unknown…`` 550 5.1.1, ``blocked…`` 550 5.7.1, ``busy…`` 450
4.2.0, anyone else 250), so one message meets every outcome. The follower is killed with SIGKILL
and restarted, and Postfix rotates its log (``postfix logrotate``: rename, gzip, a new file), while
mail flows: every attempt is recorded exactly once.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lab.stack import Stack, make_message

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="private Postfix instances need root"),
]

USER = "shop-frontend"
SENDER = "info@yourcompany.com"


@pytest.fixture
def stack() -> Iterator[Stack]:
    with Stack(tracking="sqlite", follower=True, priority_routing=None) as running:
        yield running


def _send(stack: Stack, subject: str, recipients: list[str]) -> str:
    """Submit one message; its Postfix queue id (from the milter's ``message`` log event)."""
    assert stack.milter is not None
    seen = len(stack.milter.events("message"))
    message = make_message(from_=f"Shop <{SENDER}>", subject=subject)
    result = stack.send(message, login=USER, mail_from=SENDER, rcpt_to=recipients)
    assert result.accepted, result
    deadline = time.monotonic() + 10
    while len(events := stack.milter.events("message")) <= seen:
        assert time.monotonic() < deadline, f"no message event for {subject!r}:\n{stack.milter.log_tail()}"
        time.sleep(0.05)
    queue_id = events[seen].get("queue_id")
    assert isinstance(queue_id, str) and queue_id, events[seen]
    return queue_id


def _cli(stack: Stack, *args: str) -> Any:
    command = [sys.executable, "-m", "smtpplus_milter", *args, "-c", str(stack.config_path), "--format", "json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{command}: exit {done.returncode}\n{done.stdout}{done.stderr}"
    return json.loads(done.stdout)


def _show(stack: Stack, queue_id: str) -> dict[str, Any]:
    [message] = _cli(stack, "messages", "show", queue_id)
    assert isinstance(message, dict)
    return message


def _states(stack: Stack, queue_id: str) -> dict[str, str]:
    return {r["address"]: r["state"] for r in _show(stack, queue_id)["recipients"]}


def _wait(stack: Stack, condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    follower = stack.follower.log_tail(20) if stack.follower else ""
    postfix = stack.postfix.log_tail(20) if stack.postfix else ""
    raise AssertionError(f"{what} not reached within {timeout}s\nfollower:\n{follower}\npostfix:\n{postfix}")


def _metric(stack: Stack, name: str, **labels: str) -> float:
    assert stack.follower is not None
    text = stack.follower.metrics_text()
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    match = re.search(rf"^{name}{{{wanted}}} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_every_recipient_outcome_reaches_messages_show_stats_and_metrics(stack: Stack) -> None:
    recipients = ["ok@example.org", "unknown-1@example.org", "blocked-1@example.org", "busy-1@example.org"]
    queue_id = _send(stack, "four outcomes", recipients)
    expected = {
        "ok@example.org": "delivered",
        "unknown-1@example.org": "bounced",
        "blocked-1@example.org": "bounced",
        "busy-1@example.org": "deferred",
    }
    _wait(stack, lambda: _states(stack, queue_id) == expected, 30, f"the states {expected}")

    message = _show(stack, queue_id)
    assert (message["queue_id"], message["user"], message["envelope_from"]) == (queue_id, USER, SENDER)
    assert message["subject"] == "four outcomes"
    attempts = {r["address"]: r["attempts"] for r in message["recipients"]}
    [sent] = attempts["ok@example.org"]
    assert (sent["status"], sent["dsn"], sent["class"]) == ("sent", "2.0.0", None)
    assert sent["relay"].startswith("127.0.0.1[127.0.0.1]:") and "250 2.0.0" in sent["reply"]
    [unknown] = attempts["unknown-1@example.org"]
    assert (unknown["status"], unknown["dsn"], unknown["class"]) == ("bounced", "5.1.1", "hard")
    assert "550 5.1.1" in unknown["reply"]
    [blocked] = attempts["blocked-1@example.org"]
    assert (blocked["status"], blocked["dsn"], blocked["class"]) == ("bounced", "5.7.1", "blocked")
    busy = attempts["busy-1@example.org"]
    assert [(a["status"], a["dsn"], a["class"]) for a in busy] == [("deferred", "4.2.0", "soft")] * len(busy)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", a["at"]) for a in [sent, unknown, blocked])

    [today] = _cli(stack, "stats")
    assert {key: today[key] for key in ("messages", "recipients", "delivered", "bounced", "deferred")} == {
        "messages": 1,
        "recipients": 4,
        "delivered": 1,
        "bounced": 2,
        "deferred": 1,
    }
    assert _metric(stack, "smtpplus_deliveries_total", user=USER, status="sent") == 1
    assert _metric(stack, "smtpplus_deliveries_total", user=USER, status="bounced") == 2
    contacts = {c["address"]: c["state"] for c in _cli(stack, "recipients", "--user", USER)}
    assert contacts == expected


def test_kill_9_and_log_rotation_lose_and_double_nothing(stack: Stack) -> None:
    assert stack.follower is not None and stack.postfix is not None
    sent: list[str] = []

    def send(subject: str) -> None:
        sent.append(_send(stack, subject, [f"a-{len(sent)}@example.org", f"b-{len(sent)}@example.net"]))

    def all_delivered() -> bool:
        return all(set(_states(stack, qid).values()) == {"delivered"} for qid in sent)

    send("before")
    _wait(stack, all_delivered, 30, "the first message delivered")
    stack.follower.kill()  # as a crash would: no saving on the way out
    send("while the follower is dead")
    stack.sink.wait_for(2, timeout=30)
    stack.follower.start()
    send("after the restart")
    stack.postfix.logrotate()  # rename + gzip + a new file, while the follower runs
    send("after the rotation")
    stack.follower.kill()
    send("dead again")
    stack.follower.start()
    _wait(stack, all_delivered, 30, "every message delivered")

    for queue_id in sent:
        for recipient in _show(stack, queue_id)["recipients"]:
            statuses = [attempt["status"] for attempt in recipient["attempts"]]
            assert statuses == ["sent"], (queue_id, recipient)
    [today] = _cli(stack, "stats")
    assert (today["messages"], today["recipients"], today["delivered"]) == (5, 10, 10)
