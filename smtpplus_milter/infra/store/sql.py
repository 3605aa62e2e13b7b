"""What both SQL backends share: the statements, the state bookkeeping and the migrations runner.

A backend gives a transaction (a cursor whose changes commit together or not at all), a read cursor,
a streaming read, its dialect's few differences (placeholders, the day of a time) and the folder of
its migrations. Statements here are written with ``?`` placeholders; a backend may rewrite them.
"""

from __future__ import annotations

import abc
import contextlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from importlib import resources
from types import MappingProxyType
from typing import Any, Protocol

from smtpplus_milter.core.failures import classify
from smtpplus_milter.core.suppression import (
    BOUNCE_REASONS,
    REASONS,
    LiftBounces,
    Policy,
    Streak,
    Suppress,
    after_outcome,
)
from smtpplus_milter.core.tracking import MessageRecord
from smtpplus_milter.infra.store.base import (
    FINAL_STATES,
    FOLLOWER,
    STATS_BY,
    Attempt,
    Claimed,
    Contact,
    Expiration,
    MessageFilter,
    Notification,
    OnOutcome,
    OpenMessages,
    Outcome,
    Position,
    RecipientStory,
    RecordResult,
    Report,
    StoredLink,
    StoredMessage,
    StoreProblem,
    Suppression,
    TrackingStore,
    Unsubscribe,
    day_of,
    domain_of,
    epoch,
    from_epoch,
    next_state,
)

# A chain of queue-id changes longer than this is a loop or garbage, not Postfix.
MAX_LINK_DEPTH = 16
# open_queue_ids(after=mark) looks this many rows back: on PostgreSQL concurrent writers may commit
# identity values out of order, so a row numbered just below the mark can appear after it was taken.
MARK_OVERLAP = 256
# The reply of the attempt an expiration adds (Postfix's own line names no recipient and no reply).
EXPIRED_REPLY = "expired in the queue (returned to sender)"
# The column of messages that counts recipients in each state (queued is rcpt_total minus the rest).
COUNTERS: Mapping[str, str] = MappingProxyType(
    {
        "delivered": "rcpt_delivered",
        "deferred": "rcpt_deferred",
        "bounced": "rcpt_bounced",
        "expired": "rcpt_expired",
        "suppressed": "rcpt_suppressed",
    }
)
# What a record inserts into messages (rcpt_total too: the counters of queued recipients need no update).
MESSAGE_INSERT_COLUMNS = (
    "node",
    "queue_id",
    "username",
    "list_name",
    "envelope_from",
    "header_from",
    "subject",
    "message_id",
    "size",
    "priority",
    "queue",
    "accepted_at",
    "day",
    "rcpt_total",
)
# Rows per multi-row INSERT of messages (14 values each): under SQLite's oldest limit of 999 variables.
INSERT_ROWS = 64
# Values per IN (...) list of a batch's look-ups, for the same reason.
IN_VALUES = 500
_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
GROUP_COLUMNS: Mapping[str, str] = MappingProxyType(
    {"subject": "subject", "sender": "header_from", "user": "username", "list": "list_name"}
)
_MESSAGE_COLUMNS = (
    "id, node, queue_id, username, list_name, envelope_from, header_from, subject, message_id, size, priority,"
    " queue, accepted_at, complaints, unsubscribes"
)
_STATS_SUMS = (
    "COUNT(*), SUM(rcpt_total), SUM(rcpt_delivered), SUM(rcpt_deferred), SUM(rcpt_bounced), SUM(rcpt_expired),"
    " SUM(rcpt_suppressed), SUM(complaints), SUM(unsubscribes)"
)


class Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def executemany(self, sql: str, params: Iterable[Sequence[Any]], /) -> Any: ...


class SqlStore(TrackingStore):
    dialect: str  # the folder of migrations/ to apply
    url: str  # what open_store() was given (a PostgreSQL URL may hold a password: never log it as is)

    # -- what a backend provides -------------------------------------------------------------------

    @abc.abstractmethod
    def _transaction(self) -> contextlib.AbstractContextManager[Cursor]:
        """A cursor in a write transaction: commits on normal exit, rolls back on an exception."""

    @abc.abstractmethod
    def _reading(self) -> contextlib.AbstractContextManager[Cursor]:
        """A cursor for reads."""

    @abc.abstractmethod
    def _stream(self, sql: str, params: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        """The rows of a query, fetched as they are consumed."""

    def _lock_migrations(self, cur: Cursor) -> None:
        """Serialise concurrent ``migrate`` runs (a write transaction may already do it)."""

    # -- migrations --------------------------------------------------------------------------------

    def migrations(self) -> tuple[tuple[int, str, str], ...]:
        """(version, file name, SQL) of this dialect's migrations, in order."""
        folder = resources.files("smtpplus_milter.infra.store").joinpath("migrations", self.dialect)
        found = []
        for entry in folder.iterdir():
            if match := _MIGRATION.match(entry.name):
                found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
        found.sort()
        versions = [version for version, _, _ in found]
        if versions != list(range(1, len(found) + 1)):
            raise StoreProblem(f"migrations/{self.dialect}: versions must be 1, 2, 3... without gaps, found {versions}")
        return tuple(found)

    def migrate(self) -> tuple[int, ...]:
        with self._transaction() as cur:
            # Under the lock too: PostgreSQL's CREATE TABLE IF NOT EXISTS is not safe against a
            # second process doing the same at the same moment (a unique violation in pg_type).
            self._lock_migrations(cur)
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_version"
                " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
            )
        applied: list[int] = []
        for version, name, script in self.migrations():
            # One transaction per migration: a failing one leaves the schema at the version before it.
            with self._transaction() as cur:
                self._lock_migrations(cur)
                cur.execute("SELECT 1 FROM schema_version WHERE version = ?", (version,))
                if cur.fetchone() is not None:
                    continue
                for statement in _statements(script):
                    cur.execute(statement)
                cur.execute(
                    "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, datetime.now().timestamp()),
                )
                applied.append(version)
        return tuple(applied)

    def schema_version(self) -> int:
        with self._reading() as cur:
            cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            return int(cur.fetchone()[0])

    # -- writes ------------------------------------------------------------------------------------

    def record_messages(
        self, records: Iterable[MessageRecord], policy: Policy | None = None, on_outcome: OnOutcome | None = None
    ) -> RecordResult:
        # One transaction and a handful of statements per batch, not ~6 per record: the milter's
        # writer thread shares the process (and the GIL) with the mail path, so every statement
        # it saves is CPU the mail path gets back. Same rows as recording the records one by one.
        unique: dict[tuple[str, str], MessageRecord] = {}
        replayed = 0
        for rec in records:
            if (rec.node, rec.queue_id) in unique:
                replayed += 1  # the same message twice in one batch: the second is a replay
            else:
                unique[(rec.node, rec.queue_id)] = rec
        if not unique:
            return RecordResult(new=0, replayed=replayed)
        with self._transaction() as cur:
            ids = self._insert_messages(cur, tuple(unique.values()))
            effects = _Effects(policy, on_outcome) if policy or on_outcome else None
            self._add_recipients(cur, tuple((ids[key], rec) for key, rec in unique.items() if key in ids), effects)
        return RecordResult(new=len(ids), replayed=replayed + len(unique) - len(ids))

    def _insert_messages(self, cur: Cursor, records: Sequence[MessageRecord]) -> dict[tuple[str, str], int]:
        """Insert the messages not yet stored; the ids of those inserted, by (node, queue_id)."""
        ids: dict[tuple[str, str], int] = {}
        for start in range(0, len(records), INSERT_ROWS):
            chunk = records[start : start + INSERT_ROWS]
            rows = ", ".join(f"({', '.join('?' for _ in MESSAGE_INSERT_COLUMNS)})" for _ in chunk)
            # RETURNING names its rows: their order is not promised, and replays return none.
            cur.execute(
                f"INSERT INTO messages ({', '.join(MESSAGE_INSERT_COLUMNS)}) VALUES {rows}"
                " ON CONFLICT (node, queue_id) DO NOTHING RETURNING id, node, queue_id",
                [value for rec in chunk for value in message_row(rec)],
            )
            for message, node, queue_id in cur.fetchall():
                ids[(node, queue_id)] = int(message)
        return ids

    def _insert_recipients(self, cur: Cursor, rows: Sequence[tuple[int, str, str, str]]) -> None:
        """(message, address, domain, state) rows."""
        cur.executemany("INSERT INTO recipients (message, address, domain, state) VALUES (?, ?, ?, ?)", rows)

    def _in_list(self, column: str, values: Sequence[str]) -> tuple[str, list[Any]]:
        """``column`` is one of ``values``: the SQL and its parameters (at most :data:`IN_VALUES`)."""
        return f"{column} IN ({', '.join('?' for _ in values)})", list(values)

    def _add_recipients(
        self, cur: Cursor, new: Sequence[tuple[int, MessageRecord]], effects: _Effects | None = None
    ) -> None:
        """The recipients rows, the recipients database and the counters of newly inserted messages.

        The follower may read a recipient's outcome from Postfix's log before the milter's record
        of the message reaches the store (a refusal on loopback takes milliseconds, the milter's
        spool is written every 100 ms): the attempt then waited in its table. Its state is folded in
        here, and a final one gets the same *effects* (suppression rules, notices) as if the
        attempt had come after the record.
        """
        if not new:
            return
        earlier = self._earlier_attempts(cur, tuple(rec for _, rec in new))
        recipients: list[tuple[int, str, str, str]] = []
        contacts: list[tuple[str, str, float, float, str]] = []
        decided: list[tuple[int, MessageRecord, str, str, int]] = []  # (message, record, address, state, attempt)
        for message, rec in new:
            counts: dict[str, int] = {}
            accepted = epoch(rec.accepted_at)
            for address in _addresses(rec):
                story = earlier.get((rec.node, rec.queue_id, address), ())
                state, deciding = _fold_with_cause(story)
                if effects is not None and state in FINAL_STATES and deciding is not None:
                    decided.append((message, rec, address, state, deciding))
                counts[state] = counts.get(state, 0) + 1
                recipients.append((message, address, domain_of(address), state))
                contacts.append((rec.user, address, accepted, accepted, state))
            # rcpt_total went in with the message; only states other than queued need counting.
            if changes := [(COUNTERS[state], n) for state, n in counts.items() if state in COUNTERS]:
                cur.execute(
                    f"UPDATE messages SET {', '.join(f'{column} = ?' for column, _ in changes)} WHERE id = ?",
                    (*(n for _, n in changes), message),
                )
        self._insert_recipients(cur, recipients)
        # Sorted by (user, address): concurrent writers then lock the same contacts rows in the same
        # order (no deadlock). The sort is stable, so one address twice in a batch is applied in the
        # records' order, as one by one (the state of the later message wins a tie on the time).
        contacts.sort(key=lambda row: (row[0], row[1]))
        cur.executemany(
            "INSERT INTO contacts (username, address, first_sent, last_sent, messages, state)"
            " VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT (username, address) DO UPDATE SET"
            " messages = contacts.messages + 1,"
            f" first_sent = {self._least('contacts.first_sent', 'excluded.first_sent')},"
            f" last_sent = {self._greatest('contacts.last_sent', 'excluded.last_sent')},"
            " state = CASE WHEN excluded.last_sent >= contacts.last_sent THEN excluded.state"
            " ELSE contacts.state END",
            contacts,
        )
        for message, rec, address, state, attempt_id in decided:
            assert effects is not None
            attempt = self._attempt(cur, attempt_id)
            self._apply_effects(cur, rec.node, message, rec.user, address, state, attempt, effects)

    def _earlier_attempts(
        self, cur: Cursor, records: Sequence[MessageRecord]
    ) -> dict[tuple[str, str, str], list[tuple[str, int]]]:
        """(status, attempt id) the follower recorded before these records arrived, by (node, queue id,
        recipient), in the order they happened.

        An attempt on a queue id that continues a record's (queued_as links) counts for that record.
        Two look-ups per node for the whole batch (the links, the attempts); usually both find nothing.
        """
        found: dict[tuple[str, str, str], list[tuple[float, int, str]]] = {}
        by_node: dict[str, list[str]] = {}
        for rec in records:
            by_node.setdefault(rec.node, []).append(rec.queue_id)
        for node, roots in by_node.items():
            # The links below the batch's queue ids, level by level (one query per level).
            children: dict[str, list[str]] = {}
            seen = set(roots)
            frontier = list(seen)
            for _ in range(MAX_LINK_DEPTH):
                if not frontier:
                    break
                rows: list[tuple[str, str]] = []
                for part in _chunks(frontier):
                    among, values = self._in_list("queue_id", part)
                    cur.execute(
                        f"SELECT queue_id, new_queue_id FROM links WHERE node = ? AND kind = 'queued_as' AND {among}",
                        (node, *values),
                    )
                    rows += cur.fetchall()
                frontier = []
                for parent, child in rows:
                    children.setdefault(parent, []).append(child)
                    if child not in seen:
                        seen.add(child)
                        frontier.append(child)
            # owners: every queue id of the chains -> the record queue ids whose story it continues.
            owners: dict[str, list[str]] = {}
            for root in roots:
                for queue_id in _chain(root, children):
                    owners.setdefault(queue_id, []).append(root)
            for part in _chunks(list(owners)):
                among, values = self._in_list("queue_id", part)
                cur.execute(
                    f"SELECT queue_id, recipient, status, at, id FROM attempts WHERE node = ? AND {among}",
                    (node, *values),
                )
                for queue_id, recipient, status, at, attempt_id in cur.fetchall():
                    for root in owners[queue_id]:
                        found.setdefault((node, root, recipient), []).append((at, attempt_id, status))
        # In the order they happened (the chunks' results were gathered unordered).
        return {key: [(status, attempt) for _, attempt, status in sorted(rows)] for key, rows in found.items()}

    def _concat(self, a: str, b: str) -> str:
        """Two text values joined (both dialects spell it ||)."""
        return f"({a} || {b})"

    def _least(self, a: str, b: str) -> str:
        """The smaller of two values (SQLite spells it MIN(a, b))."""
        return f"LEAST({a}, {b})"

    def _greatest(self, a: str, b: str) -> str:
        return f"GREATEST({a}, {b})"

    def record_attempts(
        self,
        attempts: Iterable[Attempt],
        position: Position | None,
        links: Iterable[StoredLink] = (),
        expirations: Iterable[Expiration] = (),
        policy: Policy | None = None,
        on_outcome: OnOutcome | None = None,
        late: bool = False,
    ) -> RecordResult:
        effects = _Effects(policy, on_outcome, late) if policy or on_outcome or late else None
        new = replayed = 0
        with self._transaction() as cur:
            for link in links:
                self._insert_link(cur, link)
            for attempt in attempts:
                if self._insert_attempt(cur, attempt, effects):
                    new += 1
                else:
                    replayed += 1
            for expiration in expirations:
                new += self._expire(cur, expiration, effects)
            if position is not None:
                self._write_position(cur, position)
        return RecordResult(new=new, replayed=replayed)

    def _insert_attempt(self, cur: Cursor, attempt: Attempt, effects: _Effects | None = None) -> bool:
        """Insert one attempt and move its recipient's state; False when the store had it (a replay)."""
        recipient = attempt.recipient.lower()
        cur.execute(
            "INSERT INTO attempts (node, queue_id, recipient, at, status, dsn, relay, delay, reply, class)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (node, queue_id, recipient, at, status, dsn) DO NOTHING RETURNING id",
            (
                attempt.node,
                attempt.queue_id,
                recipient,
                epoch(attempt.at),
                attempt.status,
                attempt.dsn or "",
                attempt.relay,
                attempt.delay,
                attempt.reply,
                attempt.failure_class,
            ),
        )
        if cur.fetchone() is None:
            return False
        self._advance(cur, attempt.node, attempt.queue_id, recipient, attempt, effects)
        return True

    def expire(self, node: str, queue_id: str, at: datetime) -> int:
        with self._transaction() as cur:
            return self._expire(cur, Expiration(node, queue_id, at))

    def _expire(self, cur: Cursor, expiration: Expiration, effects: _Effects | None = None) -> int:
        """One ``expired`` attempt (under the expired queue id) per recipient still queued or deferred."""
        node = expiration.node
        root = self._root(cur, node, expiration.queue_id)
        cur.execute(
            "SELECT r.address FROM recipients r JOIN messages m ON m.id = r.message"
            " WHERE m.node = ? AND m.queue_id = ? AND r.state IN ('queued', 'deferred') ORDER BY r.address",
            (node, root),
        )
        added = 0
        for (address,) in cur.fetchall():
            attempt = Attempt(
                node,
                expiration.queue_id,
                address,
                expiration.at,
                "expired",
                reply=EXPIRED_REPLY,
                failure_class=classify("expired", None),
            )
            added += self._insert_attempt(cur, attempt, effects)
        return added

    def open_queue_ids(self, node: str, after: int | None = None) -> OpenMessages:
        with self._reading() as cur:
            if after is None:
                final = " + ".join(COUNTERS[state] for state in ("delivered", "bounced", "expired", "suppressed"))
                cur.execute(
                    f"SELECT id, queue_id, username FROM messages WHERE node = ? AND rcpt_total > {final}", (node,)
                )
            else:
                cur.execute(
                    "SELECT id, queue_id, username FROM messages WHERE node = ? AND id > ?",
                    (node, after - MARK_OVERLAP),
                )
            rows = cur.fetchall()
            cur.execute("SELECT COALESCE(MAX(id), 0) FROM messages")
            mark = max(int(cur.fetchone()[0]), after or 0)
            users: dict[str, str] = {}
            for _, queue_id, user in rows:
                # A message recorded since the last look has rarely been re-injected yet: one query
                # per row only for the start-up load.
                for qid in self._descendants(cur, node, queue_id) if after is None else (queue_id,):
                    users[qid] = user
        return OpenMessages(users, mark)

    def _advance(
        self, cur: Cursor, node: str, queue_id: str, address: str, attempt: Attempt, effects: _Effects | None = None
    ) -> None:
        """Move the recipient ``address`` of the message ``queue_id`` belongs to (see :meth:`_root`)."""
        # One statement for the usual cases: the message's own id, or one queued_as link away.
        cur.execute(
            "SELECT r.message, r.state, m.username, m.accepted_at FROM recipients r"
            " JOIN messages m ON m.id = r.message WHERE m.node = ? AND r.address = ? AND m.queue_id = COALESCE("
            "(SELECT l.queue_id FROM links l WHERE l.node = ? AND l.new_queue_id = ? AND l.kind = 'queued_as'), ?)",
            (node, address, node, queue_id, queue_id),
        )
        row = cur.fetchone()
        if row is None and (root := self._root(cur, node, queue_id)) != queue_id:
            # Two or more links away (two content filters): the whole chain.
            cur.execute(
                "SELECT r.message, r.state, m.username, m.accepted_at FROM recipients r"
                " JOIN messages m ON m.id = r.message WHERE m.node = ? AND m.queue_id = ? AND r.address = ?",
                (node, root, address),
            )
            row = cur.fetchone()
        if row is None:
            return  # not a tracked message (yet): the attempt waits in its table for the record
        message, old, user, accepted = row
        new = next_state(old, attempt.status)
        if effects is not None and effects.late and old == "delivered" and attempt.status == "bounced":
            new = "bounced"  # the receiver took the message, then sent a bounce report: it did not arrive
        if new == old:
            return
        cur.execute("UPDATE recipients SET state = ? WHERE message = ? AND address = ?", (new, message, address))
        changes = []
        if column := COUNTERS.get(old):
            changes.append(f"{column} = {column} - 1")
        if column := COUNTERS.get(new):
            changes.append(f"{column} = {column} + 1")
        cur.execute(f"UPDATE messages SET {', '.join(changes)} WHERE id = ?", (message,))
        # The recipients database keeps the state of the latest message sent to the address.
        cur.execute(
            "UPDATE contacts SET state = ? WHERE username = ? AND address = ? AND last_sent <= ?",
            (new, user, address, accepted),
        )
        if effects is not None and new in FINAL_STATES:
            self._apply_effects(cur, node, message, user, address, new, attempt, effects)

    def _apply_effects(
        self,
        cur: Cursor,
        node: str,
        message: int,
        user: str,
        address: str,
        state: str,
        attempt: Attempt,
        effects: _Effects,
    ) -> None:
        """What a recipient's final outcome also does, in its transaction: rules, then notices."""
        if effects.policy is not None:
            self._after_outcome(cur, node, user, address, attempt, effects.policy)
        if effects.on_outcome is not None:
            cur.execute(
                "SELECT queue_id, list_name, envelope_from, subject, message_id FROM messages WHERE id = ?",
                (message,),
            )
            root, list_name, envelope_from, subject, message_id = cur.fetchone()
            outcome = Outcome(node, root, user, list_name, envelope_from, subject, message_id, address, state, attempt)
            self._enqueue(cur, effects.on_outcome(outcome))

    def _attempt(self, cur: Cursor, attempt_id: int) -> Attempt:
        cur.execute(
            "SELECT node, queue_id, recipient, at, status, dsn, relay, delay, reply, class FROM attempts WHERE id = ?",
            (attempt_id,),
        )
        node, qid, recipient, at, status, dsn, relay, delay, reply, cls = cur.fetchone()
        return Attempt(node, qid, recipient, from_epoch(at), status, dsn or None, relay, delay, reply, cls)

    def _after_outcome(self, cur: Cursor, node: str, user: str, address: str, attempt: Attempt, policy: Policy) -> None:
        """Apply core/suppression.py's rules to the recipient's final outcome (once per message)."""
        cur.execute("SELECT soft_streak, soft_since FROM contacts WHERE username = ? AND address = ?", (user, address))
        row = cur.fetchone()
        streak = Streak(int(row[0]), from_epoch(row[1]) if row[1] is not None else None) if row else Streak()
        grown, action = after_outcome(attempt.status, attempt.failure_class, streak, attempt.at, policy)
        if grown != streak:
            cur.execute(
                "UPDATE contacts SET soft_streak = ?, soft_since = ? WHERE username = ? AND address = ?",
                (grown.count, epoch(grown.since) if grown.since else None, user, address),
            )
        scope = f"user:{user}"
        if isinstance(action, Suppress):
            entry = Suppression(
                scope, address, action.reason, attempt.at, action.expires, node, attempt.queue_id, FOLLOWER
            )
            self._suppress(cur, entry)
        elif isinstance(action, LiftBounces):
            marks = ", ".join("?" for _ in BOUNCE_REASONS)
            cur.execute(
                f"DELETE FROM suppressions WHERE scope = ? AND address = ? AND reason IN ({marks})",
                (scope, address, *sorted(BOUNCE_REASONS)),
            )

    # -- the notification outbox -------------------------------------------------------------------

    def _enqueue(self, cur: Cursor, notifications: Iterable[Notification]) -> int:
        added = 0
        for item in notifications:
            cur.execute(
                "INSERT INTO notifications (kind, mode, to_address, dedup, digest, payload, created, next_try)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (to_address, dedup) DO NOTHING RETURNING id",
                (
                    item.kind,
                    item.mode,
                    item.to.lower(),
                    item.dedup,
                    item.digest,
                    json.dumps(dict(item.payload), sort_keys=True),
                    epoch(item.created),
                    epoch(item.created),
                ),
            )
            added += cur.fetchone() is not None
        return added

    def enqueue(self, notifications: Iterable[Notification]) -> int:
        with self._transaction() as cur:
            return self._enqueue(cur, notifications)

    def _skip_locked(self) -> str:
        """How a claim skips rows another transaction holds (SQLite has one writer: nothing to say)."""
        return ""

    def claim(
        self,
        worker: str,
        now: datetime,
        lease: timedelta,
        limit: int,
        mode: str = "immediate",
        before: datetime | None = None,
    ) -> list[Claimed]:
        moment, until = epoch(now), epoch(now + lease)
        created = "" if before is None else " AND created < ?"
        with self._transaction() as cur:
            cur.execute(
                "UPDATE notifications SET claimed_by = ?, claimed_until = ?, tries = tries + 1 WHERE id IN ("
                "SELECT id FROM notifications WHERE sent_at IS NULL AND mode = ? AND next_try <= ?"
                f" AND (claimed_until IS NULL OR claimed_until <= ?){created} ORDER BY id LIMIT ?"
                f"{self._skip_locked()}) RETURNING id, kind, mode, to_address, dedup, digest, payload, created, tries",
                (worker, until, mode, moment, moment, *([] if before is None else [epoch(before)]), limit),
            )
            rows = cur.fetchall()
        claimed = [
            Claimed(
                int(row[0]),
                Notification(row[1], row[2], row[3], row[4], row[5], json.loads(row[6]), from_epoch(row[7])),
                int(row[8]),
                from_epoch(until),
            )
            for row in rows
        ]
        return sorted(claimed, key=lambda item: item.id)

    def sent(self, ids: Iterable[int], now: datetime) -> None:
        with self._transaction() as cur:
            cur.executemany(
                "UPDATE notifications SET sent_at = ?, claimed_until = NULL, last_error = NULL WHERE id = ?",
                [(epoch(now), notice) for notice in ids],
            )

    def failed(self, notice: int, error: str, retry_at: datetime) -> None:
        with self._transaction() as cur:
            cur.execute(
                "UPDATE notifications SET claimed_by = NULL, claimed_until = NULL, last_error = ?, next_try = ?"
                " WHERE id = ?",
                (error[:1000], epoch(retry_at), notice),
            )

    # -- complaints and unsubscribes ---------------------------------------------------------------

    def record_report(self, report: Report, suppression: Suppression | None, notices: Iterable[Notification]) -> bool:
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO reports (node, queue_id, recipient, kind, at, detail) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (node, queue_id, recipient, kind) DO NOTHING RETURNING kind",
                (report.node, report.queue_id, report.recipient.lower(), report.kind, epoch(report.at), report.detail),
            )
            if cur.fetchone() is None:
                return False  # read before (a retried delivery of the same report)
            column = "complaints" if report.kind == "complaint" else "unsubscribes"
            cur.execute(
                f"UPDATE messages SET {column} = {column} + 1 WHERE node = ? AND queue_id = ?",
                (report.node, report.queue_id),
            )
            if suppression is not None:
                self._suppress(cur, suppression)
            self._enqueue(cur, notices)
        return True

    def record_unsubscribe(
        self, item: Unsubscribe, notices: Callable[[Report | None], Iterable[Notification]] = lambda report: ()
    ) -> bool:
        with self._transaction() as cur:
            return self._record_unsubscribe(cur, item, notices)

    def _record_unsubscribe(
        self, cur: Cursor, item: Unsubscribe, notices: Callable[[Report | None], Iterable[Notification]]
    ) -> bool:
        scope, address = f"list:{item.list_name}", item.address.lower()
        cur.execute("SELECT reason FROM suppressions WHERE scope = ? AND address = ?", (scope, address))
        found = cur.fetchone()
        if found is not None and found[0] == "unsubscribe":
            return False  # a repeated POST, a second mailto: nothing changes
        # From the recipient's rows to their messages (CROSS JOIN keeps SQLite from starting at
        # the user's messages instead: 50 times slower with 2,000 of them, and growing).
        cur.execute(
            "SELECT m.node, m.queue_id FROM recipients r CROSS JOIN messages m"
            " WHERE m.id = r.message AND r.address = ? AND m.username = ? AND m.list_name = ?"
            " ORDER BY m.accepted_at DESC, m.id DESC LIMIT 1",
            (address, item.user, item.list_name),
        )
        row = cur.fetchone()
        node, queue_id = (str(row[0]), str(row[1])) if row else (None, None)
        entry = Suppression(scope, address, "unsubscribe", item.at, None, node, queue_id, item.created_by)
        self._suppress(cur, entry)
        report = None
        if node is not None and queue_id is not None:
            report = Report(node, queue_id, address, "unsubscribe", item.at, item.source)
            cur.execute(
                "INSERT INTO reports (node, queue_id, recipient, kind, at, detail) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (node, queue_id, recipient, kind) DO NOTHING RETURNING kind",
                (node, queue_id, address, "unsubscribe", epoch(item.at), item.source),
            )
            if cur.fetchone() is not None:
                cur.execute(
                    "UPDATE messages SET unsubscribes = unsubscribes + 1 WHERE node = ? AND queue_id = ?",
                    (node, queue_id),
                )
        self._enqueue(cur, notices(report))
        return True

    def report_counts(self, node: str, kind: str) -> dict[str, int]:
        with self._reading() as cur:
            cur.execute(
                "SELECT m.username, COUNT(*) FROM reports r JOIN messages m ON m.node = r.node AND"
                " m.queue_id = r.queue_id WHERE r.node = ? AND r.kind = ? GROUP BY m.username",
                (node, kind),
            )
            return {str(user): int(count) for user, count in cur.fetchall()}

    def report_counts_by_list(self, node: str, kind: str, detail: str) -> dict[str, int]:
        with self._reading() as cur:
            cur.execute(
                "SELECT m.list_name, COUNT(*) FROM reports r JOIN messages m ON m.node = r.node AND"
                " m.queue_id = r.queue_id WHERE r.node = ? AND r.kind = ? AND r.detail = ?"
                " AND m.list_name IS NOT NULL GROUP BY m.list_name",
                (node, kind, detail),
            )
            return {str(name): int(count) for name, count in cur.fetchall()}

    # -- the suppression list ----------------------------------------------------------------------

    def _suppress(self, cur: Cursor, entry: Suppression) -> bool:
        """Insert or refresh one entry; an entry a person or a complaint made is never replaced by a
        bounce (a bounce only refreshes another bounce). True when the list changed."""
        keep = ", ".join(f"'{reason}'" for reason in sorted(set(REASONS) - BOUNCE_REASONS))
        cur.execute(
            "INSERT INTO suppressions (scope, address, reason, created, expires, source_node, source_queue_id,"
            " created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (scope, address) DO UPDATE SET"
            " reason = excluded.reason, created = excluded.created, expires = excluded.expires,"
            " source_node = excluded.source_node, source_queue_id = excluded.source_queue_id,"
            " created_by = excluded.created_by"
            f" WHERE suppressions.reason NOT IN ({keep}) OR excluded.reason IN ({keep})"
            " RETURNING scope",
            (
                entry.scope,
                entry.address.lower(),
                entry.reason,
                epoch(entry.created),
                epoch(entry.expires) if entry.expires else None,
                entry.source_node,
                entry.source_queue_id,
                entry.created_by,
            ),
        )
        return cur.fetchone() is not None

    def suppress(self, entries: Iterable[Suppression]) -> int:
        with self._transaction() as cur:
            return sum(self._suppress(cur, entry) for entry in entries)

    def unsuppress(self, scope: str, address: str) -> bool:
        with self._transaction() as cur:
            cur.execute(
                "DELETE FROM suppressions WHERE scope = ? AND address = ? RETURNING scope", (scope, address.lower())
            )
            return cur.fetchone() is not None

    def suppressions(
        self, scope: str | None = None, now: datetime | None = None, address: str | None = None
    ) -> Iterator[Suppression]:
        where: list[str] = []
        params: list[Any] = []
        if scope is not None:
            where.append("scope = ?")
            params.append(scope)
        if address is not None:
            where.append("address = ?")
            params.append(address.lower())
        if now is not None:  # only entries still in force
            where.append("(expires IS NULL OR expires > ?)")
            params.append(epoch(now))
        sql = (
            "SELECT scope, address, reason, created, expires, source_node, source_queue_id, created_by"
            " FROM suppressions" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY scope, address"
        )
        for row in self._stream(sql, params):
            yield Suppression(
                row[0],
                row[1],
                row[2],
                from_epoch(row[3]),
                from_epoch(row[4]) if row[4] is not None else None,
                row[5],
                row[6],
                row[7],
            )

    def _write_position(self, cur: Cursor, position: Position) -> None:
        cur.execute(
            "INSERT INTO positions (node, file_id, byte_offset) VALUES (?, ?, ?) ON CONFLICT (node) DO UPDATE"
            " SET file_id = excluded.file_id, byte_offset = excluded.byte_offset",
            (position.node, position.file_id, position.offset),
        )

    def _insert_link(self, cur: Cursor, link: StoredLink) -> None:
        cur.execute(
            "INSERT INTO links (node, new_queue_id, queue_id, kind) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (node, new_queue_id) DO NOTHING",
            (link.node, link.new_queue_id, link.queue_id, link.kind),
        )

    def link(self, node: str, queue_id: str, new_queue_id: str, kind: str) -> None:
        link = StoredLink(node, queue_id, new_queue_id, kind)
        with self._transaction() as cur:
            self._insert_link(cur, link)
            # Attempts of the new id recorded before the link now belong to the original recipients.
            if kind == "queued_as":
                root = self._root(cur, node, queue_id)
                cur.execute(
                    "SELECT recipient, at, status, dsn FROM attempts WHERE node = ? AND queue_id = ? ORDER BY at, id",
                    (node, new_queue_id),
                )
                for recipient, at, status, dsn in cur.fetchall():
                    attempt = Attempt(node, new_queue_id, recipient, from_epoch(at), status, dsn or None)
                    self._advance(cur, node, root, recipient, attempt)

    def _root(self, cur: Cursor, node: str, queue_id: str) -> str:
        """The queue id whose recipients an attempt on ``queue_id`` belongs to (through queued_as links)."""
        for _ in range(MAX_LINK_DEPTH):
            cur.execute(
                "SELECT queue_id FROM links WHERE node = ? AND new_queue_id = ? AND kind = 'queued_as'",
                (node, queue_id),
            )
            row = cur.fetchone()
            if row is None:
                return queue_id
            queue_id = row[0]
        return queue_id

    def _descendants(self, cur: Cursor, node: str, queue_id: str) -> tuple[str, ...]:
        """``queue_id`` and every queue id that continues it (through queued_as links)."""
        found = [queue_id]
        frontier = [queue_id]
        for _ in range(MAX_LINK_DEPTH):
            if not frontier:
                break
            marks = ", ".join("?" for _ in frontier)
            cur.execute(
                f"SELECT new_queue_id FROM links WHERE node = ? AND kind = 'queued_as' AND queue_id IN ({marks})",
                (node, *frontier),
            )
            frontier = [row[0] for row in cur.fetchall() if row[0] not in found]
            found.extend(frontier)
        return tuple(found)

    def position(self, node: str) -> Position | None:
        with self._reading() as cur:
            cur.execute("SELECT file_id, byte_offset FROM positions WHERE node = ?", (node,))
            row = cur.fetchone()
        return None if row is None else Position(node, row[0], int(row[1]))

    # -- reads -------------------------------------------------------------------------------------

    def stats(
        self, by: str = "date", since: datetime | None = None, until: datetime | None = None, user: str | None = None
    ) -> Iterator[dict[str, object]]:
        if by not in STATS_BY:
            raise StoreProblem(f"stats by {by!r}: expected one of {', '.join(STATS_BY)}")
        where, params = _where_time("accepted_at", since, until)
        # The same bounds on the indexed day, so a range reads only its days of the index.
        if since is not None:
            where.append("day >= ?")
            params.append(day_of(since))
        if until is not None:
            where.append("day <= ?")
            params.append(day_of(until))
        if user is not None:
            where.append("username = ?")
            params.append(user)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        if by == "recipient_domain":
            # Per (domain, message) first, so each message's complaints count once per domain.
            sql = (
                "SELECT domain, COUNT(*), SUM(n), SUM(d), SUM(f), SUM(b), SUM(e), SUM(s), SUM(c), SUM(u) FROM"
                " (SELECT r.domain AS domain, COUNT(*) AS n,"
                " SUM(CASE WHEN r.state = 'delivered' THEN 1 ELSE 0 END) AS d,"
                " SUM(CASE WHEN r.state = 'deferred' THEN 1 ELSE 0 END) AS f,"
                " SUM(CASE WHEN r.state = 'bounced' THEN 1 ELSE 0 END) AS b,"
                " SUM(CASE WHEN r.state = 'expired' THEN 1 ELSE 0 END) AS e,"
                " SUM(CASE WHEN r.state = 'suppressed' THEN 1 ELSE 0 END) AS s,"
                " MAX(m.complaints) AS c, MAX(m.unsubscribes) AS u"
                f" FROM messages m JOIN recipients r ON r.message = m.id{clause}"
                " GROUP BY r.domain, m.id) per_message GROUP BY domain ORDER BY domain"
            )
        elif by == "date":
            sql = f"SELECT day, {_STATS_SUMS} FROM messages{clause} GROUP BY day ORDER BY day"
        else:
            column = GROUP_COLUMNS[by]
            sql = f"SELECT {column}, {_STATS_SUMS} FROM messages{clause} GROUP BY {column} ORDER BY {column}"
        for row in self._stream(sql, params):
            key: object = row[0]
            if by == "date":
                key = (date(1970, 1, 1) + timedelta(days=int(row[0]))).isoformat()
            yield {
                by: key,
                "messages": int(row[1]),
                "recipients": int(row[2] or 0),
                "delivered": int(row[3] or 0),
                "deferred": int(row[4] or 0),
                "bounced": int(row[5] or 0),
                "expired": int(row[6] or 0),
                "suppressed": int(row[7] or 0),
                "complaints": int(row[8] or 0),
                "unsubscribes": int(row[9] or 0),
            }

    def messages(self, filters: MessageFilter | None = None, limit: int | None = 100) -> Iterator[StoredMessage]:
        filters = filters or MessageFilter()
        where, params = _where_time("m.accepted_at", filters.since, filters.until)
        for column, value in (
            ("m.username", filters.user),
            ("m.message_id", filters.message_id),
            ("m.queue_id", filters.queue_id),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if filters.to is not None:
            # Driven from the recipients' address index: the few messages to that address, then sorted
            # (an EXISTS per message would walk every message newest first until the limit is full).
            where.append("m.id IN (SELECT r.message FROM recipients r WHERE r.address = ?)")
            params.append(filters.to.lower())
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        tail = ""
        if limit is not None:
            tail = " LIMIT ?"
            params.append(limit)
        sql = f"SELECT m.id FROM messages m{clause} ORDER BY m.accepted_at DESC, m.id DESC{tail}"
        for (message,) in self._stream(sql, params):
            found = self._load(int(message))
            if found is not None:
                yield found

    def message(self, queue_id: str, node: str | None = None) -> StoredMessage | None:
        with self._reading() as cur:
            for candidate in (queue_id, None):
                if candidate is None:
                    # Not a message's own id: perhaps an id it continued as.
                    cur.execute(
                        "SELECT node, queue_id FROM links WHERE new_queue_id = ?"
                        + (" AND node = ?" if node is not None else ""),
                        (queue_id, node) if node is not None else (queue_id,),
                    )
                    row = cur.fetchone()
                    if row is None:
                        return None
                    found_node, candidate = row[0], self._root(cur, row[0], row[1])
                else:
                    found_node = node
                cur.execute(
                    "SELECT id FROM messages WHERE queue_id = ?"
                    + (" AND node = ?" if found_node is not None else "")
                    + " ORDER BY accepted_at DESC LIMIT 1",
                    (candidate, found_node) if found_node is not None else (candidate,),
                )
                row = cur.fetchone()
                if row is not None:
                    message = int(row[0])
                    break
            else:
                return None
        return self._load(message)

    def _load(self, message: int) -> StoredMessage | None:
        with self._reading() as cur:
            cur.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message,))
            row = cur.fetchone()
            if row is None:
                return None
            node, queue_id = row[1], row[2]
            cur.execute("SELECT address, state FROM recipients WHERE message = ? ORDER BY address", (message,))
            states = cur.fetchall()
            chain = self._descendants(cur, node, queue_id)
            marks = ", ".join("?" for _ in chain)
            cur.execute(
                "SELECT queue_id, recipient, at, status, dsn, relay, delay, reply, class FROM attempts"
                f" WHERE node = ? AND queue_id IN ({marks}) ORDER BY at, id",
                (node, *chain),
            )
            attempts: dict[str, list[Attempt]] = {}
            for qid, recipient, at, status, dsn, relay, delay, reply, cls in cur.fetchall():
                attempts.setdefault(recipient, []).append(
                    Attempt(node, qid, recipient, from_epoch(at), status, dsn or None, relay, delay, reply, cls)
                )
        record = MessageRecord(
            node=node,
            queue_id=queue_id,
            user=row[3],
            list=row[4],
            envelope_from=row[5],
            header_from=row[6],
            subject=row[7] or "",
            message_id=row[8],
            size=int(row[9]),
            priority=int(row[10]),
            queue=row[11],
            accepted_at=from_epoch(row[12]),
            recipients=tuple(address for address, _ in states),
        )
        stories = tuple(RecipientStory(address, state, tuple(attempts.get(address, ()))) for address, state in states)
        return StoredMessage(record, stories, int(row[13]), int(row[14]))

    def recipients(
        self, user: str | None = None, state: str | None = None, limit: int | None = None, now: datetime | None = None
    ) -> Iterator[Contact]:
        # `suppressed`: the reason of an entry in force for the user or for everybody (a list's
        # entries depend on the list each message went out under, which a contact does not have).
        params: list[Any] = [] if now is None else [epoch(now)]
        in_force = "" if now is None else " AND (s.expires IS NULL OR s.expires > ?)"
        where: list[str] = []
        if user is not None:
            where.append("username = ?")
            params.append(user)
        if state is not None:
            where.append("state = ?")
            params.append(state)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        tail = ""
        if limit is not None:
            tail = " LIMIT ?"
            params.append(limit)
        user_scope = self._concat("'user:'", "contacts.username")
        sql = (
            "SELECT username, address, first_sent, last_sent, messages, state, (SELECT s.reason FROM suppressions s"
            f" WHERE s.address = contacts.address AND s.scope IN ({user_scope},"
            f" 'global'){in_force} ORDER BY s.scope DESC LIMIT 1)"
            f" FROM contacts{clause} ORDER BY last_sent DESC, username, address{tail}"
        )
        for row in self._stream(sql, params):
            yield Contact(row[0], row[1], from_epoch(row[2]), from_epoch(row[3]), int(row[4]), row[5], row[6])

    # -- retention ---------------------------------------------------------------------------------

    def prune(self, before: datetime, batch: int = 1000) -> int:
        cutoff = epoch(before)
        pruned = 0
        while True:
            # Small transactions: the milter and the follower keep writing while the old rows go.
            with self._transaction() as cur:
                cur.execute("SELECT id, node, queue_id FROM messages WHERE accepted_at < ? LIMIT ?", (cutoff, batch))
                rows = cur.fetchall()
                for message, node, queue_id in rows:
                    chain = self._descendants(cur, node, queue_id)
                    marks = ", ".join("?" for _ in chain)
                    cur.execute(f"DELETE FROM attempts WHERE node = ? AND queue_id IN ({marks})", (node, *chain))
                    cur.execute(f"DELETE FROM links WHERE node = ? AND queue_id IN ({marks})", (node, *chain))
                    cur.execute("DELETE FROM recipients WHERE message = ?", (message,))
                    cur.execute("DELETE FROM messages WHERE id = ?", (message,))
            pruned += len(rows)
            if len(rows) < batch:
                break
        while True:
            # Attempts of messages never recorded (not tracked) age out on their own time.
            with self._transaction() as cur:
                cur.execute(
                    "DELETE FROM attempts WHERE id IN (SELECT id FROM attempts WHERE at < ? LIMIT ?)", (cutoff, batch)
                )
                done = cur.rowcount if hasattr(cur, "rowcount") else 0
            if done < batch:
                break
        return pruned


def message_row(rec: MessageRecord) -> tuple[Any, ...]:
    """A record's values for :data:`MESSAGE_INSERT_COLUMNS`."""
    return (
        rec.node,
        rec.queue_id,
        rec.user,
        rec.list,
        rec.envelope_from,
        rec.header_from,
        rec.subject,
        rec.message_id,
        rec.size,
        rec.priority,
        rec.queue,
        epoch(rec.accepted_at),
        day_of(rec.accepted_at),
        len(_addresses(rec)),
    )


def _addresses(rec: MessageRecord) -> tuple[str, ...]:
    """A record's distinct recipients as stored (lower case), sorted."""
    return tuple(sorted({address.lower() for address in rec.recipients}))


def _chunks(values: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), IN_VALUES):
        yield values[start : start + IN_VALUES]


def _chain(root: str, children: Mapping[str, Sequence[str]]) -> list[str]:
    """``root`` and the queue ids that continue it, at most :data:`MAX_LINK_DEPTH` links down."""
    found = [root]
    frontier = [root]
    for _ in range(MAX_LINK_DEPTH):
        frontier = [child for queue_id in frontier for child in children.get(queue_id, ()) if child not in found]
        if not frontier:
            break
        found.extend(frontier)
    return found


def _where_time(column: str, since: datetime | None, until: datetime | None) -> tuple[list[str], list[Any]]:
    """``since`` inclusive, ``until`` exclusive."""
    where: list[str] = []
    params: list[Any] = []
    if since is not None:
        where.append(f"{column} >= ?")
        params.append(epoch(since))
    if until is not None:
        where.append(f"{column} < ?")
        params.append(epoch(until))
    return where, params


def _statements(script: str) -> Iterator[str]:
    """The statements of a migration file (our files keep ``;`` out of strings and comments)."""
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("--")]
    for statement in "\n".join(lines).split(";"):
        if statement.strip():
            yield statement.strip()


__all__ = ["MESSAGE_INSERT_COLUMNS", "Cursor", "SqlStore", "message_row"]


def _fold_with_cause(story: Sequence[tuple[str, int]]) -> tuple[str, int | None]:
    """The state after *story* ((status, attempt id) in order) and the attempt that last changed it."""
    state, cause = "queued", None
    for status, attempt in story:
        moved = next_state(state, status)
        if moved != state:
            state, cause = moved, attempt
    return state, cause


@dataclass(frozen=True, slots=True)
class _Effects:
    """What recording a final outcome also does: the suppression rules and the notices to enqueue."""

    policy: Policy | None
    on_outcome: OnOutcome | None
    late: bool = False  # an asynchronous bounce report: it may overturn "delivered"
