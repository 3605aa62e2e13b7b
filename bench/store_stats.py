"""``stats --by date`` over 1,000,000 recorded messages, on the SQLite store and on PostgreSQL.

Each store is migrated, then filled in bulk inside the database (one statement, no Python loop):
1,000,000 messages spread over 365 days, one recipient row each, and the per-message state counters
the store keeps (so the rows look like the store's own). Then ``TrackingStore.stats("date")`` is
timed, over everything and over one month, best and median of several runs. PostgreSQL is a
private server (tests/support/postgres.py), started and removed by this script; it needs root.

    .venv/bin/python bench/store_stats.py [--messages 1000000] [--runs 5] [--only sqlite|postgres]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

# tests/support is a folder of this repository, not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smtpplus_milter.infra.store import open_store
from smtpplus_milter.infra.store.sql import SqlStore
from tests.support import postgres

START = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
SPAN = 365 * 86400
TARGET_SECONDS = 1.0

# n runs 1..N; accepted_at spreads the messages evenly over a year; states cycle through a mix.
_SQLITE_FILL = f"""
WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < ?)
INSERT INTO messages (node, queue_id, username, list_name, envelope_from, header_from, subject, message_id,
    size, priority, queue, accepted_at, day, rcpt_total, rcpt_delivered, rcpt_deferred, rcpt_bounced)
SELECT 'relay1', 'Q' || n, 'user' || (n % 50), 'list' || (n % 7), 'b@example.org',
    'from' || (n % 20) || '@example.org',
    'Subject ' || (n % 100), '<' || n || '@example.org>', 2000 + n % 5000, 3, 'normal',
    {START} + (n * {SPAN}.0 / ?), CAST(({START} + (n * {SPAN}.0 / ?)) / 86400 AS INTEGER), 1,
    (n % 10 < 8), (n % 10 = 8), (n % 10 = 9)
FROM seq
"""
_PG_FILL = f"""
INSERT INTO messages (node, queue_id, username, list_name, envelope_from, header_from, subject, message_id,
    size, priority, queue, accepted_at, day, rcpt_total, rcpt_delivered, rcpt_deferred, rcpt_bounced)
SELECT 'relay1', 'Q' || n, 'user' || (mod(n, 50)), 'list' || (mod(n, 7)), 'b@example.org',
    'from' || (mod(n, 20)) || '@example.org',
    'Subject ' || (mod(n, 100)), '<' || n || '@example.org>', 2000 + mod(n, 5000), 3, 'normal',
    {START} + (n * {SPAN}.0 / %s), FLOOR(({START} + (n * {SPAN}.0 / %s)) / 86400)::int, 1,
    (mod(n, 10) < 8)::int, (mod(n, 10) = 8)::int, (mod(n, 10) = 9)::int
FROM generate_series(1, %s) AS n
"""
_RECIPIENTS = """
INSERT INTO recipients (message, address, domain, state)
SELECT id, 'r' || id || '@d' || (id % 300) || '.example', 'd' || (id % 300) || '.example',
    CASE id % 10 WHEN 8 THEN 'deferred' WHEN 9 THEN 'bounced' ELSE 'delivered' END
FROM messages
"""


def fill(store: SqlStore, messages: int) -> float:
    started = time.perf_counter()
    if store.dialect == "sqlite":
        with store._transaction() as cur:
            cur.execute(_SQLITE_FILL, (messages, messages, messages))
            cur.execute(_RECIPIENTS)
    else:
        with store._pool.connection() as conn:  # type: ignore[attr-defined]
            conn.execute(_PG_FILL, (messages, messages, messages))  # type: ignore[arg-type]
            conn.execute(_RECIPIENTS)  # type: ignore[arg-type]
            conn.commit()
            conn.autocommit = True
            # What autovacuum would do soon after a bulk load: statistics and the visibility map.
            conn.execute("VACUUM ANALYZE")
            conn.autocommit = False
    return time.perf_counter() - started


def measure(store: SqlStore, runs: int, **bounds: datetime) -> tuple[float, float, int]:
    times = []
    rows = 0
    for _ in range(runs):
        started = time.perf_counter()
        rows = len(list(store.stats("date", **bounds)))
        times.append(time.perf_counter() - started)
    return min(times), statistics.median(times), rows


def bench(name: str, url: str, messages: int, runs: int) -> bool:
    store = open_store(url)
    assert isinstance(store, SqlStore)
    store.migrate()
    loaded = fill(store, messages)
    print(f"{name}: {messages:,} messages loaded in {loaded:.1f} s")
    ok = True
    month = {"since": datetime(2025, 6, 1, tzinfo=UTC), "until": datetime(2025, 7, 1, tzinfo=UTC)}
    for label, bounds in (("all days", {}), ("one month", month)):
        best, median, rows = measure(store, runs, **bounds)
        verdict = "ok" if median < TARGET_SECONDS else f"OVER {TARGET_SECONDS} s"
        print(
            f"  stats --by date, {label}: {rows} rows,"
            f" best {best * 1000:.0f} ms, median {median * 1000:.0f} ms {verdict}"
        )
        ok = ok and median < TARGET_SECONDS
    store.close()
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", choices=("sqlite", "postgres"))
    args = parser.parse_args()
    ok = True
    if args.only in (None, "sqlite"):
        with tempfile.TemporaryDirectory(prefix="smtpplus-bench-") as tmp:
            ok = bench("sqlite", f"sqlite:///{tmp}/tracking.db", args.messages, args.runs) and ok
    if args.only in (None, "postgres"):
        if (why := postgres.available()) is not None:
            print(f"postgres: skipped ({why})")
        else:
            with postgres.private_server() as server:
                ok = bench("postgres", server.create_database(), args.messages, args.runs) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
