"""Hostile input to the fanout filter: a message the core will not read (over its bounds) or that
carries no tag goes on unchanged with 250 and is counted as ``passed``, never dropped or bounced;
a client that stalls in the middle of DATA, or several, does not keep the others waiting."""

from __future__ import annotations

import concurrent.futures
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpplus_milter.core.fanout import MAX_FIELDS, MAX_HEADER_BYTES
from tests.support.fanout import Filter, message
from tests.support.reinject_sink import ReinjectSink


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Filter]:
    with ReinjectSink() as sink:
        fanout = Filter(tmp_path, sink)
        with fanout.process:
            yield fanout


def _folded(size: int) -> bytes:
    return b"X-Pad: a" + b"\r\n " + b"\r\n ".join([b"a" * 78] * (size // 80 + 1)) + b"\r\n"


def _untagged() -> bytes:
    return message().replace(b"X-SMTPPlus-Fanout: 4jdfvM0wYyzJVF1 bcc\r\n", b"")


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        # Folded into lines of 80 (as Postfix's LMTP client sends long lines: at most 998 octets).
        pytest.param(message(extra=_folded(MAX_HEADER_BYTES)), "header section over", id="header-section-over-1MiB"),
        pytest.param(message(extra=b"X-Many: 1\r\n" * (MAX_FIELDS + 1)), "header fields", id="too-many-fields"),
        pytest.param(_untagged(), "X-SMTPPlus-Fanout", id="no-tag"),
        pytest.param(message(queue_id="../../etc"), "X-SMTPPlus-Fanout", id="malformed-tag"),
    ],
)
def test_unreadable_or_untagged_goes_on_unchanged(running: Filter, raw: bytes, problem: str) -> None:
    started = time.monotonic()
    code, text = running.deliver(raw, "bob@example.org")
    [copy] = running.sink.wait_for(1)
    assert time.monotonic() - started < 5
    assert code == 250 and text.endswith(copy.queue_id.encode())
    assert copy.data == raw and copy.rcpt_tos == ("bob@example.org",)
    [event] = running.process.events("fanout_copy")
    assert event["result"] == "passed" and problem in event["problem"]
    assert running.copies("passed") == 1
    assert running.journaled() == []  # no queue id of ours to key it on


def _stall(path: Path) -> socket.socket:
    """A client that starts DATA, sends part of a message and then nothing."""
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stalled.settimeout(5)
    stalled.connect(str(path))
    stalled.recv(1024)
    stalled.sendall(b"LHLO stalled\r\nMAIL FROM:<a@shop.example>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    received = b""
    while b"354" not in received:
        received += stalled.recv(1024)
    stalled.sendall(b"X-SMTPPlus-Fanout: QID bcc\r\nSubject: half")
    return stalled


def test_stalled_clients_do_not_block_others(running: Filter) -> None:
    stalled = [_stall(running.socket) for _ in range(6)]  # more than the worker threads
    try:
        started = time.monotonic()
        assert running.deliver(message(), "bob@example.org")[0] == 250
        assert time.monotonic() - started < 5
    finally:
        for each in stalled:
            each.close()
    assert [m.rcpt_tos for m in running.sink.wait_for(1)] == [("bob@example.org",)]


def test_a_slow_reinjection_does_not_serialize_deliveries(running: Filter) -> None:
    running.sink.delay = 1.0
    recipients = [f"r{n}@example.org" for n in range(4)]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda r: running.deliver(message(), r), recipients))
    assert [code for code, _ in replies] == [250] * 4
    assert time.monotonic() - started < 3.5  # four at once, not one after another (4 s)
