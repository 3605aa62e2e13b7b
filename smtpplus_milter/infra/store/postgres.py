"""The tracking store in PostgreSQL (psycopg 3 with a connection pool), shared by several relay hosts.

Each host writes its own ``node``'s rows; idempotency is ``ON CONFLICT`` on the natural keys, so two
hosts or a replayed spool never duplicate a row. Migrations take an advisory lock, so two hosts
running ``tracking migrate`` at once apply each version once.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from smtpplus_milter.core.tracking import MessageRecord
from smtpplus_milter.infra.store.base import StoreProblem
from smtpplus_milter.infra.store.sql import MESSAGE_INSERT_COLUMNS, Cursor, SqlStore, message_row

# An arbitrary constant: the advisory lock that serialises migrations of this schema.
MIGRATION_LOCK = 0x534D5450
POOL_MAX = 4
CONNECT_TIMEOUT_SECONDS = 10.0
# The array type of each of MESSAGE_INSERT_COLUMNS, for a batch inserted from unnest().
_MESSAGE_ARRAYS = ("text[]",) * 8 + ("bigint[]", "integer[]", "text[]", "double precision[]", "integer[]", "integer[]")
# Rows fetched per round trip by a streaming read.
STREAM_BATCH = 2000


def _dialect(sql: str) -> str:
    # Our statements use ``?`` placeholders and contain no literal ``?`` or ``%``.
    return sql.replace("?", "%s")


class _Cursor:
    """A psycopg cursor that takes our ``?`` statements."""

    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self._cur = cur

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Any:
        return self._cur.execute(_dialect(sql), tuple(params))

    def executemany(self, sql: str, params: Iterable[Sequence[Any]], /) -> Any:
        # psycopg sends the statements in one pipeline: one round trip, not one per row.
        return self._cur.executemany(_dialect(sql), [tuple(row) for row in params])

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall()

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount


class PostgresStore(SqlStore):
    dialect = "postgres"

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool = ConnectionPool(
            url, min_size=1, max_size=POOL_MAX, open=False, timeout=CONNECT_TIMEOUT_SECONDS, name="smtpplus-tracking"
        )
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS)
        except Exception as exc:
            self._pool.close()
            raise StoreProblem(
                f"tracking store: cannot connect to PostgreSQL at {_redacted(url)} ({exc}); check the host, the"
                " database name and that this user may log in"
            ) from exc

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            yield _Cursor(cur)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Any]:
        with self._pool.connection() as conn, conn.cursor() as cur:
            yield _Cursor(cur)

    def _stream(self, sql: str, params: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        # A server-side cursor: a large result is fetched in batches, never held whole in memory.
        with (
            self._pool.connection() as conn,
            conn.transaction(),
            conn.cursor(name=f"stream_{uuid.uuid4().hex}") as cur,
        ):
            cur.itersize = STREAM_BATCH
            cur.execute(_dialect(sql), tuple(params))
            yield from cur

    # A batch's rows go in as one array per column: one statement whose text never changes (psycopg
    # parses and caches it once), where a multi-row VALUES list of a new length each time is parsed
    # anew on the client for its hundreds of placeholders and executemany pays Python per row.

    def _insert_messages(self, cur: Cursor, records: Sequence[MessageRecord]) -> dict[tuple[str, str], int]:
        columns = list(zip(*(message_row(rec) for rec in records), strict=True))
        arrays = ", ".join(f"?::{kind}" for kind in _MESSAGE_ARRAYS)
        cur.execute(
            f"INSERT INTO messages ({', '.join(MESSAGE_INSERT_COLUMNS)}) SELECT * FROM unnest({arrays})"
            " ON CONFLICT (node, queue_id) DO NOTHING RETURNING id, node, queue_id",
            [list(column) for column in columns],
        )
        return {(node, queue_id): int(message) for message, node, queue_id in cur.fetchall()}

    def _insert_recipients(self, cur: Cursor, rows: Sequence[tuple[int, str, str, str]]) -> None:
        if rows:
            columns = [list(column) for column in zip(*rows, strict=True)]
            cur.execute(
                "INSERT INTO recipients (message, address, domain, state)"
                " SELECT * FROM unnest(?::bigint[], ?::text[], ?::text[], ?::text[])",
                columns,
            )

    def _in_list(self, column: str, values: Sequence[str]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(?::text[])", [list(values)]

    def _skip_locked(self) -> str:
        # Two relay hosts claiming at once each take rows the other does not hold.
        return " FOR UPDATE SKIP LOCKED"

    def _lock_migrations(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))

    def close(self) -> None:
        self._pool.close()


def _redacted(url: str) -> str:
    """The URL without its password (it goes into error messages and logs)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(an unreadable URL)"
    info.pop("password", None)
    return psycopg.conninfo.make_conninfo("", **{k: v for k, v in info.items() if v is not None})
