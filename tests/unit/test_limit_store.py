"""The in-process sending-limit store: check-and-count as one step, idempotent per queue id, bounded."""

from __future__ import annotations

import threading

from smtpplus_milter.core.limits import Limits, Message, Usage, Verdict, micros
from smtpplus_milter.infra.limit_store import TOKEN_SECONDS, MemoryLimitStore

NOW = 1_796_118_890.0  # 2026-12-01 09:54:50 UTC
THREE = Limits(messages_per_hour=3)
ONE = Message(recipients=1, bytes=1000)


def test_the_limit_holds_and_the_refusal_names_it() -> None:
    store = MemoryLimitStore()
    verdicts = [store.admit("shop", THREE, ONE, f"Q{n}", NOW) for n in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert verdicts[3] == Verdict("messages_per_hour", 1200)  # one every 1,200 s after the burst
    assert store.usage("shop").recipients == 3  # the refused message counted nothing


def test_a_repeated_request_gets_the_first_answer_and_counts_nothing() -> None:
    store = MemoryLimitStore()
    first = store.admit("shop", THREE, ONE, "Q1", NOW)
    used = store.usage("shop")
    assert store.admit("shop", THREE, ONE, "Q1", NOW + 5) == first
    assert store.usage("shop") == used
    # The same queue id of another user is another message.
    assert store.admit("news", THREE, ONE, "Q1", NOW).allowed
    assert store.usage("news").recipients == 1


def test_a_repeated_refusal_stays_a_refusal() -> None:
    store = MemoryLimitStore()
    for n in range(3):
        store.admit("shop", THREE, ONE, f"Q{n}", NOW)
    refused = store.admit("shop", THREE, ONE, "Q3", NOW)
    # Even after the window would let it through, the retry of the same request gets the same answer.
    assert store.admit("shop", THREE, ONE, "Q3", NOW + 1300) == refused
    assert not refused.allowed


def test_remembered_answers_expire_and_are_bounded() -> None:
    store = MemoryLimitStore(max_tokens=2)
    store.admit("shop", THREE, ONE, "Q1", NOW)
    store.admit("shop", THREE, ONE, "Q2", NOW)
    store.admit("shop", THREE, ONE, "Q3", NOW)  # pushes Q1's answer out
    assert store.admit("shop", THREE, ONE, "Q1", NOW).limit == "messages_per_hour"  # counted afresh: refused
    later = MemoryLimitStore()
    later.admit("shop", THREE, ONE, "Q1", NOW)
    tat = later.usage("shop").tat_us
    later.admit("shop", THREE, ONE, "Q1", NOW + TOKEN_SECONDS)  # forgotten: a new message
    assert later.usage("shop").tat_us > tat


def test_users_are_bounded_least_recently_seen_first() -> None:
    store = MemoryLimitStore(max_users=2)
    for user in ("a", "b", "c"):
        store.admit(user, THREE, ONE, "Q", NOW)
    assert store.usage("a") == Usage()  # forgotten, as after a restart
    assert store.usage("c").tat_us > micros(NOW)


def test_racing_requests_never_pass_more_than_the_limit() -> None:
    # Check and count are one step: 8 threads x 50 messages against 100 an hour, exactly 100 pass.
    store = MemoryLimitStore()
    limits = Limits(messages_per_hour=100)
    passed: list[bool] = []
    lock = threading.Lock()

    def send(worker: int) -> None:
        for n in range(50):
            verdict = store.admit("shop", limits, ONE, f"W{worker}-{n}", NOW)
            with lock:
                passed.append(verdict.allowed)

    threads = [threading.Thread(target=send, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert passed.count(True) == 100 and len(passed) == 400


def test_a_refund_gives_back_exactly_one_message_once() -> None:
    store = MemoryLimitStore()
    limits = Limits(messages_per_hour=2, recipients_per_day=10, bytes_per_day=1000)
    assert store.admit("u", limits, Message(3, 100), "Q1", NOW).allowed
    assert store.admit("u", limits, Message(4, 200), "Q2", NOW).allowed
    assert not store.admit("u", limits, Message(1, 1), "Q3", NOW).allowed  # hour's burst used up
    assert store.refund("u", "Q2", NOW + 1)
    assert not store.refund("u", "Q2", NOW + 1)  # once
    assert not store.refund("u", "Q3", NOW + 1)  # a refusal counted nothing
    assert not store.refund("u", "unknown", NOW + 1)
    assert store.usage("u").recipients == 3 and store.usage("u").bytes == 100
    assert store.admit("u", limits, Message(1, 1), "Q4", NOW + 2).allowed  # the place is free again


def test_a_refund_on_a_later_day_leaves_that_day_alone() -> None:
    store = MemoryLimitStore()
    limits = Limits(recipients_per_day=10)
    day = 86_400.0
    midnight = (NOW // day + 1) * day
    assert store.admit("u", limits, Message(5, 10), "Q1", midnight - 1).allowed
    assert store.admit("u", limits, Message(2, 10), "Q2", midnight + 1).allowed
    assert store.refund("u", "Q1", midnight + 2)
    assert store.usage("u").recipients == 2  # yesterday's message does not come off today's count
