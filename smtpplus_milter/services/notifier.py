"""Notices to the people who want them: which an outcome enqueues, and sending the outbox.

Planning (:func:`bounce_notices`) runs inside the store's transaction that records a recipient's
final outcome, so a notice is enqueued exactly when the outcome is recorded: never twice for a
re-read log line, never lost between the two. Sending (:class:`Notifier`) runs in the follower:
it claims due notices for a lease, hands each to ``notify.smtp`` (the relay's own loopback
listener without the milter, never through the milter), marks it sent, and on failure frees it
for a retry with back-off (1 minute doubling to 1 hour). Several relay hosts sharing one store
each claim different notices. A daily digest collects a day's notices per recipient and digest
key (e.g. the list) into one mail, sent after the day has ended (UTC).

What can happen twice: a sender that crashes after the SMTP server took a notice and before it
marked it sent sends that notice again once its lease (2 minutes) has run out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from itertools import groupby
from types import MappingProxyType

from smtpplus_milter.config import Config
from smtpplus_milter.config.values import HostPort, Notices, Notify
from smtpplus_milter.core.notices import digest, notice
from smtpplus_milter.infra.mailer import MailProblem, submit
from smtpplus_milter.infra.store import TrackingStore
from smtpplus_milter.infra.store.base import Claimed, Notification, Outcome, StoredMessage
from smtpplus_milter.observe.log import get_logger

LEASE = timedelta(minutes=2)
FIRST_RETRY = timedelta(minutes=1)
MAX_RETRY = timedelta(hours=1)
BATCH = 50
SMTP_TIMEOUT = 30.0

log = get_logger()


@dataclass(frozen=True, slots=True)
class Audience:
    """Who gets one kind of notice, and when."""

    to: tuple[str, ...]
    mode: str = "immediate"  # immediate | daily
    original_sender: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    """Who is told about bounces and complaints: the global default and per-list overrides.

    ``sender``/``smtp``: the From and the server of this block's notices (a list may have its own);
    None: the notifier's defaults.
    """

    bounces: Audience | None = None
    complaints: Audience | None = None
    lists: Mapping[str, Plan] = field(default_factory=lambda: MappingProxyType({}))
    sender: str | None = None
    smtp: HostPort | None = None

    def for_list(self, name: str | None) -> Plan:
        return self.lists.get(name, self) if name else self


def _audience(notices: Notices) -> Audience | None:
    if not notices.to and not notices.original_sender:
        return None
    return Audience(notices.to, notices.mode, notices.original_sender)


def _plan(notify: Notify) -> Plan:
    return Plan(_audience(notify.bounces), _audience(notify.complaints), sender=notify.sender, smtp=notify.smtp)


def plan_of(config: Config) -> Plan:
    """The notice plan of a loaded config: ``notify`` and each list's own block merged over it."""
    lists = {name: _plan(config.notify_for(name)) for name in config.list_notify}
    return replace(_plan(config.notify_for(None)), lists=MappingProxyType(lists))


def _targets(audience: Audience, original_sender: str | None) -> list[str]:
    to = list(audience.to)
    if audience.original_sender and original_sender:
        to.append(original_sender)
    return list({address.lower(): address for address in to}.values())


def _utc_text(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _routing(plan: Plan) -> dict[str, object]:
    """Where a notice goes out (kept in the payload: a list's block may name its own)."""
    return {"notify_from": plan.sender, "notify_smtp": str(plan.smtp) if plan.smtp else None}


def complaint_notices(
    plan: Plan, message: StoredMessage, recipient: str, feedback_type: str, at: datetime
) -> list[Notification]:
    """The notices of one complaint about ``recipient`` of ``message``."""
    rec = message.record
    chosen = plan.for_list(rec.list)
    audience = chosen.complaints
    if audience is None:
        return []
    payload = {
        "user": rec.user,
        "recipient": recipient,
        "feedback_type": feedback_type,
        "subject": rec.subject,
        "message_id": rec.message_id,
        "queue_id": rec.queue_id,
        "node": rec.node,
        "at": _utc_text(at),
        **_routing(chosen),
    }
    about = f"complaint:{rec.node}:{rec.queue_id}:{recipient}"
    group = f"{'list ' + rec.list if rec.list else 'user ' + rec.user}, {at.astimezone(UTC).date().isoformat()}"
    return [Notification("complaint", audience.mode, to, about, group, payload, at) for to in _targets(audience, None)]


def bounce_notices(plan: Plan, outcome: Outcome) -> list[Notification]:
    """The notices one final outcome enqueues: a bounce (or an expiry) to each of its audience."""
    if outcome.state not in ("bounced", "expired"):
        return []
    chosen = plan.for_list(outcome.list)
    audience = chosen.bounces
    if audience is None:
        return []
    attempt = outcome.attempt
    payload = {
        "user": outcome.user,
        "recipient": outcome.recipient,
        "state": outcome.state,
        "class": attempt.failure_class,
        "dsn": attempt.dsn,
        "reply": attempt.reply,
        "subject": outcome.subject,
        "message_id": outcome.message_id,
        "queue_id": outcome.queue_id,
        "node": outcome.node,
        "at": _utc_text(attempt.at),
        **_routing(chosen),
    }
    about = f"bounce:{outcome.node}:{outcome.queue_id}:{outcome.recipient}"
    day = attempt.at.astimezone(UTC).date().isoformat()
    group = f"{'list ' + outcome.list if outcome.list else 'user ' + outcome.user}, {day}"
    return [
        Notification("bounce", audience.mode, to, about, group, payload, attempt.at)
        for to in _targets(audience, outcome.envelope_from)
    ]


def planner(plan: Plan) -> Callable[[Outcome], Iterable[Notification]]:
    """What the follower hands the store as ``on_outcome``."""
    return lambda outcome: bounce_notices(plan, outcome)


class Notifier:
    """Sends due notices from the outbox; call :meth:`run_once` from the follower's loop."""

    def __init__(
        self,
        store: TrackingStore | None,
        smtp: HostPort,
        sender: str,
        worker: str,
        *,
        count: Callable[[str, str], None] = lambda kind, result: None,
        send: Callable[[EmailMessage, str, Sequence[str], HostPort], None] | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store: TrackingStore | None = store
        self.smtp = smtp
        self.sender = sender
        self.worker = worker
        self.count = count
        self.now = now
        self._send = send or self._submit

    def _sender_of(self, item: Claimed) -> str:
        sender = item.notification.payload.get("notify_from")
        return sender if isinstance(sender, str) and sender else self.sender

    def _smtp_of(self, item: Claimed) -> HostPort:
        smtp = item.notification.payload.get("notify_smtp")
        if isinstance(smtp, str) and smtp:
            try:
                return HostPort.parse(smtp)
            except ValueError:
                pass  # written by an older or other version: the default server
        return self.smtp

    def _submit(self, message: EmailMessage, sender: str, to: Sequence[str], smtp: HostPort) -> None:
        submit(smtp.host, smtp.port, message, sender=sender, recipients=to, timeout=SMTP_TIMEOUT)

    def run_once(self, store: TrackingStore | None = None) -> int:
        """Send what is due (through *store*, or the one given at construction); how many went out."""
        if store is not None:
            self.store = store
        now = self.now()
        return self._immediate(now) + self._digests(now)

    def _immediate(self, now: datetime) -> int:
        assert self.store is not None, "run_once needs a store"
        done = 0
        for item in self.store.claim(self.worker, now, LEASE, BATCH, mode="immediate"):
            wanted = item.notification
            message = notice(wanted.kind, wanted.payload, sender=self.sender, to=[wanted.to], now=now)
            if self._deliver(message, [item], now):
                done += 1
        return done

    def _digests(self, now: datetime) -> int:
        # Only notices of days that have ended: a digest of "today" would be sent half full.
        assert self.store is not None, "run_once needs a store"
        start_of_day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        claimed = self.store.claim(self.worker, now, LEASE, BATCH * 20, mode="daily", before=start_of_day)
        done = 0

        def key(item: Claimed) -> tuple[str, str, str]:
            return (item.notification.to, item.notification.kind, item.notification.digest)

        for (to, kind, title), items in groupby(sorted(claimed, key=key), key=key):
            group = list(items)
            message = digest(kind, title, [i.notification.payload for i in group], sender=self.sender, to=[to], now=now)
            if self._deliver(message, group, now):
                done += len(group)
        return done

    def _deliver(self, message: EmailMessage, items: Sequence[Claimed], now: datetime) -> bool:
        assert self.store is not None, "run_once needs a store"
        kind = items[0].notification.kind
        try:
            self._send(message, self._sender_of(items[0]), [items[0].notification.to], self._smtp_of(items[0]))
        except MailProblem as exc:
            tries = max(item.tries for item in items)
            wait = min(FIRST_RETRY * 2 ** (tries - 1), MAX_RETRY)
            for item in items:
                self.store.failed(item.id, str(exc), now + wait)
            self.count(kind, "failed")
            log.warning(
                "notification_failed", to=items[0].notification.to, kind=kind, reason=str(exc)[:500], retry_in=str(wait)
            )
            return False
        self.store.sent([item.id for item in items], now)
        self.count(kind, "sent")
        log.info("notification_sent", to=items[0].notification.to, kind=kind, notices=len(items))
        return True
