"""The Redis sending-limit store against a real private redis-server: the same answers as the
in-process store (the Lua script against core.limits), the server's clock, idempotence, races
between hosts, a server that goes away and comes back, passwords, and one round trip per admit."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from lab.redis import RedisServer
from smtpplus_milter.core.limits import Limits, Message, Usage, Verdict
from smtpplus_milter.infra.limit_store import LimitStoreError, MemoryLimitStore
from smtpplus_milter.infra.limit_store_redis import RedisLimitStore, answer_key, open_limit_store, usage_key
from tests.support import redis_server

# 23:00 UTC, so sequences cross midnight.
T0 = datetime(2026, 3, 1, 23, 0, 0, tzinfo=UTC).timestamp()
PASSWORD = "s3cret-pässword-xyz"


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    if (why := redis_server.available()) is not None:
        pytest.skip(why)
    with redis_server.private_redis() as started:
        yield started


@pytest.fixture
def client(server: RedisServer) -> Iterator[Any]:
    server.start()  # a test may have stopped it
    raw = redis.Redis.from_url(server.url)
    raw.flushdb()
    yield raw
    raw.close()


def _test_clock(now: float) -> float:
    return now


@pytest.fixture
def store(server: RedisServer, client: Any) -> Iterator[RedisLimitStore]:
    opened = RedisLimitStore(server.url, timeout=0.5, clock=_test_clock)
    yield opened
    opened.close()


# One step: ("admit", user, limits, message, token, seconds after T0) or ("refund", user, token, seconds).
SMALL = Limits(messages_per_hour=3, recipients_per_message=5, recipients_per_day=8, bytes_per_day=1000)
ONE = Message(1, 100)


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param([("admit", "u", SMALL, ONE, f"q{i}", i) for i in range(5)], id="burst-then-rate"),
        pytest.param([("admit", "u", SMALL, ONE, f"q{i}", i * 1200) for i in range(6)], id="one-per-interval-for-ever"),
        pytest.param(
            [("admit", "u", SMALL, Message(3, 10), f"q{i}", 3500 + i * 40) for i in range(5)]
            + [("admit", "u", SMALL, Message(3, 10), "q9", 3600 + 60)],
            id="recipients-per-day-until-midnight-then-fresh",
        ),
        pytest.param(
            [("admit", "u", SMALL, Message(1, 600), "a", 0), ("admit", "u", SMALL, Message(1, 600), "b", 1)],
            id="bytes-per-day",
        ),
        pytest.param([("admit", "u", SMALL, Message(9, 1), "a", 0)], id="recipients-per-message-permanent"),
        pytest.param([("admit", "u", SMALL, Message(1, 5000), "a", 0)], id="bigger-than-a-day-permanent"),
        pytest.param(
            [
                ("admit", "u", Limits(0, 0, 0, 0), Message(0, 0), "a", 0),
                ("admit", "u", Limits(messages_per_hour=0), ONE, "b", 10),
                ("admit", "u", Limits(recipients_per_day=0), ONE, "c", 20),
                ("admit", "u", Limits(bytes_per_day=0), ONE, "d", 30),
            ],
            id="zero-limits",
        ),
        pytest.param(
            [("admit", "u", SMALL, ONE, f"q{i}", 0) for i in range(3)]
            + [("refund", "u", "q1", 1), ("refund", "u", "q1", 2), ("admit", "u", SMALL, ONE, "q4", 3)]
            + [("admit", "u", SMALL, ONE, "q5", 4), ("refund", "u", "q5", 5), ("refund", "u", "nope", 5)],
            id="refund-once-and-refused-not-refunded",
        ),
        pytest.param(
            [
                ("admit", "u", SMALL, Message(4, 10), "a", 3590),
                ("admit", "u", SMALL, Message(4, 10), "b", 3700),
                ("refund", "u", "a", 3701),
                ("admit", "u", SMALL, Message(5, 10), "c", 3702),
            ],
            id="refund-after-midnight-keeps-the-new-day",
        ),
        pytest.param(
            [
                ("admit", "u", SMALL, ONE, "same", 0),
                ("admit", "u", SMALL, Message(9, 9999), "same", 1),
                ("admit", "v", SMALL, Message(9, 1), "same", 2),
            ],
            id="same-token-first-answer-per-user",
        ),
    ],
)
def test_same_answers_as_the_memory_store(store: RedisLimitStore, steps: list[tuple[Any, ...]]) -> None:
    _compare(store, steps)


def _compare(store: RedisLimitStore, steps: list[tuple[Any, ...]]) -> None:
    memory = MemoryLimitStore()
    for number, step in enumerate(steps):
        if step[0] == "admit":
            _, user, limits, message, token, at = step
            got: Verdict | bool = store.admit(user, limits, message, token, T0 + at)
            want: Verdict | bool = memory.admit(user, limits, message, token, T0 + at)
        else:
            _, user, token, at = step
            got, want = store.refund(user, token, T0 + at), memory.refund(user, token, T0 + at)
        assert (number, got) == (number, want), step
        assert store.usage(user) == memory.usage(user), step


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_sequences_same_answers_as_the_memory_store(store: RedisLimitStore, seed: int) -> None:
    rng = random.Random(seed)
    limits = {
        "a": Limits(3, 4, 12, 5000),
        "b": Limits(1, 2, 3, 300),
        "c": Limits(7, 100, 10**15, 10**15),
        "d": Limits(10**6, 10, 50, 10**9),
    }
    at = 0.0
    recent: list[tuple[str, str, float]] = []
    steps: list[tuple[Any, ...]] = []
    for i in range(250):
        at += rng.choice([0.0, 0.000001, 0.5, 7.25, 400.0, 1199.999999, 3000.0])
        # Tokens are remembered for an hour by either store; repeat only recent ones.
        recent = [r for r in recent if at - r[2] < 3000]
        user = rng.choice(sorted(limits))
        if recent and rng.random() < 0.15:
            who, token, _ = rng.choice(recent)
            steps.append(("refund", who, token, at))
        elif recent and rng.random() < 0.1:
            who, token, _ = rng.choice(recent)
            steps.append(("admit", who, limits[who], Message(1, 1), token, at))
        else:
            token = f"Q{i}"
            message = Message(rng.randint(0, 5), rng.randint(0, 400))
            steps.append(("admit", user, limits[user], message, token, at))
            recent.append((user, token, at))
    _compare(store, steps)


def test_the_servers_clock_burst_then_a_sane_retry(server: RedisServer, client: Any) -> None:
    store = RedisLimitStore(server.url)
    limits = Limits(messages_per_hour=10)
    # now is ignored: a wrong clock on this host changes nothing.
    verdicts = [store.admit("u", limits, ONE, f"q{i}", 0.0) for i in range(11)]
    assert all(v.allowed for v in verdicts[:10])
    assert verdicts[10].limit == "messages_per_hour" and 1 <= verdicts[10].retry_after <= 360
    server_now = client.time()[0]
    assert abs(store.usage("u").tat_us / 1e6 - (server_now + 3600)) < 5
    assert store.admit("u", limits, ONE, "q0", 0.0).allowed, "a repeated token gets the first answer"
    assert store.usage("u").recipients == 10
    assert store.refund("u", "q3", 0.0) and not store.refund("u", "q3", 0.0)
    assert store.usage("u").recipients == 9
    assert store.admit("u", limits, ONE, "q11", 0.0).allowed, "the refund gave one interval back"
    assert 3600 - 10 < client.ttl(answer_key("u", "q0")) <= 3600
    assert 2 * 86400 < client.ttl(usage_key("u")) <= 2 * 86400 + 3600
    store.close()


def test_two_hosts_eight_threads_pass_exactly_the_limit(server: RedisServer, client: Any) -> None:
    hosts = [RedisLimitStore(server.url), RedisLimitStore(server.url)]
    limits = Limits(messages_per_hour=50)
    allowed: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def send(n: int) -> None:
        start.wait()
        passed = sum(hosts[n % 2].admit("u", limits, ONE, f"t{n}-{i}", 0.0).allowed for i in range(20))
        with lock:
            allowed.append(passed)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(allowed) == 8 and sum(allowed) == 50
    assert hosts[0].usage("u").recipients == 50


def test_a_stopped_server_is_an_error_within_the_timeout_and_a_restarted_one_works(
    server: RedisServer, store: RedisLimitStore, client: Any
) -> None:
    assert store.admit("u", SMALL, ONE, "before", T0).allowed
    server.stop()
    begun = time.monotonic()
    with pytest.raises(LimitStoreError, match=rf"redis://127\.0\.0\.1:{server.port}/0"):
        store.admit("u", SMALL, ONE, "during", T0)
    with pytest.raises(LimitStoreError):
        store.refund("u", "before", T0)
    with pytest.raises(LimitStoreError):
        store.health()
    assert time.monotonic() - begun < 2.0
    server.start()  # an empty server: its script cache too (NOSCRIPT is answered by loading it)
    assert store.admit("u", SMALL, ONE, "after", T0).allowed
    store.health()
    assert store.usage("u").recipients == 1


def test_a_hanging_server_is_an_error_within_the_timeout(server: RedisServer, client: Any) -> None:
    store = RedisLimitStore(server.url, timeout=0.3)
    store.health()
    client.execute_command("CLIENT", "PAUSE", "2000", "ALL")
    try:
        begun = time.monotonic()
        with pytest.raises(LimitStoreError, match="Timeout"):
            store.admit("u", SMALL, ONE, "paused", T0)
        assert time.monotonic() - begun < 1.0
    finally:
        client.execute_command("CLIENT", "UNPAUSE")
    store.close()


def test_a_password_works_and_is_never_shown() -> None:
    with redis_server.private_redis(password=PASSWORD) as guarded:
        store = RedisLimitStore(guarded.url)
        assert store.admit("u", SMALL, ONE, "q", T0).allowed
        store.health()
        wrong = RedisLimitStore(guarded.url.replace(PASSWORD, "wrong-" + PASSWORD))
        with pytest.raises(LimitStoreError) as refused:
            wrong.admit("u", SMALL, ONE, "q2", T0)
        guarded.stop()
        with pytest.raises(LimitStoreError) as down:
            store.admit("u", SMALL, ONE, "q3", T0)
        for error in (refused.value, down.value):
            assert PASSWORD not in str(error) and "redis://127.0.0.1" in str(error)


def test_one_command_per_admit(server: RedisServer, store: RedisLimitStore, client: Any) -> None:
    store.admit("warm", SMALL, ONE, "load-the-script", T0)
    before = client.info("commandstats")
    for i in range(100):
        store.admit(f"user{i % 7}", SMALL, ONE, f"q{i}", T0 + i)
    after = client.info("commandstats")
    calls = {name: after[name]["calls"] - before.get(name, {"calls": 0})["calls"] for name in after}
    sent = {name: n for name, n in calls.items() if n and name != "cmdstat_info"}
    assert sent.pop("cmdstat_evalsha") == 100
    # Everything else was called by the script on the server, not sent by us.
    assert set(sent) <= {"cmdstat_hmget", "cmdstat_hset", "cmdstat_expire", "cmdstat_time"}


def test_a_login_cannot_reach_another_logins_keys(store: RedisLimitStore) -> None:
    forged = "u}:answer:q"
    assert usage_key(forged) not in {usage_key("u"), answer_key("u", "q")}
    assert store.admit("u", SMALL, Message(4, 10), "q", T0).allowed
    assert store.admit(forged, SMALL, ONE, "x", T0).allowed
    assert store.usage("u") == Usage(store.usage("u").tat_us, store.usage("u").day, 4, 10)


def test_open_limit_store(server: RedisServer) -> None:
    assert isinstance(open_limit_store("memory"), MemoryLimitStore)
    opened = open_limit_store(server.url, timeout=0.5)
    assert isinstance(opened, RedisLimitStore)
    opened.health()
    with pytest.raises(ValueError, match="unknown sending-limit store"):
        open_limit_store("sqlite:///x")


def test_a_store_whose_server_is_down_opens_and_fails_per_call() -> None:
    # The policy daemon must start while Redis is down: on_store_error decides per message.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once the probe is closed
    store = RedisLimitStore(f"redis://127.0.0.1:{port}/0", timeout=0.5)
    try:
        with pytest.raises(LimitStoreError, match=f"redis://127.0.0.1:{port}/0"):
            store.admit("u", Limits(), Message(1, 1), "Q1", 0.0)
        with pytest.raises(LimitStoreError):
            store.refund("u", "Q1", 0.0)
    finally:
        store.close()


def test_each_thread_keeps_its_own_connection(server: RedisServer, store: RedisLimitStore, client: Any) -> None:
    before = int(client.info("clients")["connected_clients"])

    def admit_some(name: str) -> None:
        for n in range(5):
            store.admit(name, Limits(), Message(1, 1), f"{name}-{n}", 0.0)

    threads = [threading.Thread(target=admit_some, args=(f"t{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # One connection per thread that asked (not one per call), closed with the store.
    assert int(client.info("clients")["connected_clients"]) - before <= 4
    store.close()
