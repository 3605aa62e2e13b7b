"""The work bounds of one injection: a CPU-time deadline and the exception that ends it.

A message is attacker-controlled input that runs inside the milter while it holds the GIL, so
every loop over message data checks a :class:`Deadline`. Crossing any bound (time, a part's
size) raises :class:`LimitExceeded`, which :func:`smtpplus_milter.mime.footer.inject` turns into
the ``unchanged-limit`` result: the message goes out as it came.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class LimitExceeded(Exception):
    """A bound was crossed; the message must go out unchanged. The text names the bound and its value."""


class Deadline:
    """CPU time one injection may use, measured on the calling thread.

    Thread CPU time rather than wall time: on a loaded machine a message should not be refused
    because other threads had the CPU; what must be bounded is the time *this* work holds it.
    """

    __slots__ = ("_budget", "_clock", "_limit")

    def __init__(self, budget: float, clock: Callable[[], float] = time.thread_time) -> None:
        self._budget = budget
        self._clock = clock
        self._limit = clock() + budget

    def check(self) -> None:
        """Raise :class:`LimitExceeded` once the budget is spent; cheap enough to call per loop step."""
        if self._clock() > self._limit:
            raise LimitExceeded(f"the CPU time budget of {self._budget:g} s per injection was spent")


def no_deadline() -> Deadline:
    """A deadline that never expires, for callers outside an injection (tests, tools)."""
    return Deadline(float("inf"))
