"""The fanout journal: which copies were already made (a SQLite file on this relay host).

One row per copy, keyed by (the original message's queue id, the recipient), with the queue id the
re-injection smtpd gave the copy and when. The filter writes the row, and SQLite has it on disk
(WAL with ``synchronous=FULL``: the commit returns after the fsync), before it answers Postfix
250; a delivery Postfix retries (the answer was lost, the filter died) then finds the row and is
answered with the same queue id without sending a second copy. The one window left: the filter
dies after the re-injection's 250 and before this commit; that recipient gets the copy twice.

Thread-safe: one connection guarded by a lock (a write is one short transaction; the fsync
dominates, and SQLite serialises writers anyway). Rows older than ``journal_days`` are pruned:
Postfix gives up on a message after ``maximal_queue_lifetime`` (5 days by default), so no retry
can come later than that.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS copies (
    queue_id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    new_queue_id TEXT,
    made_at TEXT NOT NULL,
    PRIMARY KEY (queue_id, recipient)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS copies_made_at ON copies (made_at);
"""


@dataclass(frozen=True)
class Made:
    """A copy the journal remembers; *new_queue_id* None: the re-injection's reply named none."""

    new_queue_id: str | None
    made_at: datetime


class JournalError(Exception):
    """The journal cannot be opened, read or written (the delivery is answered 451)."""


class FanoutJournal:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # check_same_thread=False: the worker threads share it under self._lock.
            self._db = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"fanout journal {path}: {exc}") from exc
        self._lock = threading.Lock()

    @staticmethod
    def _key(recipient: str) -> str:
        # Postfix may spell a recipient's case differently on a retry; the mailbox is the same.
        return recipient.lower()

    def find(self, queue_id: str, recipient: str) -> Made | None:
        try:
            with self._lock:
                row = self._db.execute(
                    "SELECT new_queue_id, made_at FROM copies WHERE queue_id = ? AND recipient = ?",
                    (queue_id, self._key(recipient)),
                ).fetchone()
        except sqlite3.Error as exc:
            raise JournalError(f"fanout journal {self.path}: {exc}") from exc
        return None if row is None else Made(row[0], datetime.fromisoformat(row[1]))

    def record(self, queue_id: str, recipient: str, new_queue_id: str | None, now: datetime) -> None:
        """Keep the copy; returns once it is on disk (WAL, synchronous=FULL)."""
        try:
            with self._lock:
                self._db.execute(
                    "INSERT OR REPLACE INTO copies (queue_id, recipient, new_queue_id, made_at) VALUES (?, ?, ?, ?)",
                    (queue_id, self._key(recipient), new_queue_id, now.isoformat()),
                )
        except sqlite3.Error as exc:
            raise JournalError(f"fanout journal {self.path}: {exc}") from exc

    def prune(self, now: datetime, days: int) -> int:
        """Forget copies made more than *days* ago; how many were forgotten."""
        cutoff = (now - timedelta(days=days)).isoformat()
        try:
            with self._lock:
                return self._db.execute("DELETE FROM copies WHERE made_at < ?", (cutoff,)).rowcount
        except sqlite3.Error as exc:
            raise JournalError(f"fanout journal {self.path}: {exc}") from exc

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM copies").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
