"""Delivery tracking through the lab's real Postfix into a real PostgreSQL (a private cluster).

* two relay hosts (two Postfix instances, two milters, two followers, node names relay-a and
  relay-b) record into one database, and ``stats`` adds both up;
* the store goes away while mail flows: the mail is accepted and delivered all the same, the records
  wait in the milter's spool (the follower's ``smtpplus_tracking_spooled``), and once the server is
  back the follower drains them into the store, each once.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from lab.stack import Stack, make_message
from tests.support import postgres

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="private Postfix instances need root"),
    pytest.mark.skipif(postgres.available() is not None, reason=str(postgres.available())),
]


@pytest.fixture(scope="module")
def server() -> Iterator[postgres.Server]:
    with postgres.private_server() as running:
        yield running


def _stack(url: str, node: str) -> Stack:
    # The milter only spools; its follower moves the records into the store.
    return Stack(tracking=url, node=node, follower=True, priority_routing=None)


def _send(stack: Stack, subject: str, recipients: list[str]) -> None:
    message = make_message(from_="Shop <info@yourcompany.com>", subject=subject)
    result = stack.send(message, login="shop-frontend", mail_from="info@yourcompany.com", rcpt_to=recipients)
    assert result.accepted, result


def _cli(stack: Stack, *args: str) -> str:
    command = [sys.executable, "-m", "smtpplus_milter", *args, "-c", str(stack.config_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{command}: exit {done.returncode}\n{done.stdout}{done.stderr}"
    return done.stdout


def _stats(stack: Stack, *args: str) -> list[dict[str, object]]:
    rows = json.loads(_cli(stack, "stats", "--format", "json", *args))
    assert isinstance(rows, list)
    return rows


def _metric(stack: Stack, name: str) -> float | None:
    assert stack.follower is not None
    text = stack.follower.metrics_text()
    match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def _wait(stack: Stack, condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    spooled = _metric(stack, "smtpplus_tracking_spooled")
    log = stack.follower.log_tail(30) if stack.follower else ""
    raise AssertionError(f"{what} not reached within {timeout}s (spooled: {spooled}); the follower's log:\n{log}")


def _messages_in_store(stack: Stack) -> int:
    return sum(int(str(row["messages"])) for row in _stats(stack))


def test_two_relay_hosts_record_into_one_database_and_stats_adds_them_up(server: postgres.Server) -> None:
    url = server.create_database()
    with _stack(url, "relay-a") as first, _stack(url, "relay-b") as second:
        for number in range(3):
            _send(first, f"from a {number}", ["someone@example.org", "other@example.net"])
        for number in range(2):
            _send(second, f"from b {number}", ["someone@example.org"])
        first.sink.wait_for(3, timeout=30)
        second.sink.wait_for(2, timeout=30)
        _wait(first, lambda: _messages_in_store(first) == 5, 20, "5 messages in the shared store")

        [by_user] = _stats(second, "--by", "user")
        assert by_user["user"] == "shop-frontend"
        assert (by_user["messages"], by_user["recipients"]) == (5, 8)
        domains = {row["recipient_domain"]: row["recipients"] for row in _stats(first, "--by", "recipient_domain")}
        assert domains == {"example.org": 5, "example.net": 3}
        subjects = sorted(str(row["subject"]) for row in _stats(first, "--by", "subject"))
        assert subjects == ["from a 0", "from a 1", "from a 2", "from b 0", "from b 1"]


def test_store_down_while_mail_flows_spools_then_drains_each_record_once(server: postgres.Server) -> None:
    url = server.create_database()
    with _stack(url, "relay-c") as stack:
        _send(stack, "before the outage", ["someone@example.org"])
        _wait(stack, lambda: _messages_in_store(stack) == 1, 20, "the first message in the store")

        server.stop()
        try:
            for number in range(4):
                _send(stack, f"during the outage {number}", ["someone@example.org"])
            # The mail path does not wait for the store: everything is delivered meanwhile.
            stack.sink.wait_for(5, timeout=30)
            _wait(stack, lambda: _metric(stack, "smtpplus_tracking_spooled") == 4, 30, "4 records in the spool")
        finally:
            server.start()

        # The follower retries with back-off (1 s, doubling): the records arrive once it is back.
        _wait(stack, lambda: _metric(stack, "smtpplus_tracking_spooled") == 0, 60, "an empty spool")
        rows = _stats(stack, "--by", "subject")
        assert sorted((row["subject"], row["messages"]) for row in rows) == [
            ("before the outage", 1),
            ("during the outage 0", 1),
            ("during the outage 1", 1),
            ("during the outage 2", 1),
            ("during the outage 3", 1),
        ]
        events = stack.follower.events("tracking_store_unavailable") if stack.follower else []
        assert events, "the outage was not logged"
