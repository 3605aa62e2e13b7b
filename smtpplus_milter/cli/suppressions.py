"""``smtpplus-milter suppressions list|add|remove|import|export``: the suppression list by hand.

Entries live in the tracking store (docs/bounces.md); the follower adds bounce entries, ``ingest``
complaints, the unsubscribe page unsubscribes. These commands show and change them: a scope is
chosen with ``--user U`` (``user:U``), ``--list L`` (``list:L``) or ``--global``; ``list`` and
``export`` without one show every scope, ``add``/``remove`` need one. Every change is logged as an
audit event with the operator, and an entry made here records ``OPERATOR@HOST`` as its author.

CSV (import and export): ``address,scope,reason,created,expires`` with a header line, times in
ISO 8601 UTC, an empty ``expires`` for "never", an empty ``created`` on import for "now". An import
is checked whole first: one bad line and nothing is imported.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import io
import os
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from smtpplus_milter.cli import common
from smtpplus_milter.cli.common import FORMATS, iso, moment, write_rows
from smtpplus_milter.core.addresses import AddressError, normalize_address
from smtpplus_milter.core.suppression import MANUAL, PERMANENT_REASONS, REASONS
from smtpplus_milter.infra.store import StoreProblem, TrackingStore
from smtpplus_milter.infra.store.base import Suppression

KEYS = ("address", "scope", "reason", "created", "expires")
# An import larger than this is refused (split it): it is read whole before anything is written.
MAX_IMPORT_LINES = 1_000_000


class BadInput(Exception):
    """A value on the command line or a line of an import that cannot be an entry."""


def add_parsers(commands: Any, add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    group = commands.add_parser("suppressions", help="the suppression list: list, add, remove, import, export")
    actions = group.add_subparsers(dest="suppressions_command", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="entries still in force (--all: expired ones too)")
    add_config(listing)
    _scope_options(listing)
    listing.add_argument("--all", action="store_true", help="also entries that have expired")
    listing.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")

    add = actions.add_parser("add", help="suppress ADDRESS in a scope")
    add_config(add)
    add.add_argument("address", metavar="ADDRESS")
    _scope_options(add)
    add.add_argument("--reason", choices=REASONS, default=MANUAL, help=f"why (default: {MANUAL})")
    add.add_argument("--expires", type=moment, metavar="DATE", help="until this date or ISO time (default: never)")

    remove = actions.add_parser("remove", help="lift the entry for ADDRESS in a scope")
    add_config(remove)
    remove.add_argument("address", metavar="ADDRESS")
    _scope_options(remove)

    load = actions.add_parser("import", help="add entries from CSV (address,scope,reason,created,expires)")
    add_config(load)
    load.add_argument("file", metavar="FILE", help="the CSV file, or - for standard input")

    export = actions.add_parser("export", help="entries as CSV on standard output")
    add_config(export)
    _scope_options(export)
    export.add_argument("--all", action="store_true", help="also entries that have expired")


def _scope_options(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--user", metavar="LOGIN", help="scope user:LOGIN (that SMTP+ user's mail)")
    scope.add_argument("--list", metavar="NAME", help="scope list:NAME (the mail of that list)")
    scope.add_argument("--global", dest="global_scope", action="store_true", help="scope global (all mail)")


def _scope(args: argparse.Namespace) -> str | None:
    if args.user:
        return f"user:{args.user}"
    if args.list:
        return f"list:{args.list}"
    return "global" if args.global_scope else None


def main(args: argparse.Namespace, now: datetime | None = None) -> int:
    command = f"suppressions {args.suppressions_command}"
    now = now or datetime.now(UTC)
    store = common.configured_store(args.config, command)
    if store is None:
        return 1
    try:
        store.migrate()
        return _dispatch(store, args, command, now)
    except BadInput as exc:
        common.err(f"{common.PROGRAM} {command}: {exc}; nothing was changed")
        return 1
    except StoreProblem as exc:
        common.err(f"{common.PROGRAM} {command}: {exc}")
        return 1
    finally:
        store.close()


def _dispatch(store: TrackingStore, args: argparse.Namespace, command: str, now: datetime) -> int:
    action = args.suppressions_command
    if action in ("list", "export"):
        entries = store.suppressions(scope=_scope(args), now=None if args.all else now)
        rows = (_row(entry) for entry in entries)
        if action == "export":
            _write_csv(rows, sys.stdout)
        else:
            write_rows(rows, KEYS, args.format, empty="(no entries)")
        return 0
    if action == "import":
        loaded = list(_read_csv(args.file, now))
        changed = store.suppress(loaded)
        common.audit_event("suppressions_imported", file=str(args.file), entries=len(loaded), changed=changed)
        print(f"imported {len(loaded)} entr{'y' if len(loaded) == 1 else 'ies'} ({changed} new or changed)")
        return 0
    scope = _scope(args)
    if scope is None:
        raise BadInput("say which scope: --user LOGIN, --list NAME or --global")
    address = _address(args.address)
    if action == "add":
        if args.expires is not None and args.expires <= now:
            raise BadInput(f"--expires {iso(args.expires)} is not in the future")
        if args.expires is not None and args.reason in PERMANENT_REASONS:
            raise BadInput(f"a {args.reason} entry never expires: leave out --expires")
        entry = Suppression(scope, address, args.reason, now, args.expires, created_by=_operator())
        changed = store.suppress([entry])
        common.audit_event("suppression_added", scope=scope, address=address, reason=args.reason, changed=changed)
        if not changed:
            print(f"{address} keeps its existing entry in {scope} (a bounce never replaces a complaint, an")
            print("unsubscribe or a manual entry: remove that one first to change it)")
            return 0
        until = f", until {iso(args.expires)}" if args.expires else ""
        print(f"suppressed {address} in {scope} ({args.reason}{until})")
        return 0
    removed = store.unsuppress(scope, address)
    common.audit_event("suppression_removed", scope=scope, address=address, removed=removed)
    if not removed:
        common.err(f"{common.PROGRAM} {command}: {address} has no entry in {scope}")
        return 1
    print(f"lifted {address} in {scope}")
    return 0


# RFC 5321 allows at most 254 octets in a path's address (256 with the angle brackets).
MAX_ADDRESS = 254


def _address(text: str) -> str:
    if len(text.strip()) > MAX_ADDRESS:
        raise BadInput(f"an address of {len(text.strip())} characters is no address (at most {MAX_ADDRESS})")
    try:
        normalize_address(text)
    except AddressError as exc:
        raise BadInput(str(exc)) from None
    return text.strip().lower()


def _operator() -> str:
    """Who made an entry by hand: the login (the one behind sudo) at this host."""
    return f"{os.environ.get('SUDO_USER') or getpass.getuser()}@{socket.gethostname()}"


def _row(entry: Suppression) -> dict[str, object]:
    return {
        "address": entry.address,
        "scope": entry.scope,
        "reason": entry.reason,
        "created": iso(entry.created),
        "expires": iso(entry.expires) if entry.expires else None,
    }


def _write_csv(rows: Iterable[dict[str, object]], out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(KEYS)
    for row in rows:
        writer.writerow(["" if row[key] is None else row[key] for key in KEYS])


def _read_csv(name: str, now: datetime) -> Iterator[Suppression]:
    """Every entry of an import, all checked before the first is returned (all or nothing)."""
    try:
        if name == "-":
            text = sys.stdin.read()
        else:
            text = Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read {name}: {exc}") from None
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or [field.strip() for field in reader.fieldnames] != list(KEYS):
        raise BadInput(f"{name}: the first line must be the header {','.join(KEYS)}")
    entries: list[Suppression] = []
    problems: list[str] = []
    author = _operator()
    for row in reader:
        line = reader.line_num
        if len(entries) + len(problems) >= MAX_IMPORT_LINES:
            raise BadInput(f"{name}: more than {MAX_IMPORT_LINES:,} lines; split the file")
        try:
            entries.append(_entry(row, now, author))
        except (BadInput, ValueError) as exc:
            problems.append(f"  line {line}: {exc}")
    if problems:
        shown = "\n".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise BadInput(f"{name}: {len(problems)} bad line(s):\n{shown}\n")
    yield from entries


def _entry(row: dict[str, str | None], now: datetime, author: str) -> Suppression:
    if None in row or any(row.get(key) is None for key in KEYS):
        raise BadInput("expected exactly 5 fields: address,scope,reason,created,expires")
    values = {key: (row[key] or "").strip() for key in KEYS}
    created = _when(values["created"]) if values["created"] else now
    expires = _when(values["expires"]) if values["expires"] else None
    if values["reason"] in PERMANENT_REASONS and expires is not None:
        raise BadInput(f"a {values['reason']} entry never expires")
    address = _address(values["address"])
    return Suppression(values["scope"], address, values["reason"], created, expires, created_by=author)


def _when(text: str) -> datetime:
    try:
        return moment(text)
    except argparse.ArgumentTypeError as exc:
        raise BadInput(str(exc)) from None
