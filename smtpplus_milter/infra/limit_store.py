"""Where the sending-limit counters live: one :class:`~smtpplus_milter.core.limits.Usage` per user.

Every store answers :meth:`LimitStore.admit`: check a message against the user's limits and, if it
fits, count it, as one atomic step (two requests racing for the last place cannot both get it).
It is idempotent per *token* (the queue id of the message): Postfix may send the same
END-OF-MESSAGE policy request twice (``smtpd_policy_service_try_limit``), and the second must get
the first answer without counting the message again. :meth:`LimitStore.refund` takes a counted
message back once: Postfix asks the policy daemon at end of data BEFORE the milters see the
message, so a message the milter refuses afterwards was counted and must not use up the limit.

This module has the in-process store, for one relay host: a dict under a lock. A restart forgets
every count (a user may then send a fresh hour's burst and day's allowance), and several relay
hosts do not share it; docs/limits.md says so, and several hosts use the Redis store (the same
arithmetic in a server-side script, next to this one).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from smtpplus_milter.core.limits import Limits, Message, Usage, Verdict, admit, day_of, micros, uncount

# How long a token's answer is remembered: Postfix retries a policy request within seconds
# (smtpd_policy_service_timeout, 100 s by default), so an hour is ample.
TOKEN_SECONDS = 3600.0
# At most this many remembered answers (the oldest go first): a bound on memory, not a window.
MAX_TOKENS = 200_000
# At most this many users' counters; past it, the least recently seen user's go (that user then
# starts afresh, as after a restart). 1,000,000 Usage values are about 200 MB.
MAX_USERS = 1_000_000


class LimitStoreError(Exception):
    """The store could not answer (Redis down, a timeout): the caller applies ``on_store_error``."""


class LimitStore(Protocol):
    def admit(self, key: str, limits: Limits, message: Message, token: str, now: float) -> Verdict:
        """Check *message* against *limits* for user *key* and count it if it fits, atomically.

        *token*: the message's queue id; a second call with the same key and token returns the first
        verdict and counts nothing. Raises :class:`LimitStoreError` when the store cannot answer.
        """
        ...

    def refund(self, key: str, token: str, now: float) -> bool:
        """Take back what the allowed message *token* of *key* counted; once (False: nothing to take back).

        Raises :class:`LimitStoreError` when the store cannot answer.
        """
        ...


@dataclass
class _Answer:
    stamp: float
    verdict: Verdict
    message: Message
    interval_us: int
    day: int
    refunded: bool = False


class MemoryLimitStore:
    """The in-process store (``sending_limits.store: memory``): one host, forgotten on restart."""

    def __init__(self, *, max_users: int = MAX_USERS, max_tokens: int = MAX_TOKENS) -> None:
        self._lock = threading.Lock()
        self._usage: OrderedDict[str, Usage] = OrderedDict()
        self._answers: OrderedDict[tuple[str, str], _Answer] = OrderedDict()
        self._max_users = max_users
        self._max_tokens = max_tokens

    def admit(self, key: str, limits: Limits, message: Message, token: str, now: float) -> Verdict:
        with self._lock:
            self._expire(now)
            remembered = self._answers.get((key, token))
            if remembered is not None:
                return remembered.verdict
            usage = self._usage.get(key, Usage())
            verdict, new_usage = admit(limits, usage, message, now)
            if verdict.allowed:
                self._usage[key] = new_usage
                self._usage.move_to_end(key)
                while len(self._usage) > self._max_users:
                    self._usage.popitem(last=False)
            self._answers[(key, token)] = _Answer(now, verdict, message, limits.interval_us, day_of(micros(now)))
            while len(self._answers) > self._max_tokens:
                self._answers.popitem(last=False)
            return verdict

    def refund(self, key: str, token: str, now: float) -> bool:
        with self._lock:
            self._expire(now)
            answer = self._answers.get((key, token))
            if answer is None or answer.refunded or not answer.verdict.allowed:
                return False
            answer.refunded = True
            usage = self._usage.get(key)
            if usage is not None:
                self._usage[key] = uncount(usage, answer.message, answer.interval_us, answer.day)
            return True

    def usage(self, key: str) -> Usage:
        """What *key* has used (for status and tests)."""
        with self._lock:
            return self._usage.get(key, Usage())

    def _expire(self, now: float) -> None:
        # Answers are kept in arrival order, so the expired ones are at the front.
        while self._answers:
            answer = next(iter(self._answers.values()))
            if now - answer.stamp < TOKEN_SECONDS:
                return
            self._answers.popitem(last=False)
