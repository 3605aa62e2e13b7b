"""The log follower: Postfix's delivery lines for tracked mail, into the tracking store.

:class:`Follower` reads ``tracking.maillog`` from the position saved in the store, cuts it into lines
(:class:`~smtpplus_milter.core.lines.LineSplitter`), keeps only lines about queue ids it watches
(two string searches find the id, so other lines cost no regular expression; a watched id's line
then goes through :func:`~smtpplus_milter.core.postfix_log.parse_line`, which checks the whole
header), turns their events into attempts, links and expirations, and hands one chunk's worth
to the store in ONE ``record_attempts`` call together with the new position. A kill -9 therefore
leaves either the whole chunk and its position in the store or neither; the next start re-reads
from the saved position, and the store's unique key on attempts makes a re-read line harmless.

Files: the position names the file by device, inode and a hash of its first bytes
(:data:`FINGERPRINT_BYTES`), so a file renamed away (rotation), truncated in place (copytruncate)
or removed and recreated is noticed. Rotation: the old file is read to its end, then the new one
from 0. A position saved in a file rotated while the follower was stopped is looked for among the
file's siblings (``postfix.log.1``, ``postfix.log-20261201``...), finished, and then the new file read.

The milter's records: the milter only appends each accepted message's record to the spool
(:mod:`smtpplus_milter.infra.spool`); each cycle the follower also reads up to :data:`SPOOL_BATCH`
of them, hands them to the store in one ``record_messages`` call and only then moves the spool's
done mark (a crash in between reads them again, and the store's writes are idempotent). A store
that fails gets the same back-off as for the log's lines; the spool grows meanwhile, up to its
bound. The records' queue ids are watched at once.

Reload (SIGHUP): :class:`Reloader` reads the config file again. A file that does not validate is
logged and the running settings stay. Otherwise what may change in a running follower (the
suppression rules, the notice plan, the notifier's sender and server, the retention) is one frozen
:class:`Tuning` value that replaces the old one in a single assignment; each store transaction and
each round of duties reads it once, so a batch is never handled half with the old settings and half
with the new. What the follower was started with and cannot change while it runs (the store, the
node, the log file, the spool, the metrics port: :data:`FIXED_AT_START`) is only compared, and a
change is logged with the keys to restart for (:func:`restart_keys`).

Which queue ids: those of messages the store knows and that are still open (loaded at start,
refreshed every :data:`REFRESH_SECONDS` with what the milter recorded since), those an ``smtpd``
line names with a ``sasl_username`` (an authenticated submission, before the milter's record
reaches the store), and the ids a tracked message is re-injected as. An id leaves the set
:data:`REMOVED_GRACE_SECONDS` after Postfix removed its queue file; the set holds at most
:data:`MAX_WANTED` ids (the oldest go first).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import BinaryIO

from smtpplus_milter.config import Config, ConfigError
from smtpplus_milter.config.values import Tracking
from smtpplus_milter.core.failures import classify
from smtpplus_milter.core.lines import Line, LineSplitter
from smtpplus_milter.core.postfix_log import (
    QUEUE_ID,
    Delivery,
    Expired,
    Link,
    Removed,
    parse_line,
    peek_queue_id,
)
from smtpplus_milter.core.suppression import Policy
from smtpplus_milter.core.tracking import MessageRecord
from smtpplus_milter.infra.spool import SpoolProblem, SpoolReader
from smtpplus_milter.infra.store import TrackingStore, open_store
from smtpplus_milter.infra.store.base import Attempt, Expiration, OnOutcome, Position, StoredLink
from smtpplus_milter.infra.suppression_file import Writer as SnapshotWriter
from smtpplus_milter.observe.log import get_logger
from smtpplus_milter.observe.metrics import FollowerMetrics
from smtpplus_milter.services.notifier import Notifier

log = get_logger()

POLL_SECONDS = 0.2
CHUNK_BYTES = 1024 * 1024  # one read, one store transaction
FINGERPRINT_BYTES = 256
REFRESH_SECONDS = 2.0
PRUNE_SECONDS = 3600.0
# Notices sent and the suppression snapshot refreshed this often (the milter sees a new entry
# within this plus its own one-second check).
DUTY_SECONDS = 5.0
PRUNE_BATCH = 500
REMOVED_GRACE_SECONDS = 600.0  # a notification or a late line may follow "removed"
MAX_WANTED = 200_000
MAX_FINISHED = 10_000  # remembered so that a refresh does not watch them again
RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 60.0
MAX_REPLY_CHARS = 2000
UNKNOWN_USER = "-"
SPOOL_BATCH = 500  # milter records per store call
SPOOL_COUNT_SECONDS = 1.0  # smtpplus_tracking_spooled is recounted this often (a read of what waits)
SPOOL_GAP_SECONDS = 60.0  # records found after this long without any are logged (and their storing)
SPOOL_RETRY_SECONDS = 60.0  # an unreadable spool (another format version) is tried again after this

# smtpd's "QID: client=host[ip], sasl_method=PLAIN, sasl_username=alice": an authenticated submission.
_SASL = re.compile(rf"/smtpd(?:\[\d+\])?: (?:\[ID \d+ [\w.]+\] )?({QUEUE_ID}): client=.*?\bsasl_username=([^,\s]+)")
# Compressed rotations cannot be read where they lie; they are never the file of a saved position.
_COMPRESSED = (".gz", ".xz", ".bz2", ".zst", ".lz4")
_NOTIFICATION_KINDS = frozenset({"bounce", "delay", "dsn"})
# How the text after the queue id starts in the lines parse_line makes events of (a delivery,
# qmgr's expiry or active line, "removed", bounce's notification).
_EVENT_STARTS = ("to=<", "from=<", "removed", "sender ", "postmaster ")


# The tracking keys a running follower keeps from its start: its store connection and node name, the
# open log file, the spool it drains, the port its metrics are served on. A reload compares them
# and names the changed ones; only a restart applies them.
FIXED_AT_START = ("store", "node", "maillog", "spool_dir", "metrics_listen")
RESTART_HINT = "restart the follower to apply"


@dataclass(frozen=True, slots=True)
class Tuning:
    """What a reload may change in a running follower, swapped as one value between two batches.

    *policy*: the suppression rules applied with each outcome (None: none); *on_outcome*: the
    notices an outcome enqueues; *notifier*: who sends the outbox, with its default sender and
    server (None: nothing is sent); *retention_days*: how long the store keeps a message (None: forever).
    """

    policy: Policy | None = None
    on_outcome: OnOutcome | None = None
    notifier: Notifier | None = None
    retention_days: int | None = None


def restart_keys(running: Tracking, new: Tracking | None) -> tuple[str, ...]:
    """The ``tracking.*`` keys of *new* that differ from what the follower was started with.

    A reload cannot apply them; they are named in a warning. *new* None (the section is gone) names
    every one of them: tracking cannot be turned off under a running follower.
    """
    if new is None:
        return tuple(f"tracking.{name}" for name in FIXED_AT_START)
    return tuple(f"tracking.{name}" for name in FIXED_AT_START if getattr(running, name) != getattr(new, name))


def _quick_queue_id(text: str) -> tuple[str | None, int]:
    """The token after ``program[pid]: `` (a queue id if the line has one) and where the text after
    its ``: `` starts, found without a regex.

    Only a pre-filter: a token that is watched (or an smtpd ``sasl_username`` line) then goes
    through :func:`peek_queue_id` and :func:`parse_line`, which check the whole header. Postfix
    always writes the ``[pid]``, and neither the time nor the host name holds ``]``, so the first
    ``]: `` ends the program. None: no token, skip the line; ``""``: no ``]: `` at all (a line
    without a pid), let the full check decide.
    """
    start = text.find("]: ")
    if start < 0:
        return "", 0
    start += 3
    if text.startswith("[ID ", start):  # a Solaris-style "[ID 197553 mail.info] " tag
        start = text.find("] ", start) + 2
        if start < 2:
            return None, 0
    end = text.find(": ", start)
    return (None, 0) if end < 0 else (text[start:end], end + 2)


def is_local_relay(relay: str | None) -> bool:
    """True when ``relay=`` names this host: a content filter handing the mail back to our Postfix.

    ``127.0.0.1[127.0.0.1]:10025``, ``localhost[::1]:10026``, ``none`` and a unix socket
    (``private/filter``, no ``[address]``) are local; any other host's ``queued as`` is its own queue.
    """
    if not relay or relay == "none":
        return True
    host, bracket, rest = relay.partition("[")
    if not bracket:
        return True  # a unix socket: the filter runs here
    if host.lower() == "localhost":
        return True
    address = rest.partition("]")[0]
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class FileId:
    """Which file a position is in: device, inode, and a hash of its first ``length`` bytes."""

    dev: int
    ino: int
    length: int
    digest: str

    def __str__(self) -> str:
        return f"{self.dev}:{self.ino}:{self.length}:{self.digest}"

    @classmethod
    def parse(cls, text: str) -> FileId | None:
        parts = text.split(":")
        if len(parts) != 4 or not all(p.isdigit() for p in parts[:3]):
            return None
        return cls(int(parts[0]), int(parts[1]), int(parts[2]), parts[3])

    @classmethod
    def of(cls, handle: BinaryIO, length: int = FINGERPRINT_BYTES) -> FileId:
        info = os.fstat(handle.fileno())
        head = os.pread(handle.fileno(), length, 0)
        return cls(info.st_dev, info.st_ino, len(head), hashlib.sha256(head).hexdigest()[:16])

    def same_file(self, handle: BinaryIO) -> bool:
        """The open file is this one: same device and inode, and its first bytes unchanged."""
        info = os.fstat(handle.fileno())
        if (info.st_dev, info.st_ino) != (self.dev, self.ino):
            return False
        head = os.pread(handle.fileno(), self.length, 0)
        return len(head) == self.length and hashlib.sha256(head).hexdigest()[:16] == self.digest


@dataclass
class _Reading:
    handle: BinaryIO
    path: Path
    file_id: FileId
    splitter: LineSplitter
    read_to: int  # bytes read so far (the splitter's offset plus a partial line)


@dataclass
class _Batch:
    attempts: list[Attempt] = field(default_factory=list)
    users: list[str] = field(default_factory=list)  # the user of each attempt, for the metric
    links: list[StoredLink] = field(default_factory=list)
    expirations: list[Expiration] = field(default_factory=list)
    expiring_users: set[str] = field(default_factory=set)
    position: Position | None = None
    last_at: datetime | None = None


class Follower:
    """Follows one log file into one store for one node. :meth:`serve` runs it; :meth:`step` once."""

    def __init__(
        self,
        store_url: str,
        node: str,
        maillog: Path,
        metrics: FollowerMetrics,
        *,
        retention_days: int | None = None,
        spool: SpoolReader | None = None,
        policy: Policy | None = None,
        on_outcome: OnOutcome | None = None,
        notifier: Notifier | None = None,
        snapshot: SnapshotWriter | None = None,
        opener: Callable[[str], TrackingStore] = open_store,
        zone: tzinfo | None = None,
        poll: float = POLL_SECONDS,
        chunk: int = CHUNK_BYTES,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store_url = store_url
        self.node = node
        self.maillog = maillog
        self.metrics = metrics
        self.spool = spool
        # Issue 14's duties, done in this process because it holds the store: the suppression
        # rules and notices applied with each outcome, sending the notices, and the snapshot of
        # the suppression list the milter checks at RCPT.
        # What a reload may change: one value, replaced whole by reconfigure().
        self._tuning = Tuning(policy, on_outcome, notifier, retention_days)
        self.snapshot = snapshot
        self._next_duties = 0.0
        self._complaints: dict[str, int] | None = None  # the last counts read (None: not yet)
        self._unsubscribes: dict[str, int] | None = None  # mailto: unsubscribes per list, likewise
        self.opener = opener
        # Postfix writes the classic timestamp in local time.
        self.zone = zone if zone is not None else (datetime.now().astimezone().tzinfo or UTC)
        self.poll = poll
        self.chunk = chunk
        self.wall = wall
        self.clock = clock
        self._store: TrackingStore | None = None
        self._reading: _Reading | None = None
        self._pending: _Batch | None = None  # a batch the store has not taken yet
        self._users: dict[str, str] = {}  # watched queue id -> SMTP+ user
        self._removed: dict[str, float] = {}  # queue id -> when to stop watching it (clock)
        self._finished: dict[str, None] = {}  # ids no longer watched, oldest first (bounded)
        self._mark: int | None = None
        self._next_refresh = 0.0
        self._next_prune = 0.0
        self._next_try = 0.0
        self._retry = RETRY_SECONDS
        self._missing_said = False
        self._next_count = 0.0
        self._next_spool = 0.0
        self._spool_seen: float | None = None  # when records were last found in the spool (clock)
        self._stopping = threading.Event()

    # -- the service ---------------------------------------------------------------------------------

    def serve(self) -> None:
        while not self._stopping.is_set():
            try:
                progressed = self.step()
            except Exception:  # one failed cycle must not end the follower
                log.exception("follower_cycle_failed")
                progressed = False
            if not progressed:
                self._stopping.wait(self.poll)

    def stop(self) -> None:
        self._stopping.set()

    def close(self) -> None:
        """Write what is still pending (once) and release the store and the file."""
        if self._pending is not None and self._store is not None:
            try:
                self._write(self._pending)
            except Exception as exc:
                log.warning("follower_unsaved", reason=str(exc)[:300], detail="re-read from the saved position")
        if self._reading is not None:
            self._reading.handle.close()
            self._reading = None
        if self._store is not None:
            self._store.close()
            self._store = None

    def watched(self) -> int:
        return len(self._users)

    @property
    def tuning(self) -> Tuning:
        return self._tuning

    def reconfigure(self, tuning: Tuning) -> None:
        """Use *tuning* from the next store transaction on (called from the reload thread).

        One reference assignment: the serving thread reads ``_tuning`` once per transaction and
        once per round of duties, so it sees either the old value or the new one, never a mix.
        """
        self._tuning = tuning

    # -- one cycle -----------------------------------------------------------------------------------

    def step(self) -> bool:
        """One cycle: write a pending batch, or read and write one chunk. True if it did something."""
        now = self.clock()
        self._count_spool(now)
        if now < self._next_try:
            return False
        try:
            store = self._open_store()
            if self._pending is not None:
                self._write(self._pending)
                self._pending = None
            self._housekeeping(store, now)
            spooled = self._drain_spool(store, now)
        except Exception as exc:
            self._store_failed(exc)
            return False
        try:
            if self._reading is None and not self._open_file(store):
                return spooled
        except Exception as exc:  # reading the saved position failed: the store went away
            self._store_failed(exc)
            return False
        batch = self._read_chunk()
        if batch is None:
            return spooled
        self._pending = batch
        try:
            self._write(batch)
        except Exception as exc:
            self._store_failed(exc)
            return False
        self._pending = None
        return True

    def _open_store(self) -> TrackingStore:
        if self._store is None:
            store = self.opener(self.store_url)
            try:
                store.migrate()
                opened = store.open_queue_ids(self.node)
            except Exception:
                store.close()
                raise
            self._store = store
            self._users.update(opened.users)
            self._mark = opened.mark
            self._next_refresh = self.clock() + REFRESH_SECONDS
            if self._retry > RETRY_SECONDS:
                log.info("tracking_store_available", store=_without_password(self.store_url))
            self._retry = RETRY_SECONDS
        return self._store

    def _store_failed(self, exc: Exception) -> None:
        self.metrics.store_errors.inc()
        log.warning(
            "tracking_store_unavailable",
            store=_without_password(self.store_url),
            reason=str(exc)[:500],
            retry_in=self._retry,
        )
        if self._store is not None:
            try:
                self._store.close()
            except Exception:
                pass
            self._store = None
        self._next_try = self.clock() + self._retry
        self._retry = min(self._retry * 2, MAX_RETRY_SECONDS)

    def _housekeeping(self, store: TrackingStore, now: float) -> None:
        if now >= self._next_refresh:
            self._next_refresh = now + REFRESH_SECONDS
            fresh = store.open_queue_ids(self.node, after=self._mark)
            self._mark = fresh.mark
            for qid, user in fresh.users.items():
                if qid not in self._finished:  # the refresh looks a few rows back: not the done ones again
                    self._want(qid, user)
            while self._removed:
                qid, deadline = next(iter(self._removed.items()))
                if deadline > now:
                    break
                del self._removed[qid]
                self._users.pop(qid, None)
                self._finished[qid] = None
                if len(self._finished) > MAX_FINISHED:
                    del self._finished[next(iter(self._finished))]
        if now >= self._next_duties:
            self._next_duties = now + DUTY_SECONDS
            self._duties(store)
        retention_days = self._tuning.retention_days
        if retention_days is not None and now >= self._next_prune:
            self._next_prune = now + PRUNE_SECONDS
            before = datetime.fromtimestamp(self.wall(), UTC) - timedelta(days=retention_days)
            pruned = store.prune(before, batch=PRUNE_BATCH)
            log.info("tracking_pruned", messages=pruned, before=before.isoformat())

    def _duties(self, store: TrackingStore) -> None:
        """Send due notices and refresh the suppression snapshot; failures wait for the next turn."""
        moment = datetime.fromtimestamp(self.wall(), UTC)
        if self.snapshot is not None:
            entries = ((e.address, e.scope, e.reason, e.created) for e in store.suppressions(now=moment))
            if self.snapshot.update(entries, moment):
                log.info("suppression_snapshot_written", path=str(self.snapshot.path))
        self._count_complaints(store)
        notifier = self._tuning.notifier
        if notifier is not None:
            try:
                notifier.run_once(store)
            except Exception as exc:  # the notices stay in the outbox: nothing is lost
                log.warning("notifications_not_sent", reason=f"{type(exc).__name__}: {str(exc)[:300]}")

    def _count_complaints(self, store: TrackingStore) -> None:
        """``smtpplus_complaints_total``: ingest records complaints in the store (it is a short-lived
        process), so this process counts them, per user, for this node's messages. The counts at
        start are the baseline: only complaints recorded while the follower runs are counted.
        ``smtpplus_unsubscribes_total{list,source="mailto"}`` the same way (ingest records those too)."""
        counts = store.report_counts(self.node, "complaint")
        if self._complaints is not None:
            for user, count in counts.items():
                grown = count - self._complaints.get(user, 0)
                if grown > 0:
                    self.metrics.complaints.labels(user=user).inc(grown)
        self._complaints = counts
        unsubscribes = store.report_counts_by_list(self.node, "unsubscribe", "mailto")
        if self._unsubscribes is not None:
            for name, count in unsubscribes.items():
                grown = count - self._unsubscribes.get(name, 0)
                if grown > 0:
                    self.metrics.unsubscribes.labels(list=name, source="mailto").inc(grown)
        self._unsubscribes = unsubscribes

    # -- the milter's spool --------------------------------------------------------------------------

    def _drain_spool(self, store: TrackingStore, now: float) -> bool:
        """Hand up to :data:`SPOOL_BATCH` of the milter's records to the store; True if there were any."""
        if self.spool is None or now < self._next_spool:
            return False
        try:
            batch = self.spool.read(limit=SPOOL_BATCH)
        except SpoolProblem as exc:
            log.error("tracking_spool_unreadable", reason=str(exc), retry_in=SPOOL_RETRY_SECONDS)
            self._next_spool = now + SPOOL_RETRY_SECONDS
            return False
        skipped = list(batch.skipped)
        records: list[MessageRecord] = []
        for item in batch.records:
            try:
                records.append(MessageRecord.from_dict(item))
            except (KeyError, TypeError, ValueError, AssertionError) as exc:
                skipped.append(f"a line that is no message record ({type(exc).__name__}: {str(exc)[:100]})")
        after_gap = bool(records) and (self._spool_seen is None or now - self._spool_seen >= SPOOL_GAP_SECONDS)
        if after_gap:
            log.info("tracking_spool_records_found", records=len(records), first_queue_id=records[0].queue_id)
        if records:
            # An outcome the log told before the record came gets its rules and notices now.
            tuning = self._tuning
            store.record_messages(records, tuning.policy, tuning.on_outcome)  # a failure: back-off, read again
        if batch.end != self.spool.mark:
            self.spool.mark_done(batch.end)  # only now: a crash before this reads them again
        for reason in skipped:  # counted once, when the mark has moved past them
            log.warning("tracking_spool_line_skipped", spool=str(self.spool.directory), detail=reason)
            self.metrics.spool_skipped.inc()
        if not records:
            return False
        if after_gap:
            log.info("tracking_spool_records_stored", records=len(records))
        self._spool_seen = now
        for record in records:
            if record.node == self.node:
                self._want(record.queue_id, record.user)
        if len(records) < SPOOL_BATCH:
            self.metrics.tracking_spooled.set(0)  # every complete record is in the store now
        return True

    def _count_spool(self, now: float) -> None:
        if self.spool is None or now < self._next_count:
            return
        self._next_count = now + SPOOL_COUNT_SECONDS
        try:
            self.metrics.tracking_spooled.set(self.spool.count())
        except SpoolProblem as exc:
            log.warning("tracking_spool_uncounted", reason=str(exc))

    def _want(self, qid: str, user: str) -> None:
        if qid not in self._users and len(self._users) >= MAX_WANTED:
            oldest = next(iter(self._users))
            del self._users[oldest]
            self._removed.pop(oldest, None)
        self._users[qid] = user

    # -- the file ------------------------------------------------------------------------------------

    def _open_file(self, store: TrackingStore) -> bool:
        saved = store.position(self.node)  # first: a store failing here leaves no file open
        try:
            handle: BinaryIO = open(self.maillog, "rb", buffering=0)
        except FileNotFoundError:
            if not self._missing_said:
                log.warning("maillog_missing", maillog=str(self.maillog), detail="waiting for Postfix to create it")
                self._missing_said = True
            return False
        except OSError as exc:
            if not self._missing_said:
                log.error("maillog_unreadable", maillog=str(self.maillog), reason=exc.strerror)
                self._missing_said = True
            return False
        self._missing_said = False
        saved_id = FileId.parse(saved.file_id) if saved is not None else None
        start = 0
        if saved is not None and saved_id is not None:
            if saved_id.same_file(handle) and os.fstat(handle.fileno()).st_size >= saved.offset:
                start = saved.offset
            elif (older := self._rotated_copy(saved_id, saved.offset)) is not None:
                # Rotated while we were stopped: finish that file first; the switch happens at its end.
                handle.close()
                handle = older
                start = saved.offset
                log.info("maillog_finishing_rotated", offset=start)
            else:
                log.warning(
                    "maillog_position_lost",
                    maillog=str(self.maillog),
                    saved=saved.file_id,
                    offset=saved.offset,
                    detail="the saved file is gone or was truncated: reading the current file from its start",
                )
        self._start(handle, start)
        log.info("maillog_following", maillog=str(self.maillog), offset=start, watched=len(self._users))
        return True

    def _rotated_copy(self, saved: FileId, offset: int) -> BinaryIO | None:
        try:
            siblings = sorted(self.maillog.parent.iterdir())
        except OSError:
            return None
        for path in siblings:
            name = path.name
            if path == self.maillog or not name.startswith(self.maillog.name) or name.endswith(_COMPRESSED):
                continue
            try:
                handle: BinaryIO = open(path, "rb", buffering=0)
            except OSError:
                continue
            if saved.same_file(handle) and os.fstat(handle.fileno()).st_size >= offset:
                return handle
            handle.close()
        return None

    def _start(self, handle: BinaryIO, offset: int) -> None:
        if self._reading is not None and self._reading.handle is not handle:
            self._reading.handle.close()
        handle.seek(offset)
        self._reading = _Reading(handle, self.maillog, FileId.of(handle), LineSplitter(start=offset), offset)

    def _read_chunk(self) -> _Batch | None:
        """Read and parse one chunk; None when there is nothing new (after checking for rotation)."""
        reading = self._reading
        assert reading is not None
        data = reading.handle.read(self.chunk)
        if not data:
            self.metrics.lag.set(0)
            # A new or truncated file: read it now (its first read cannot switch again).
            return self._read_chunk() if self._check_file(reading) else None
        reading.read_to += len(data)
        lines = reading.splitter.feed(data)
        batch = self._parse(lines)
        if reading.file_id.length < FINGERPRINT_BYTES:
            reading.file_id = FileId.of(reading.handle)
        batch.position = Position(self.node, str(reading.file_id), reading.splitter.offset)
        self.metrics.lines.inc(len(lines))
        if len(data) < self.chunk:
            self.metrics.lag.set(0)
        elif batch.last_at is not None:
            self.metrics.lag.set(max(0.0, self.wall() - batch.last_at.timestamp()))
        return batch

    def _check_file(self, reading: _Reading) -> bool:
        """At the end of the file: truncated in place, rewritten, or replaced by a new file? True: switched."""
        handle = reading.handle
        if os.fstat(handle.fileno()).st_size < reading.read_to or not reading.file_id.same_file(handle):
            log.info("maillog_truncated", maillog=str(self.maillog), offset=reading.read_to)
            self._start(handle, 0)
            return True
        try:
            info = os.stat(self.maillog)
        except FileNotFoundError:
            return False  # renamed away, the new one not created yet: keep reading the old one
        current = os.fstat(handle.fileno())
        if (info.st_dev, info.st_ino) == (current.st_dev, current.st_ino):
            return False
        # Rotated: this read found the old file's end, so everything in it is consumed; go on in the new one.
        try:
            new: BinaryIO = open(self.maillog, "rb", buffering=0)
        except OSError:
            return False
        log.info("maillog_rotated", maillog=str(self.maillog), old_offset=reading.read_to)
        self._start(new, 0)
        return True

    # -- lines to values -----------------------------------------------------------------------------

    def _parse(self, lines: list[Line]) -> _Batch:
        batch = _Batch()
        now = datetime.fromtimestamp(self.wall(), UTC)
        users = self._users
        for line in lines:
            text = line.text
            quick, rest = _quick_queue_id(text)
            if quick is None:
                continue
            if quick == "" or (quick in users and text.startswith(_EVENT_STARTS, rest)):
                # A watched id's event line (parse_line checks the header and the id itself).
                events = parse_line(text, now=now, zone=self.zone, wanted=users)
                if events:
                    qid = events[0].queue_id
                    self._events(batch, qid, users[qid], events)
                    continue
            # Most lines of a busy host end here, without a regular expression: another queue id,
            # or a line of a watched one that holds no event (cleanup, smtpd, qmgr's own).
            if "sasl_username=" in text and (m := _SASL.search(text)) is not None:
                qid = m.group(1)
                if qid not in users and peek_queue_id(text) == qid:
                    self._want(qid, m.group(2))
        return batch

    def _events(self, batch: _Batch, qid: str, user: str, events: tuple[object, ...]) -> None:
        for index, event in enumerate(events):
            if isinstance(event, Delivery):
                batch.last_at = event.at
                follows = events[index + 1] if index + 1 < len(events) else None
                if isinstance(follows, Link) and follows.kind == "queued_as" and is_local_relay(follows.relay):
                    continue  # a hand-off to the content filter: the link below, not a delivery
                batch.attempts.append(
                    Attempt(
                        self.node,
                        qid,
                        event.recipient,
                        event.at.astimezone(UTC),
                        event.status,
                        event.dsn,
                        event.relay,
                        event.delay,
                        event.reply[:MAX_REPLY_CHARS],
                        classify(event.status, event.dsn),
                    )
                )
                batch.users.append(user)
            elif isinstance(event, Link):
                batch.last_at = event.at
                if event.kind == "queued_as":
                    if is_local_relay(event.relay):
                        batch.links.append(StoredLink(self.node, qid, event.new_queue_id, "queued_as"))
                        self._want(event.new_queue_id, user)
                elif event.kind in _NOTIFICATION_KINDS:
                    batch.links.append(StoredLink(self.node, qid, event.new_queue_id, "notification"))
            elif isinstance(event, Expired):
                batch.last_at = event.at
                batch.expirations.append(Expiration(self.node, qid, event.at.astimezone(UTC)))
                batch.expiring_users.add(user)
            elif isinstance(event, Removed):
                batch.last_at = event.at
                self._removed.pop(qid, None)
                self._removed[qid] = self.clock() + REMOVED_GRACE_SECONDS

    def _write(self, batch: _Batch) -> None:
        assert self._store is not None
        tuning = self._tuning  # once: the whole transaction uses one reload's settings
        result = self._store.record_attempts(
            batch.attempts,
            batch.position,
            batch.links,
            batch.expirations,
            policy=tuning.policy,
            on_outcome=tuning.on_outcome,
        )
        replayed = result.replayed
        if replayed < len(batch.attempts) or not batch.attempts:
            # A batch re-read after a crash is mostly replays: count only a batch that is mostly new.
            for attempt, user in zip(batch.attempts, batch.users, strict=True):
                self.metrics.deliveries.labels(user=user, status=attempt.status).inc()
                if attempt.status == "bounced" and attempt.failure_class is not None:
                    self.metrics.bounces.labels(user=user, type=attempt.failure_class).inc()
        expired = result.new - (len(batch.attempts) - replayed)
        if expired > 0:
            user = next(iter(batch.expiring_users)) if len(batch.expiring_users) == 1 else UNKNOWN_USER
            self.metrics.deliveries.labels(user=user, status="expired").inc(expired)


class Reloader:
    """SIGHUP for the follower: read the config file again and hand the new :class:`Tuning` over.

    *config*: the config the follower was started with (its path is read again, its
    ``tracking`` values are what :func:`restart_keys` compares with: they stay in force until a
    restart, however many reloads come). *load*: reads a config file (raises ConfigError); *tune*:
    the :class:`Tuning` of a loaded config. Returns whether the new settings are in use.
    """

    def __init__(
        self,
        follower: Follower,
        config: Config,
        load: Callable[[Path], Config],
        tune: Callable[[Config], Tuning],
    ) -> None:
        assert config.tracking is not None, "the follower runs only with a tracking: section"
        self.follower = follower
        self.path = config.path
        self.running = config.tracking
        self._load = load
        self._tune = tune
        self._lock = threading.Lock()  # two quick SIGHUPs: one reload after the other

    def __call__(self) -> bool:
        with self._lock:
            try:
                new = self._load(self.path)
            except ConfigError as exc:
                self._failed([str(problem) for problem in exc.problems])
                return False
            if new.tracking is None:
                gone = f"{self.path}: tracking: the section is gone; the follower needs it (stop the follower instead)"
                self._failed([gone])
                return False
            changed = restart_keys(self.running, new.tracking)
            if changed:
                log.warning(
                    "config_reload_needs_restart",
                    config=str(self.path),
                    keys=list(changed),
                    detail=f"{RESTART_HINT}; until then the running values stay in use",
                )
            tuning = self._tune(new)
            self.follower.reconfigure(tuning)
            log.info(
                "config_reloaded",
                config=str(self.path),
                suppress_hard_days=tuning.policy.hard_days if tuning.policy else None,
                soft_limit=tuning.policy.soft_limit if tuning.policy else None,
                notifier=tuning.notifier is not None,
                retention_days=tuning.retention_days,
            )
            return True

    def _failed(self, problems: Sequence[str]) -> None:
        log.error("config_reload_failed", config=str(self.path), problems=list(problems), kept="previous config")


class FollowerService:
    """:class:`Follower` as a :class:`smtpplus_milter.daemon.Service` (``smtpplus-milter follow``).

    *reload*: what SIGHUP runs (a :class:`Reloader`); None: SIGHUP is logged and ignored.
    """

    def __init__(
        self, follower: Follower, details: Mapping[str, object], reload: Callable[[], object] | None = None
    ) -> None:
        self.follower = follower
        self._details = details
        self._reload = reload

    def serve(self) -> None:
        self.follower.serve()

    def stop(self) -> None:
        self.follower.stop()

    def reload(self) -> None:
        if self._reload is None:
            log.info("reload_ignored", reason="this follower was started without a config file to read again")
            return
        try:
            self._reload()
        except Exception:  # a reload that fails must not end the process; the old settings stay
            log.exception("config_reload_failed", kept="previous config")

    def busy(self) -> int:
        return 0

    def close(self) -> None:
        self.follower.close()

    def details(self) -> Mapping[str, object]:
        return self._details


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    return f"{scheme}://{credentials.partition(':')[0]}@{host}"
