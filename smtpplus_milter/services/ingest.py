"""``smtpplus-milter ingest``: one report that came back to the return path, into the store.

Postfix's pipe transport ``smtpplus-ingest`` runs ``ingest`` once per message sent to
``b+TOKEN@<bounces.return_path>`` (a bounce or a complaint about mail the relay sent) with the
message on standard input and the recipient address as ``--recipient``. The outcome decides the
exit status Postfix acts on:

* recorded (or recognised as already recorded): exit 0;
* the store cannot be reached: exit 75 (EX_TEMPFAIL), Postfix keeps the report and runs ingest
  again later, so no report is lost;
* anything that cannot be used (not a report, unreadable, a forged or unknown token, a message the
  store does not know): kept in the quarantine directory with the reason beside it, logged, and
  exit 0 (never bounced back: a bounce of a bounce helps nobody).

An unsubscribe by mail (``mailto:u+TOKEN@<bounces.return_path>`` from a list message's
``List-Unsubscribe``, docs/unsubscribe.md) comes the same way: whatever the message says, a valid
TOKEN (user, list, recipient) suppresses that recipient for the list (reason ``unsubscribe``,
source ``mailto``; a repeat is a ``duplicate``); a forged one is quarantined like a forged bounce
token.

Matching: the TOKEN in the recipient's local part (checked with the key of ``secret_file``: a
forged token matches nothing), else the Message-ID of the returned headers. A DSN's failed and
delayed recipients become attempts (a bounce after "delivered" overturns it: the receiver took the
message and bounced it later) with the suppression rules and bounce notices of the follower; an
ARF complaint suppresses the recipient for the user (reason ``complaint``, never expires), counts
on the message, and sends the complaint notices. Plain-text bounces read from free text
(``standard=False``) are recorded but never suppress on their own.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

from smtpplus_milter.config import Config
from smtpplus_milter.core.reports import (
    MAX_REPORT_BYTES,
    ComplaintReport,
    DeliveryReport,
    ReturnedHeaders,
    read_report,
)
from smtpplus_milter.core.tokens import (
    BOUNCE_PREFIX,
    UNSUBSCRIBE_PREFIX,
    read_bounce_token,
    read_mail_unsubscribe_token,
    read_unsubscribe_token,
)
from smtpplus_milter.infra.files import FileProblem, Ownership, replace_atomically
from smtpplus_milter.infra.store import TrackingStore
from smtpplus_milter.infra.store.base import (
    Attempt,
    MessageFilter,
    Notification,
    Report,
    StoredMessage,
    Suppression,
    Unsubscribe,
)
from smtpplus_milter.services.notifier import complaint_notices, plan_of, planner

INGEST = "ingest"


@dataclass(frozen=True)
class Result:
    """What ingest did with one message: ``recorded``, ``duplicate`` or ``quarantined`` (with why)."""

    status: str
    reason: str = ""
    queue_id: str | None = None
    recipients: int = 0
    complaints: tuple[tuple[str, str, str], ...] = ()  # (user, recipient, feedback type) newly recorded
    unsubscribed: tuple[str, str, str] | None = None  # (user, list, recipient) of a new mailto: unsubscribe


def when(text: str | None, now: datetime) -> datetime:
    """A report's Arrival-Date as an aware UTC time, else *now* (a retried ingest then differs)."""
    if text:
        try:
            value = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return now
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return now


def ingest(raw: bytes, recipient: str | None, config: Config, store: TrackingStore, now: datetime) -> Result:
    """Read, match and record one report (see the module docstring); store errors propagate."""
    local = (recipient or "").rpartition("@")[0]
    if local.lower().startswith(UNSUBSCRIBE_PREFIX):
        return _unsubscribe(local[len(UNSUBSCRIBE_PREFIX) :], recipient or "", config, store, now)
    report = read_report(raw)
    if not isinstance(report, DeliveryReport | ComplaintReport):
        return Result("quarantined", report.reason)
    # A DSN comes to b+TOKEN@return_path; a complaint often to a feedback address, but it quotes
    # the envelope sender it complains about, which is b+TOKEN@return_path too.
    candidates = [recipient or ""]
    if isinstance(report, ComplaintReport) and report.original_mail_from:
        candidates.append(report.original_mail_from.strip().strip("<>"))
    found = _match(candidates, report.returned, config, store)
    if isinstance(found, str):
        return Result("quarantined", found)
    if isinstance(report, DeliveryReport):
        return _bounces(report, found, config, store, now)
    return _complaint(report, found, config, store, now)


def _match(
    addresses: list[str], returned: ReturnedHeaders | None, config: Config, store: TrackingStore
) -> StoredMessage | str:
    for address in addresses:
        local = address.rpartition("@")[0]
        if not local.lower().startswith(BOUNCE_PREFIX) or config.secret is None:
            continue
        token = read_bounce_token(local[len(BOUNCE_PREFIX) :], config.secret.key)
        if token is None:
            return f"the token in {address} is not ours (forged, or made with another secret_file)"
        message = store.message(token.queue_id)
        if message is None or not token.is_from(message.record.node):
            return f"no recorded message for the token in {address} (queue id {token.queue_id})"
        return message
    if returned is not None and returned.message_id:
        matches = list(store.messages(MessageFilter(message_id=returned.message_id), limit=2))
        if len(matches) == 1:
            return store.message(matches[0].record.queue_id, matches[0].record.node) or matches[0]
        if matches:
            return f"Message-ID {returned.message_id} names more than one recorded message"
        return f"no recorded message with Message-ID {returned.message_id}"
    return "no bounce token in the recipient and no Message-ID in the returned headers"


def _unsubscribe(token: str, address: str, config: Config, store: TrackingStore, now: datetime) -> Result:
    """A mail to u+TOKEN@return_path: the token's recipient unsubscribed from the token's list."""
    if config.secret is None:
        return Result("quarantined", f"an unsubscribe to {address}, but secret_file is not read (no key to check it)")
    key = config.secret.key
    short = read_mail_unsubscribe_token(token, key)
    if short is not None:
        # The short form names the message and, by tag, its recipient: the record says the rest.
        message = store.message(short.queue_id)
        if message is None or not short.is_from(message.record.node) or message.record.list is None:
            return Result("quarantined", f"no recorded list message for the unsubscribe in {address}", short.queue_id)
        named = [story.address for story in message.recipients if short.names(story.address, key)]
        if len(named) != 1:
            return Result("quarantined", f"the unsubscribe in {address} names no single recipient", short.queue_id)
        user, list_name, recipient = message.record.user, message.record.list, named[0]
    else:
        found = read_unsubscribe_token(token, key)
        if found is None:
            return Result(
                "quarantined", f"the unsubscribe token in {address} is not ours (forged, or another secret_file)"
            )
        user, list_name, recipient = found.user, found.list, found.recipient
    item = Unsubscribe(user, list_name, recipient, now, "mailto", INGEST)
    if not store.record_unsubscribe(item):
        return Result("duplicate", recipients=1)
    return Result("recorded", recipients=1, unsubscribed=(user, list_name, recipient))


def _bounces(
    report: DeliveryReport, message: StoredMessage, config: Config, store: TrackingStore, now: datetime
) -> Result:
    rec = message.record
    known = {story.address for story in message.recipients}
    at = when(report.arrival_date, now)
    attempts = []
    for entry in report.entries:
        address = (entry.recipient or "").lower()
        if entry.tracking_status is None or address not in known:
            continue  # delivered/relayed notices, or an address this message was not sent to
        attempts.append(
            Attempt(
                rec.node,
                rec.queue_id,
                address,
                at,
                entry.tracking_status,
                entry.status,
                entry.remote_mta or report.reporting_mta,
                None,
                entry.diagnostic or "",
                entry.failure_class,
            )
        )
    if not attempts:
        return Result("quarantined", "the report names no failed or delayed recipient of the message", rec.queue_id)
    plan = plan_of(config)
    done = store.record_attempts(
        attempts,
        None,
        policy=config.bounces.policy if report.standard else None,
        on_outcome=planner(plan),
        late=True,
    )
    status = "recorded" if done.new else "duplicate"
    return Result(status, queue_id=rec.queue_id, recipients=len(attempts))


def _complaint(
    report: ComplaintReport, message: StoredMessage, config: Config, store: TrackingStore, now: datetime
) -> Result:
    rec = message.record
    known = [story.address for story in message.recipients]
    named = [address.lower() for address in report.original_rcpt_to if address.lower() in known]
    if not named and len(known) == 1:
        named = known  # the receiver redacted the recipient, but the message had only one
    if not named:
        return Result("quarantined", "the complaint names no recipient of the message (redacted?)", rec.queue_id)
    at = when(report.arrival_date, now)
    plan = plan_of(config)
    recorded = 0
    for address in named:
        detail = f"{report.feedback_type} from {report.reporting_mta or report.user_agent or 'unknown'}"
        entry = Suppression(f"user:{rec.user}", address, "complaint", at, None, rec.node, rec.queue_id, INGEST)
        notices: Iterable[Notification] = complaint_notices(plan, message, address, report.feedback_type, at)
        complaint = Report(rec.node, rec.queue_id, address, "complaint", at, detail)
        recorded += store.record_report(complaint, entry, notices)
    return Result(
        "recorded" if recorded else "duplicate",
        queue_id=rec.queue_id,
        recipients=len(named),
        complaints=tuple((rec.user, address, report.feedback_type) for address in named) if recorded else (),
    )


def quarantine(directory: Path, raw: bytes, reason: str, now: datetime) -> Path:
    """Keep a message ingest could not use, with the reason beside it; the path it was kept at."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o750)
    digest = hashlib.sha256(raw).hexdigest()[:16]
    path = directory / f"{now.strftime('%Y%m%dT%H%M%SZ')}-{digest}.eml"
    own = Ownership(0o640, os.getuid(), os.getgid())
    replace_atomically(path, raw, new_file=own)
    replace_atomically(path.with_suffix(".reason"), (reason + "\n").encode("utf-8", "replace"), new_file=own)
    return path


@dataclass(frozen=True)
class Taken:
    """What became of one report, for the door that took it (pipe exit status, LMTP reply).

    *retry*: it was not recorded nor kept, for a reason that may pass (the store, a full disk):
    the door answers "try again later" (exit 75, LMTP 451) and Postfix keeps the report.
    *event* and *fields*: the log line. *complaints*: (user, recipient, feedback type) newly
    recorded, for the ``SMTPPlusComplaint`` alert.
    """

    retry: bool
    event: str
    fields: Mapping[str, object] = field(default_factory=dict)
    complaints: tuple[tuple[str, str, str], ...] = ()
    queue_id: str | None = None


def take(
    raw: bytes,
    recipient: str | None,
    config: Config,
    store: Callable[[], TrackingStore],
    directory: Path,
    now: datetime,
) -> Taken:
    """One report from either door: recorded, kept in quarantine *directory*, or to be retried.

    *raw* may hold one byte over :data:`MAX_REPORT_BYTES` (the doors read at most that much): such
    a report is kept cut at the bound, never parsed. *store* gives the open store (it may raise:
    the store is down); nothing here raises.
    """
    try:
        if len(raw) > MAX_REPORT_BYTES:
            reason, queue_id = f"over {MAX_REPORT_BYTES} bytes", None
        else:
            result = ingest(raw, recipient, config, store(), now)
            reason, queue_id = result.reason, result.queue_id
            if result.status != "quarantined":
                fields = {
                    "status": result.status,
                    "queue_id": result.queue_id,
                    "recipients": result.recipients,
                    "recipient": recipient,
                }
                if result.unsubscribed is not None:
                    user, list_name, address = result.unsubscribed
                    fields.update(kind="unsubscribe", user=user, list=list_name, address=address)
                return Taken(False, "report_ingested", fields, result.complaints, result.queue_id)
        kept = quarantine(directory, raw[:MAX_REPORT_BYTES], reason, now)
        fields = {"reason": reason, "kept": str(kept), "queue_id": queue_id, "recipient": recipient}
        return Taken(False, "report_quarantined", fields, queue_id=queue_id)
    except FileProblem as exc:
        return Taken(True, "report_not_kept", {"reason": str(exc), "recipient": recipient})
    except Exception as exc:  # the store down, a lock timeout...: Postfix retries, nothing is lost
        reason = f"{type(exc).__name__}: {str(exc)[:500]}"
        return Taken(True, "report_deferred", {"reason": reason, "recipient": recipient})


def quarantine_dir(config: Config, given: Path | None = None) -> Path:
    """Where unusable reports are kept: *given*, else ``ingest-quarantine`` beside the spool."""
    if given is not None:
        return given
    assert config.tracking is not None  # both doors refuse to start without tracking
    return Path(config.tracking.spool_dir).parent / "ingest-quarantine"
