"""What a delivery outcome does to the suppression list (values in, values out; the store applies it).

The rules, for one (user, address):

* a **hard** failure (the address does not exist, core/failures.py) suppresses the address for the
  user at once, for ``suppress_hard_days``;
* **soft** failures suppress only when they keep coming: ``soft_limit`` messages in a row that
  failed softly (bounced with a soft code, or expired in the queue), the first and the last at
  least three days apart, suppress for ``suppress_hard_days`` too. A deferral is not such a
  failure: Postfix is still trying, and a message retried for five days must not count five
  times. The three days keep one bad afternoon at a receiver from suppressing anybody;
* a **blocked** failure (5.7.x: policy, reputation, spam) never suppresses: it says something
  about the relay or the content, not the address;
* a **delivery** ends the streak and lifts a bounce suppression of that user for that address
  (never a complaint, an unsubscribe or a manual entry).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from smtpplus_milter.core.decision import Reply
from smtpplus_milter.core.failures import BLOCKED, HARD, SOFT
from smtpplus_milter.core.tracking import recipient_address

HARD_BOUNCE = "hard_bounce"
SOFT_BOUNCE = "soft_bounce"
COMPLAINT = "complaint"
UNSUBSCRIBE = "unsubscribe"
MANUAL = "manual"
REASONS = (HARD_BOUNCE, SOFT_BOUNCE, COMPLAINT, UNSUBSCRIBE, MANUAL)
# Reasons a later delivery lifts (the others are someone's decision, not a guess from a bounce).
BOUNCE_REASONS = frozenset({HARD_BOUNCE, SOFT_BOUNCE})
# Reasons that never expire.
PERMANENT_REASONS = frozenset({COMPLAINT, UNSUBSCRIBE})

SOFT_SPAN = timedelta(days=3)


@dataclass(frozen=True, slots=True)
class Policy:
    hard_days: int = 180
    soft_limit: int = 5


@dataclass(frozen=True, slots=True)
class Streak:
    """Messages in a row to one address (for one user) that failed softly, since when."""

    count: int = 0
    since: datetime | None = None


@dataclass(frozen=True, slots=True)
class Suppress:
    reason: str
    expires: datetime | None


@dataclass(frozen=True, slots=True)
class LiftBounces:
    """A delivery worked: bounce suppressions of this user for this address go."""


Action = Suppress | LiftBounces | None


def after_outcome(
    status: str, failure_class: str | None, streak: Streak, at: datetime, policy: Policy
) -> tuple[Streak, Action]:
    """The new streak and what to do after one attempt (``status``: sent/deferred/bounced/expired)."""
    if status == "sent":
        return Streak(), LiftBounces()
    if status == "deferred" or failure_class == BLOCKED or failure_class is None:
        return streak, None
    if failure_class == HARD:
        return streak, Suppress(HARD_BOUNCE, at + timedelta(days=policy.hard_days))
    if failure_class == SOFT:  # a message that bounced softly or expired
        grown = Streak(streak.count + 1, streak.since or at)
        if grown.count >= policy.soft_limit and at - (grown.since or at) >= SOFT_SPAN:
            return grown, Suppress(SOFT_BOUNCE, at + timedelta(days=policy.hard_days))
        return grown, None
    return streak, None


def reply(address: str, reason: str, since: datetime) -> str:
    """The RCPT refusal for a suppressed recipient (after the ``550 5.7.1`` code)."""
    return f"<{address}>: recipient suppressed ({reason} since {since.date().isoformat()})"


@dataclass(frozen=True, slots=True)
class Entry:
    """An entry in force, as the RCPT check sees it (the address is the key it is filed under)."""

    scope: str
    reason: str
    since: datetime


def suppressed_recipient(
    index: Mapping[str, Sequence[Entry]], user: str, list_name: str | None, rcpt_to: str
) -> tuple[Entry, Reply] | None:
    """The entry and the ``550 5.7.1`` refusal for RCPT TO *rcpt_to* of *user*'s mail, if suppressed."""
    address = recipient_address(rcpt_to)
    entry = find(index, user, list_name, address)
    if entry is None:
        return None
    return entry, Reply("550", "5.7.1", reply(address, entry.reason, entry.since))


def find(index: Mapping[str, Sequence[Entry]], user: str | None, list_name: str | None, address: str) -> Entry | None:
    """The entry that refuses ``address`` for mail of ``user`` (on ``list_name``), if any.

    The narrowest scope wins when several apply (the user's, then the list's, then global), so
    the reply names the reason that concerns this sender most.
    """
    found = index.get(address.lower())
    if not found:
        return None
    wanted = (f"user:{user}" if user else None, f"list:{list_name}" if list_name else None, "global")
    for scope in wanted:
        for entry in found:
            if scope is not None and entry.scope == scope:
                return entry
    return None
