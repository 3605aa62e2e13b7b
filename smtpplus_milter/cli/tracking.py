"""``smtpplus-milter tracking migrate`` and ``smtpplus-milter stats``: the tracking store's schema
and its counts per date, subject, sender, user, list or recipient domain (docs/tracking.md).

Output formats: ``table`` (for people), ``csv`` and ``json`` (a list of objects whose keys are the
column names); csv and json are written row by row, so a large result streams.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from smtpplus_milter.cli import common
from smtpplus_milter.config import Config
from smtpplus_milter.infra.store import StoreProblem, TrackingStore, open_store
from smtpplus_milter.infra.store.base import STATS_BY, STATS_COUNTERS

FORMATS = ("table", "csv", "json")


def add_parsers(commands: Any, add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    tracking = commands.add_parser("tracking", help="the delivery tracking store")
    actions = tracking.add_subparsers(dest="tracking_command", metavar="ACTION", required=True)
    migrate = actions.add_parser("migrate", help="bring the store's schema to this version (also done on start)")
    add_config(migrate)

    stats = commands.add_parser("stats", help="messages and recipient outcomes per date, subject, sender, ...")
    add_config(stats)
    stats.add_argument("--by", choices=STATS_BY, default="date", help="what one row is (default: date, UTC days)")
    stats.add_argument("--since", type=moment, metavar="DATE", help="from this date or ISO time (UTC, inclusive)")
    stats.add_argument("--until", type=moment, metavar="DATE", help="up to this date or ISO time (UTC, exclusive)")
    stats.add_argument("--user", metavar="LOGIN", help="only this SMTP+ user's messages")
    stats.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")


def moment(text: str) -> datetime:
    """A ``--since``/``--until`` value: YYYY-MM-DD or an ISO 8601 time; without a zone, UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD) or an ISO time") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def main(args: argparse.Namespace) -> int:
    config = common.load_or_report(args.config)
    if config is None:
        return 1
    try:
        store = _store(config)
    except StoreProblem as exc:
        common.err(f"{common.PROGRAM}: {exc}")
        return 1
    if store is None:
        return 1
    try:
        if args.command == "tracking":
            applied = store.migrate()
            print(f"applied schema version(s) {', '.join(map(str, applied))}" if applied else "schema is current")
            return 0
        store.migrate()  # a new or older store is brought to this version first, as at start
        rows = store.stats(by=args.by, since=args.since, until=args.until, user=args.user)
        write_rows(rows, (args.by, *STATS_COUNTERS), args.format)
        return 0
    except StoreProblem as exc:
        common.err(f"{common.PROGRAM}: {exc}")
        return 1
    finally:
        store.close()


def _store(config: Config) -> TrackingStore | None:
    if config.tracking is None:
        common.err(
            f"{common.PROGRAM}: tracking is off in {config.path}: add a tracking: section with its store "
            "(docs/tracking.md)"
        )
        return None
    return open_store(config.tracking.store)


def write_rows(rows: Iterable[dict[str, object]], columns: tuple[str, ...], output_format: str) -> None:
    """Rows as a table, CSV or a JSON list of objects (keys in *columns* order)."""
    if output_format == "json":
        sys.stdout.write("[")
        for number, row in enumerate(rows):
            sys.stdout.write(("," if number else "") + "\n  " + json.dumps({key: row[key] for key in columns}))
        sys.stdout.write("\n]\n")
        return
    if output_format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row[key] is None else row[key] for key in columns])
        return
    table = [list(columns), *(list(_cells(row, columns)) for row in rows)]
    if len(table) == 1:
        print("(no messages)")
        return
    common.print_table(table)


def _cells(row: dict[str, object], columns: tuple[str, ...]) -> Iterator[str]:
    return ("-" if row[key] is None else str(row[key]) for key in columns)
