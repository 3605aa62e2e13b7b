"""The tracking store in one SQLite file (stdlib ``sqlite3``), for a single relay host.

WAL lets readers (the command line) run while the milter and the follower write; every thread gets
its own connection (a sqlite3 connection must not be shared between threads); writes take the write
lock at ``BEGIN IMMEDIATE`` so two writers queue on the busy timeout instead of failing half-way.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from smtpplus_milter.infra.store.base import StoreProblem
from smtpplus_milter.infra.store.sql import SqlStore

# How long a writer waits for another writer's transaction before giving up.
BUSY_TIMEOUT_SECONDS = 30.0


class SqliteStore(SqlStore):
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        if not path.is_absolute():
            raise StoreProblem(f"tracking store {path}: the SQLite file must be an absolute path")
        if not path.parent.is_dir():
            raise StoreProblem(f"tracking store {path}: the directory {path.parent} does not exist")
        self.path = path
        self.url = f"sqlite:///{path}"
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        parts = urlsplit(url)
        # As elsewhere (SQLAlchemy): "sqlite:///" then the path, so an absolute path makes four slashes.
        path = unquote(parts.path)[1:]
        if parts.scheme != "sqlite" or parts.netloc or not path.startswith("/"):
            raise StoreProblem(f"tracking store {url!r}: expected sqlite:////absolute/path.db (four slashes)")
        return cls(Path(path))

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                # isolation_level=None: we issue BEGIN/COMMIT ourselves (the module's implicit
                # transactions would not take the write lock at the start).
                # check_same_thread=False only so that close() may close every thread's connection;
                # in use, a connection is only ever touched by the thread that opened it.
                conn = sqlite3.connect(
                    self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA foreign_keys=ON")
            except sqlite3.Error as exc:
                raise StoreProblem(f"tracking store {self.path}: cannot open ({exc})") from exc
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn.cursor()
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Any]:
        yield self._connection().cursor()

    def _stream(self, sql: str, params: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        cur = self._connection().execute(sql, tuple(params))
        try:
            yield from cur
        finally:
            # A reader that stops early (a limit, an exception) must not keep its read snapshot open:
            # it would hold back WAL checkpoints.
            cur.close()

    def _least(self, a: str, b: str) -> str:
        return f"MIN({a}, {b})"

    def _greatest(self, a: str, b: str) -> str:
        return f"MAX({a}, {b})"

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
