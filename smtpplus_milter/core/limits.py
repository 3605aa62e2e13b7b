"""Per-user sending limits, decided: does this message fit, and what does it use up.

Pure: the limits, what the user has used so far and the clock reading (``now``, seconds since the
Unix epoch, UTC, e.g. ``time.time()`` or the Redis server's ``TIME``) come in; a verdict or the new
usage goes out. The stores (in-process for one host, Redis for several) keep one :class:`Usage` per
user and run :func:`admit` (check, then count if allowed) as one atomic step; the Redis store's Lua
script must implement exactly the arithmetic of :func:`check` and :func:`count` below (integer
microseconds, the same comparisons), so one host and several hosts answer alike. docs/limits.md
states the rules for operators.

The limits:

* ``recipients_per_message``: a message with more recipients is refused whatever was sent before.
* ``messages_per_hour``: a rate, by GCRA (the generic cell rate algorithm). The emission interval
  is ``3600 / limit`` seconds (rounded up to a whole microsecond, so the rate is never above the
  limit) and the burst is ``limit``: a user idle for an hour may send ``limit`` messages at once,
  then one every interval; a user who sends evenly may send one every interval for ever (an
  idle hour refills the whole burst, give or take *limit* microseconds of the rounding). The
  only state is the "theoretical arrival time" (TAT): when the user's allowance is fully spent
  down to nothing queued ahead, i.e. when they would be back to a full burst.
* ``recipients_per_day`` and ``bytes_per_day``: calendar days in UTC. The counters start at zero
  at 00:00 UTC (whatever the relay's time zone); a message counts on the day it is accepted.

``0`` means "none allowed" (every message refused); there is no "unlimited" value: give a number
larger than anyone sends. A message that can never pass (more recipients than a whole day
allows, more bytes than a whole day allows, or a limit of 0) is refused with ``permanent`` set;
its ``retry_after`` is then when the window ends, which will not help it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LimitName = Literal["recipients_per_message", "messages_per_hour", "recipients_per_day", "bytes_per_day"]
# Also the order in which a tie between reached limits is named.
LIMIT_NAMES: tuple[LimitName, ...] = (
    "recipients_per_message",
    "messages_per_hour",
    "recipients_per_day",
    "bytes_per_day",
)

MICROS = 1_000_000
HOUR_US = 3600 * MICROS
DAY_US = 86_400 * MICROS


@dataclass(frozen=True)
class Limits:
    """One user's four limits (the user's own, else their list's, else the defaults)."""

    messages_per_hour: int = 1000
    recipients_per_message: int = 100
    recipients_per_day: int = 10_000
    bytes_per_day: int = 2_147_483_648  # 2 GiB

    def __post_init__(self) -> None:
        for name in LIMIT_NAMES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number, 0 or more (0: none allowed); got {value!r}")

    @property
    def interval_us(self) -> int:
        """The GCRA emission interval in microseconds: 3600 s / messages_per_hour, rounded up (0: none allowed)."""
        return -(-HOUR_US // self.messages_per_hour) if self.messages_per_hour else 0


@dataclass(frozen=True)
class Usage:
    """What one user has used: the message rate's TAT and the current UTC day's counters.

    *tat_us*: GCRA's theoretical arrival time, microseconds since the epoch (0: never sent).
    *day*: the UTC day (days since 1970-01-01) *recipients* and *bytes* were counted on; on any
    other day they count as zero.
    """

    tat_us: int = 0
    day: int = 0
    recipients: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class Message:
    """What a message asks for: its recipient count and size in bytes (final at END-OF-MESSAGE)."""

    recipients: int
    bytes: int


@dataclass(frozen=True)
class Verdict:
    """The answer for one message. *limit* None: it fits (then retry_after is 0).

    *limit*: the limit that refuses it; when several do, the one that lasts longest (so the
    message can go when *retry_after* has passed, if nothing else is sent meanwhile).
    *retry_after*: whole seconds, rounded up, never 0 for a refusal of a rate or a day limit.
    *permanent*: waiting will not help (see the module's docstring).
    """

    limit: LimitName | None = None
    retry_after: int = 0
    permanent: bool = False

    @property
    def allowed(self) -> bool:
        return self.limit is None

    def reply(self, login: str) -> str:
        """The SMTP reply for a refusal (the policy daemon's ``action=``), naming the limit and the user."""
        if self.limit is None:
            raise ValueError("an allowed message has no refusal reply")
        if self.limit == "recipients_per_message":
            return TOO_MANY_RECIPIENTS
        return f"450 4.7.1 sending limit {self.limit} reached for SMTP+ user {login}, retry after {self.retry_after} s"


# recipients_per_message, at RCPT (and at END-OF-MESSAGE for a message that got past RCPT anyway).
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
ALLOWED = Verdict()


def micros(now: float) -> int:
    """*now* (seconds since the epoch) as whole microseconds: all the arithmetic is on integers."""
    return round(now * MICROS)


def day_of(now_us: int) -> int:
    """The UTC day number of *now_us* (Unix time has no leap seconds: every day is 86,400 s)."""
    return now_us // DAY_US


def _seconds_up(us: int) -> int:
    return -(-us // MICROS)


def check_recipient(limits: Limits, number: int) -> Verdict:
    """At RCPT: may the message have a *number*-th recipient (1 for the first)?"""
    if number > limits.recipients_per_message:
        return Verdict("recipients_per_message", 0, permanent=True)
    return ALLOWED


def check(limits: Limits, usage: Usage, message: Message, now: float) -> Verdict:
    """Would accepting *message* now keep the user within *limits*? Nothing is counted here."""
    now_us = micros(now)
    if message.recipients > limits.recipients_per_message:
        return Verdict("recipients_per_message", 0, permanent=True)
    refusals: list[Verdict] = []
    interval = limits.interval_us
    if interval == 0:
        refusals.append(Verdict("messages_per_hour", 3600, permanent=True))
    else:
        # Accepted when the TAT it would leave is at most a full burst ahead of now.
        tolerance = interval * limits.messages_per_hour
        new_tat = max(usage.tat_us, now_us) + interval
        if new_tat - now_us > tolerance:
            refusals.append(Verdict("messages_per_hour", max(1, _seconds_up(new_tat - tolerance - now_us))))
    today = day_of(now_us)
    until_midnight = max(1, _seconds_up((today + 1) * DAY_US - now_us))
    fresh = usage.day != today
    daily: tuple[tuple[LimitName, int, int, int], ...] = (
        ("recipients_per_day", 0 if fresh else usage.recipients, message.recipients, limits.recipients_per_day),
        ("bytes_per_day", 0 if fresh else usage.bytes, message.bytes, limits.bytes_per_day),
    )
    for name, used, asked, limit in daily:
        if used + asked > limit:
            refusals.append(Verdict(name, until_midnight, permanent=asked > limit))
    if not refusals:
        return ALLOWED
    # The longest wait names the limit; a permanent refusal outranks any wait.
    return max(refusals, key=lambda v: (v.permanent, v.retry_after, -LIMIT_NAMES.index(v.limit or LIMIT_NAMES[0])))


def count(limits: Limits, usage: Usage, message: Message, now: float) -> Usage:
    """The usage after *message* was accepted at *now* (call it only for an allowed message)."""
    now_us = micros(now)
    today = day_of(now_us)
    fresh = usage.day != today
    interval = limits.interval_us
    return Usage(
        tat_us=max(usage.tat_us, now_us) + interval if interval else usage.tat_us,
        day=today,
        recipients=(0 if fresh else usage.recipients) + message.recipients,
        bytes=(0 if fresh else usage.bytes) + message.bytes,
    )


def admit(limits: Limits, usage: Usage, message: Message, now: float) -> tuple[Verdict, Usage]:
    """Check and, if allowed, count: what a store runs as one atomic step (a refusal counts nothing)."""
    verdict = check(limits, usage, message, now)
    return verdict, (count(limits, usage, message, now) if verdict.allowed else usage)


def uncount(usage: Usage, message: Message, interval_us: int, day: int) -> Usage:
    """The usage with one accepted *message* taken back (another filter refused it after we counted).

    *interval_us* and *day*: the emission interval and the UTC day it was counted with. The rate
    gives back one interval (GCRA's TAT is a sum of intervals, so this is exact whatever was
    counted after it); the day's counters give back the message only on the day it was counted
    on (on a later day they started afresh anyway). Nothing goes below zero.
    """
    same_day = usage.day == day
    return Usage(
        tat_us=max(0, usage.tat_us - interval_us),
        day=usage.day,
        recipients=max(0, usage.recipients - message.recipients) if same_day else usage.recipients,
        bytes=max(0, usage.bytes - message.bytes) if same_day else usage.bytes,
    )
