"""The log follower fed what a broken or hostile log can hold: a 10 MB line, megabytes of binary
garbage, a tracked queue id's line stretched by a client-controlled reply. It keeps going, in bounded
memory and time, and the lines after the garbage still count."""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from smtpplus_milter.infra.store import open_store
from smtpplus_milter.observe.metrics import FollowerMetrics
from smtpplus_milter.services.follower import Follower
from tests.support.builders import message_record

QID = "4jdfvM0wYyzJVF1"
GOOD = (
    f"2026-12-01T03:00:01+00:00 relay postfix/smtp[1]: {QID}: to=<a@example.org>, relay=mx.example.org[192.0.2.25]:25,"
    " delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 ok)\n"
).encode()
HEAD = f"2026-12-01T03:00:00+00:00 relay postfix/smtp[1]: {QID}: to=<b@example.org>, relay=x[192.0.2.1]:25, ".encode()
# Reading these must stay well below their size in Python memory. Measured peaks: 2.3 MB for the long
# lines (one 1 MiB chunk and its pieces; a line is held to 64 KiB), 5.9 MB for the short garbage lines
# (a chunk's lines decoded, each bad byte a U+FFFD); holding a 10 MB line would pass the budget.
MEMORY_BUDGET = 8 * 1024 * 1024
TIME_BUDGET = 5.0


def _garbage(size: int) -> bytes:
    return os.urandom(size).replace(b"\n", b"\x00")


@pytest.mark.parametrize(
    "hostile",
    [
        pytest.param(lambda: b"x" * 10_000_000 + b"\n", id="10MB-line"),
        pytest.param(lambda: _garbage(10_000_000) + b"\n", id="10MB-binary-garbage"),
        pytest.param(
            lambda: HEAD + b"dsn=5.0.0, status=bounced (" + b"(" * 10_000_000 + b")\n", id="10MB-tracked-line"
        ),
        pytest.param(lambda: (_garbage(300) + b"\n") * 30_000, id="short-garbage-lines"),
    ],
)
def test_hostile_bytes_neither_stall_nor_grow_memory(tmp_path: Path, hostile: Callable[[], bytes]) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    store = open_store(url)
    store.migrate()
    store.record_messages([message_record(QID, recipients=("a@example.org", "b@example.org"))])
    log = tmp_path / "postfix.log"
    data = hostile()
    log.write_bytes(data + GOOD)
    follower = Follower(url, "relay-1", log, FollowerMetrics(), poll=0.01)
    tracemalloc.start()
    started = time.monotonic()
    try:
        while follower.step():
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.monotonic() - started
    follower.close()
    found = store.message(QID, "relay-1")
    store.close()
    assert elapsed < TIME_BUDGET, f"{elapsed:.1f} s"
    assert peak < MEMORY_BUDGET, f"peak {peak / 1e6:.1f} MB"
    assert found is not None
    states = {r.address: r.state for r in found.recipients}
    assert states["a@example.org"] == "delivered"  # the line after the garbage still counts
    saved = open_store(url).position("relay-1")
    assert saved is not None and saved.offset == len(data) + len(GOOD)
