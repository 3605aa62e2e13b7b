"""Postfix's log as an attacker could shape it: the parts of a line a client controls (addresses,
remote replies) are long, odd or forged. The reader stays bounded in memory and time per line, and
a forged "queued as" in a remote reply never links a message to someone else's queue id."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from smtpplus_milter.core.lines import MAX_LINE_BYTES, LineSplitter
from smtpplus_milter.core.postfix_log import Delivery, Link, parse_line

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
HEAD = "Dec 01 03:39:12 relay postfix/smtp[123]: 4jdfvM0wYyzJVF1: "
# One line may cost at most this (measured: under 30 ms for the worst of these at 64 KiB).
LINE_BUDGET = 0.5


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(HEAD + "to=" + "<" * 60_000, id="open-angles"),
        pytest.param(HEAD + "to=<a@b>, relay=" + "[" * 60_000, id="open-brackets"),
        pytest.param(HEAD + "to=<a@b>, " + "x=1, " * 12_000 + "status=sent (ok)", id="many-fields"),
        pytest.param(HEAD + "to=<a@b>, relay=" + "a" * 60_000, id="long-value-no-status"),
        pytest.param(HEAD + "to=<a@b>, relay=" + "<a," * 20_000, id="unclosed-angles-and-commas"),
        pytest.param(HEAD + "to=<a@b>, dsn=2.0.0, status=sent (" + "queued as " * 6_000 + ")", id="queued-as-spam"),
        pytest.param("Dec 01 03:39:12 " + "a" * 60_000 + ": x", id="no-program"),
        pytest.param(
            "Dec 01 03:39:12 relay " + "postfix/" * 7_000 + "smtp[1]: 4jdfvM0wYyzJVF1: to=<a@b>, status=sent (x)",
            id="deep-program-name",
        ),
        pytest.param(HEAD + "to=<a\x00b@c>, status=bounced (\x00\x01\x7f)", id="control-characters"),
    ],
)
def test_each_line_costs_little_whatever_it_holds(line: str) -> None:
    started = time.process_time()
    parse_line(line, now=NOW)
    assert time.process_time() - started < LINE_BUDGET


def test_a_line_without_end_never_grows_memory() -> None:
    splitter = LineSplitter()
    for _ in range(160):  # 10 MiB without a newline
        assert splitter.feed(b"x" * 65_536) == []
        assert len(splitter._buf) <= MAX_LINE_BYTES
    [line] = splitter.feed(b"\n")
    assert line.truncated and len(line.text) == MAX_LINE_BYTES and line.end == 160 * 65_536 + 1


def test_a_remote_queued_as_is_marked_as_the_remote_s() -> None:
    # A remote server's reply is the remote's text: "queued as X" there names the remote's queue,
    # which may equal one of ours by chance or on purpose. The link says which relay said it, so
    # only a link from our own content filter re-injection is followed.
    line = HEAD + (
        "to=<a@example.org>, relay=mx.evil.example[192.0.2.7]:25, delay=1, delays=0/0/0/1, dsn=2.0.0, "
        "status=sent (250 2.0.0 Ok: queued as 4jdfvM0wYyzJVF2)"
    )
    events = parse_line(line, now=NOW)
    delivery = next(event for event in events if isinstance(event, Delivery))
    link = next(event for event in events if isinstance(event, Link))
    assert delivery.status == "sent" and link.relay == "mx.evil.example[192.0.2.7]:25"


def test_a_forged_status_inside_the_recipient_does_not_change_the_status() -> None:
    line = HEAD + "to=<status=sent@evil.example>, relay=none, delay=0, dsn=5.1.1, status=bounced (user unknown)"
    [delivery] = parse_line(line, now=NOW)
    assert isinstance(delivery, Delivery)
    assert (delivery.recipient, delivery.status) == ("status=sent@evil.example", "bounced")
