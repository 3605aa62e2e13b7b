"""The tracking store's values and interface, and the one rule of a recipient's state.

Writers: the milter hands the core's :class:`~smtpplus_milter.core.tracking.MessageRecord`
values (possibly replayed from its spool), the log follower hands :class:`Attempt` values
together with its :class:`Position`, any :class:`StoredLink` and :class:`Expiration`.
(The log's own event, :class:`smtpplus_milter.core.postfix_log.Link`, is what the follower reads;
:class:`StoredLink` is what the store keeps of it.)
Readers: the command line's ``stats``, ``messages``, ``recipients`` and ``tracking migrate``. Every
backend keeps the same contract (tests/integration/test_store.py runs one suite over all of them).
Times are timezone-aware ``datetime`` values in UTC.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from smtpplus_milter.core import failures, suppression
from smtpplus_milter.core.tracking import MessageRecord

# What the follower reads in Postfix's ``status=`` field.
STATUSES = frozenset({"sent", "deferred", "bounced", "expired"})
# The class of a failure (hard / soft / blocked, core/failures.py); None for a delivery.
CLASSES = frozenset(failures.CLASSES)
# A recipient's states. ``suppressed`` is set when the recipient was refused at RCPT.
STATES = ("queued", "deferred", "delivered", "bounced", "expired", "suppressed")
FINAL_STATES = frozenset({"delivered", "bounced", "expired", "suppressed"})
STATE_OF_STATUS: Mapping[str, str] = MappingProxyType(
    {"sent": "delivered", "deferred": "deferred", "bounced": "bounced", "expired": "expired"}
)
# The grouping keys of stats(); the group's column is named like the key.
STATS_BY = ("date", "subject", "sender", "user", "list", "recipient_domain")
# The counters of every stats row, in this order.
STATS_COUNTERS = (
    "messages",
    "recipients",
    "delivered",
    "deferred",
    "bounced",
    "expired",
    "suppressed",
    "complaints",
    "unsubscribes",
)
# Link kinds: a content filter's re-injection continues the recipients' story under the new queue
# id; a bounce notification is a new message to the sender, kept for reference only.
LINK_KINDS = frozenset({"queued_as", "notification"})


class StoreProblem(Exception):
    """The store cannot be opened, migrated or used; the message says what to check."""


def _utc(value: datetime, what: str) -> None:
    if value.tzinfo is None:
        raise ValueError(f"{what} must be timezone-aware (UTC), got {value!r}")


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery attempt for one recipient, as one line of Postfix's log tells it."""

    node: str
    queue_id: str
    recipient: str
    at: datetime
    status: str
    dsn: str | None = None
    relay: str | None = None
    delay: float | None = None
    reply: str | None = None
    failure_class: str | None = None

    def __post_init__(self) -> None:
        _utc(self.at, "at")
        if self.status not in STATUSES:
            raise ValueError(f"attempt status {self.status!r}: expected one of {sorted(STATUSES)}")
        if self.failure_class is not None and self.failure_class not in CLASSES:
            raise ValueError(f"attempt class {self.failure_class!r}: expected one of {sorted(CLASSES)} or None")


@dataclass(frozen=True, slots=True)
class Position:
    """Where the follower stopped: which file (its identity, e.g. device:inode:first-line hash) and offset."""

    node: str
    file_id: str
    offset: int


@dataclass(frozen=True, slots=True)
class StoredLink:
    """Postfix gave a message a new queue id (``queued as`` after a content filter, or a notification).

    Named apart from the log reader's ``core.postfix_log.Link`` event: the follower turns that event
    into this value only for a local re-injection or a notification.
    """

    node: str
    queue_id: str
    new_queue_id: str
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in LINK_KINDS:
            raise ValueError(f"link kind {self.kind!r}: expected one of {sorted(LINK_KINDS)}")


@dataclass(frozen=True, slots=True)
class Expiration:
    """Postfix gave up on a whole message (``status=expired, returned to sender``) at ``at``.

    Postfix names no recipient there, so the store records one ``expired`` attempt for each recipient
    of the message (through queued_as links) that is still queued or deferred.
    """

    node: str
    queue_id: str
    at: datetime

    def __post_init__(self) -> None:
        _utc(self.at, "at")


@dataclass(frozen=True, slots=True)
class OpenMessages:
    """The queue ids of messages still open (some recipient not final), and where to look next time.

    ``users`` maps each queue id (descendants included) to the message's user; ``mark`` is the
    store's row mark to pass back to :meth:`TrackingStore.open_queue_ids` for what was recorded since.
    """

    users: Mapping[str, str]
    mark: int


@dataclass(frozen=True, slots=True)
class RecipientStory:
    """A recipient of a stored message: its current state and its attempts in time order."""

    address: str
    state: str
    attempts: tuple[Attempt, ...]


@dataclass(frozen=True, slots=True)
class StoredMessage:
    record: MessageRecord
    recipients: tuple[RecipientStory, ...]
    complaints: int = 0
    unsubscribes: int = 0


@dataclass(frozen=True, slots=True)
class MessageFilter:
    """What ``messages`` selects; every field left None selects everything. ``until`` is exclusive."""

    user: str | None = None
    to: str | None = None
    message_id: str | None = None
    queue_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """A recipient's final outcome as the store recorded it, with what a notice about it names."""

    node: str
    queue_id: str
    user: str
    list: str | None
    envelope_from: str
    subject: str | None
    message_id: str | None
    recipient: str
    state: str  # delivered | bounced | expired
    attempt: Attempt


NOTIFICATION_KINDS = frozenset({"bounce", "complaint"})
NOTIFICATION_MODES = frozenset({"immediate", "daily"})


@dataclass(frozen=True, slots=True)
class Notification:
    """One mail to send: a notice of ``kind`` to ``to``, now (``immediate``) or in a daily digest.

    ``dedup`` names what the notice is about (one per recipient and message); ``digest`` groups
    daily notices into one mail (e.g. the list and the day); ``payload`` holds what the mail says.
    """

    kind: str
    mode: str
    to: str
    dedup: str
    digest: str
    payload: Mapping[str, object]
    created: datetime

    def __post_init__(self) -> None:
        _utc(self.created, "notification created")
        if self.kind not in NOTIFICATION_KINDS or self.mode not in NOTIFICATION_MODES:
            raise ValueError(f"notification {self.kind!r}/{self.mode!r}: expected bounce|complaint, immediate|daily")


@dataclass(frozen=True, slots=True)
class Claimed:
    """A notification a sender holds until ``until`` (its lease)."""

    id: int
    notification: Notification
    tries: int
    until: datetime


# Called with each final outcome inside the transaction that records it; what it returns is
# enqueued in that transaction (so a replayed log line never enqueues a notice twice).
OnOutcome = Callable[[Outcome], Iterable[Notification]]

REPORT_KINDS = frozenset({"complaint", "unsubscribe"})
# Where an unsubscribe came from: the RFC 8058 one-click POST, the confirm page, a mailto: message.
UNSUBSCRIBE_SOURCES = ("one_click", "page", "mailto")


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """A recipient asked to get no more mail of one user's list (a valid unsubscribe token)."""

    user: str
    list_name: str
    address: str
    at: datetime
    source: str  # one of UNSUBSCRIBE_SOURCES
    created_by: str  # who recorded it: "web" or "ingest"

    def __post_init__(self) -> None:
        _utc(self.at, "unsubscribe time")
        if self.source not in UNSUBSCRIBE_SOURCES:
            raise ValueError(f"unsubscribe source {self.source!r}: expected one of {', '.join(UNSUBSCRIBE_SOURCES)}")


@dataclass(frozen=True, slots=True)
class Report:
    """A complaint or unsubscribe about one recipient of a message (it never changes delivery state)."""

    node: str
    queue_id: str
    recipient: str
    kind: str  # complaint | unsubscribe
    at: datetime
    detail: str | None = None  # e.g. the feedback type and the reporting host

    def __post_init__(self) -> None:
        _utc(self.at, "report time")
        if self.kind not in REPORT_KINDS:
            raise ValueError(f"report kind {self.kind!r}: expected complaint or unsubscribe")


# created_by of the entries the follower makes from delivery outcomes.
FOLLOWER = "follower"


@dataclass(frozen=True, slots=True)
class Suppression:
    """One entry of the suppression list: ``address`` is not sent to within ``scope``.

    ``scope`` is ``user:NAME``, ``list:NAME`` or ``global``; ``reason`` one of
    core.suppression.REASONS; ``expires`` None = never; ``created_by`` who made it (``follower``,
    ``ingest``, or USER@HOST of a command); ``source_*`` the message that caused it, if any.
    """

    scope: str
    address: str
    reason: str
    created: datetime
    expires: datetime | None = None
    source_node: str | None = None
    source_queue_id: str | None = None
    created_by: str = "manual"

    def __post_init__(self) -> None:
        _utc(self.created, "suppression created")
        if self.expires is not None:
            _utc(self.expires, "suppression expires")
        if self.reason not in suppression.REASONS:
            raise ValueError(f"suppression reason {self.reason!r}: expected one of {list(suppression.REASONS)}")
        if not (self.scope == "global" or (self.scope.startswith(("user:", "list:")) and len(self.scope) > 5)):
            raise ValueError(f"suppression scope {self.scope!r}: expected user:NAME, list:NAME or global")


@dataclass(frozen=True, slots=True)
class Contact:
    """A row of the recipients database: one (user, address) with what was sent to it."""

    user: str
    address: str
    first_sent: datetime
    last_sent: datetime
    messages: int
    state: str
    suppressed: str | None = None


@dataclass(frozen=True, slots=True)
class RecordResult:
    """What a write did: rows new to the store, and rows it already had (a replay)."""

    new: int = 0
    replayed: int = 0


def next_state(current: str, status: str) -> str:
    """The recipient's state after an attempt: it only moves forward.

    queued -> deferred (may repeat) -> delivered | bounced | expired. A final state stays final, so a
    late ``deferred`` (or a second final line) never undoes it.
    """
    if current in FINAL_STATES:
        return current
    return STATE_OF_STATUS[status]


def epoch(value: datetime) -> float:
    """Seconds since 1970 UTC: how both SQL backends store times (cheap to group by day and compare)."""
    _utc(value, "time")
    return value.timestamp()


def day_of(value: datetime) -> int:
    """The UTC day of a time as whole days since 1970-01-01 (what stats by date groups on)."""
    return int(epoch(value) // 86400)


def from_epoch(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


class TrackingStore(abc.ABC):
    """The interface every backend implements (see the module docstring and docs/tracking.md)."""

    @abc.abstractmethod
    def migrate(self) -> tuple[int, ...]:
        """Apply the migrations not yet applied, each in its own transaction; the versions applied."""

    @abc.abstractmethod
    def record_messages(
        self,
        records: Iterable[MessageRecord],
        policy: suppression.Policy | None = None,
        on_outcome: OnOutcome | None = None,
    ) -> RecordResult:
        """Record messages; the same (node, queue_id) again is the same message (a spool may replay).

        A recipient whose final outcome was recorded before its message (the log read first) gets
        the outcome's effects now, as :meth:`record_attempts` would have applied them: *policy*
        (the suppression rules) and *on_outcome* (the notices to enqueue).
        """

    @abc.abstractmethod
    def record_attempts(
        self,
        attempts: Iterable[Attempt],
        position: Position | None,
        links: Iterable[StoredLink] = (),
        expirations: Iterable[Expiration] = (),
        policy: suppression.Policy | None = None,
        on_outcome: OnOutcome | None = None,
        late: bool = False,
    ) -> RecordResult:
        """Record links, attempts and expirations and save the follower's position, in one transaction.

        With a ``policy``, each recipient's final outcome also applies the suppression rules
        (core/suppression.py): a streak of soft failures, a suppression, or a lifted bounce entry;
        ``on_outcome`` is asked, in the same transaction, which notices each final outcome enqueues.
        ``late``: the attempts come from bounce reports received after the fact, so a bounce may
        overturn ``delivered`` (the receiver accepted the message, then bounced it).

        Links go first, so an attempt of the same batch on a new queue id finds its message. An
        attempt already recorded (same node, queue id, recipient, time, status and dsn) is a replay:
        it is counted in ``replayed`` and changes nothing. Each expiration adds one ``expired``
        attempt per recipient still queued or deferred (counted in ``new``).
        """

    @abc.abstractmethod
    def record_report(self, report: Report, suppression: Suppression | None, notices: Iterable[Notification]) -> bool:
        """Record a complaint or unsubscribe once (False: it was recorded before, nothing changed),
        with the suppression entry and the notices it causes, in one transaction."""

    @abc.abstractmethod
    def record_unsubscribe(
        self, item: Unsubscribe, notices: Callable[[Report | None], Iterable[Notification]] = lambda report: ()
    ) -> bool:
        """Suppress the address for ``list:NAME`` (reason ``unsubscribe``, never expires) and count
        it once on the latest message of that user and list sent to the address (when the store has
        one: that message's ``unsubscribes``), with the *notices* of that report, in one transaction.
        True when new; an address already unsubscribed from the list changes nothing (False)."""

    @abc.abstractmethod
    def report_counts(self, node: str, kind: str) -> dict[str, int]:
        """Complaints (or unsubscribes) recorded about ``node``'s messages, per SMTP+ user."""

    @abc.abstractmethod
    def report_counts_by_list(self, node: str, kind: str, detail: str) -> dict[str, int]:
        """Reports of ``kind`` with ``detail`` (an unsubscribe's source) about ``node``'s messages,
        per list (messages of no list are left out)."""

    @abc.abstractmethod
    def enqueue(self, notifications: Iterable[Notification]) -> int:
        """Add notices to the outbox (one per ``to`` and ``dedup``: a second is dropped); how many are new."""

    @abc.abstractmethod
    def claim(
        self,
        worker: str,
        now: datetime,
        lease: timedelta,
        limit: int,
        mode: str = "immediate",
        before: datetime | None = None,
    ) -> list[Claimed]:
        """Take up to ``limit`` due, unsent notices of ``mode`` (created before ``before``, if given)
        for ``lease``, oldest first; another worker (on this or another host) does not get them
        until the lease runs out."""

    @abc.abstractmethod
    def sent(self, ids: Iterable[int], now: datetime) -> None:
        """Mark claimed notices sent."""

    @abc.abstractmethod
    def failed(self, notice: int, error: str, retry_at: datetime) -> None:
        """A claimed notice could not be sent: free it for another try at ``retry_at``."""

    @abc.abstractmethod
    def suppress(self, entries: Iterable[Suppression]) -> int:
        """Add or refresh entries (a bounce never replaces a complaint, unsubscribe or manual entry);
        how many changed."""

    @abc.abstractmethod
    def unsuppress(self, scope: str, address: str) -> bool:
        """Remove one entry; False when there was none."""

    @abc.abstractmethod
    def suppressions(
        self, scope: str | None = None, now: datetime | None = None, address: str | None = None
    ) -> Iterator[Suppression]:
        """Entries by scope and address; with ``now`` only those still in force."""

    @abc.abstractmethod
    def expire(self, node: str, queue_id: str, at: datetime) -> int:
        """Postfix expired this message: its recipients still queued or deferred become ``expired``."""

    @abc.abstractmethod
    def open_queue_ids(self, node: str, after: int | None = None) -> OpenMessages:
        """Queue ids the follower should watch: ``after`` None, those of every message of ``node``
        with a recipient not final (and the ids they continued as); otherwise those of messages
        recorded since ``after`` (a previous ``mark``), whatever their state."""

    @abc.abstractmethod
    def link(self, node: str, queue_id: str, new_queue_id: str, kind: str) -> None:
        """Record that ``queue_id`` continues as ``new_queue_id`` (see :class:`StoredLink`)."""

    @abc.abstractmethod
    def position(self, node: str) -> Position | None:
        """The follower's saved position for ``node``, or None before its first save."""

    @abc.abstractmethod
    def stats(
        self, by: str = "date", since: datetime | None = None, until: datetime | None = None, user: str | None = None
    ) -> Iterator[dict[str, object]]:
        """One row per group of messages accepted in [since, until); keys: STATS_COUNTERS and ``by``."""

    @abc.abstractmethod
    def messages(self, filters: MessageFilter | None = None, limit: int | None = 100) -> Iterator[StoredMessage]:
        """The messages matching ``filters`` (None: all), newest first."""

    @abc.abstractmethod
    def message(self, queue_id: str, node: str | None = None) -> StoredMessage | None:
        """One message by its queue id (or a queue id it continued as), with every attempt in time order."""

    @abc.abstractmethod
    def recipients(
        self, user: str | None = None, state: str | None = None, limit: int | None = None, now: datetime | None = None
    ) -> Iterator[Contact]:
        """The recipients database, most recently sent first; ``suppressed`` is the reason of an entry
        for the user or global (in force at ``now``; None: any)."""

    @abc.abstractmethod
    def prune(self, before: datetime, batch: int = 1000) -> int:
        """Delete messages accepted before ``before`` (and their rows) in transactions of ``batch``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""
