"""The tracking store's commands (docs/tracking.md "Commands"): ``tracking migrate`` (the schema),
``stats`` (counts per date, subject, sender, user, list or recipient domain), ``messages`` (search),
``messages show QID`` (one message and each recipient's attempts) and ``recipients`` (the recipients
database).

Output formats: ``table`` (for people), ``csv`` and ``json`` (a list of objects). Every format is
written row by row as the store yields, so a large result streams: even the table has fixed column
widths instead of measuring every row first (except ``stats``, whose rows are few groups).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from smtpplus_milter.cli import common
from smtpplus_milter.cli.common import FORMATS, iso, moment, write_rows
from smtpplus_milter.infra.store import StoreProblem, TrackingStore
from smtpplus_milter.infra.store.base import (
    STATES,
    STATS_BY,
    STATS_COUNTERS,
    Attempt,
    Contact,
    MessageFilter,
    RecipientStory,
    StoredMessage,
)

# What `messages` and `recipients` print when no --limit is given: a screenful of the newest, so a
# look at a busy store answers at once; --limit 0 lifts it.
DEFAULT_LIMIT = 100
# The keys of a message in JSON (and its columns in CSV, which adds the recipient's), in this order.
MESSAGE_KEYS = (
    "queue_id",
    "node",
    "user",
    "list",
    "envelope_from",
    "from",
    "subject",
    "message_id",
    "size",
    "priority",
    "queue",
    "accepted_at",
)
ATTEMPT_KEYS = ("at", "status", "dsn", "class", "relay", "reply")
# `messages` as CSV: one row per (message, recipient), the recipient's state and its latest attempt.
MESSAGE_CSV = (*MESSAGE_KEYS, "recipient", "state", "attempts", "last_at", "last_status", "last_dsn", "last_reply")
# `messages show` as CSV: one row per attempt (a recipient without any: one row, attempt cells empty).
SHOW_CSV = ("queue_id", "recipient", "state", "attempt_queue_id", *ATTEMPT_KEYS)
CONTACT_KEYS = ("user", "address", "first_sent", "last_sent", "messages", "state", "suppressed")


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

    messages = commands.add_parser(
        "messages", help="recorded messages, newest first; 'messages show QID' for one message's story"
    )
    add_config(messages)
    messages.add_argument("--user", metavar="LOGIN", help="only this SMTP+ user's messages")
    messages.add_argument("--to", metavar="ADDR", help="only messages with this envelope recipient")
    messages.add_argument("--message-id", metavar="ID", help="only messages with this Message-ID (with <>)")
    messages.add_argument("--queue-id", metavar="QID", help="only the message with this queue id")
    messages.add_argument("--since", type=moment, metavar="DATE", help="accepted from this date or time (inclusive)")
    messages.add_argument("--until", type=moment, metavar="DATE", help="accepted before this date or time (exclusive)")
    _add_limit(messages, "messages")
    messages.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    # `messages show QID` is a sub-action of `messages`, so `messages --user U` keeps working: the
    # action is optional. Its -c and --format default to "not given", or argparse would let the
    # sub-action's defaults overwrite `messages -c FILE show QID`'s.
    actions = messages.add_subparsers(
        dest="messages_action", metavar="[show QID]", title="one message (optional)", required=False
    )
    show = actions.add_parser("show", help="one message and each recipient's attempts in time order")
    show.add_argument("show_queue_id", metavar="QID", help="its queue id, or a queue id it continued as")
    show.add_argument("-c", "--config", type=Path, default=argparse.SUPPRESS, metavar="FILE", help="main config file")
    show.add_argument("--format", choices=FORMATS, default=argparse.SUPPRESS, help="output format (default: table)")

    recipients = commands.add_parser("recipients", help="the recipients database: one row per (user, address)")
    add_config(recipients)
    recipients.add_argument("--user", metavar="LOGIN", help="only this SMTP+ user's recipients")
    recipients.add_argument("--state", choices=STATES, help="only recipients whose latest message is in this state")
    _add_limit(recipients, "recipients")
    recipients.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")


def _add_limit(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--limit",
        type=_limit,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"at most N {what}, most recent first (default {DEFAULT_LIMIT}; 0 = all)",
    )


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (0 = no limit)")
    return value


def main(args: argparse.Namespace) -> int:
    store = common.configured_store(args.config)
    if store is None:
        return 1
    try:
        if args.command == "tracking":
            applied = store.migrate()
            print(f"applied schema version(s) {', '.join(map(str, applied))}" if applied else "schema is current")
            return 0
        store.migrate()  # a new or older store is brought to this version first, as at start
        if args.command == "messages":
            return _messages(store, args)
        if args.command == "recipients":
            contacts = store.recipients(
                user=args.user, state=args.state, limit=args.limit or None, now=datetime.now(UTC)
            )
            _write_contacts(contacts, args.format)
            return 0
        rows = store.stats(by=args.by, since=args.since, until=args.until, user=args.user)
        write_rows(rows, (args.by, *STATS_COUNTERS), args.format)
        return 0
    except StoreProblem as exc:
        common.err(f"{common.PROGRAM}: {exc}")
        return 1
    finally:
        store.close()


def _messages(store: TrackingStore, args: argparse.Namespace) -> int:
    if args.messages_action == "show":
        given = [
            f"--{name.replace('_', '-')}"
            for name in ("user", "to", "message_id", "queue_id", "since", "until")
            if getattr(args, name) is not None
        ]
        if given:
            common.err(f"{common.PROGRAM}: messages show QID takes no filter ({', '.join(given)}): the QID names it")
            return 2
        found = store.message(args.show_queue_id)
        if found is None:
            common.err(
                f"{common.PROGRAM}: no message with queue id {args.show_queue_id} in the store (nor one that continued"
                " as it); 'messages --user LOGIN' lists the recorded ones"
            )
            return 1
        _write_show(found, args.format)
        return 0
    filters = MessageFilter(
        user=args.user,
        to=args.to,
        message_id=args.message_id,
        queue_id=args.queue_id,
        since=args.since,
        until=args.until,
    )
    _write_messages(store.messages(filters, limit=args.limit or None), args.format)
    return 0


# -- messages, messages show, recipients ----------------------------------------------------------


def message_json(found: StoredMessage) -> dict[str, object]:
    """A message as the JSON object of ``messages`` and ``messages show`` (keys: MESSAGE_KEYS, recipients)."""
    return {**_message_fields(found), "recipients": [_story_json(story) for story in found.recipients]}


def _message_fields(found: StoredMessage) -> dict[str, object]:
    rec = found.record
    return {
        "queue_id": rec.queue_id,
        "node": rec.node,
        "user": rec.user,
        "list": rec.list,
        "envelope_from": rec.envelope_from,
        "from": rec.header_from,
        "subject": rec.subject,
        "message_id": rec.message_id,
        "size": rec.size,
        "priority": rec.priority,
        "queue": rec.queue,
        "accepted_at": iso(rec.accepted_at),
    }


def _story_json(story: RecipientStory) -> dict[str, object]:
    return {"address": story.address, "state": story.state, "attempts": [_attempt_json(a) for a in story.attempts]}


def _attempt_json(attempt: Attempt) -> dict[str, object]:
    return {
        "at": iso(attempt.at),
        "status": attempt.status,
        "dsn": attempt.dsn,
        "class": attempt.failure_class,
        "relay": attempt.relay,
        "reply": attempt.reply,
    }


def contact_json(contact: Contact) -> dict[str, object]:
    return {
        "user": contact.user,
        "address": contact.address,
        "first_sent": iso(contact.first_sent),
        "last_sent": iso(contact.last_sent),
        "messages": contact.messages,
        "state": contact.state,
        "suppressed": contact.suppressed,
    }


def _write_json(objects: Iterable[dict[str, object]]) -> None:
    """A JSON list written one object per line as the objects come (nothing is held whole)."""
    sys.stdout.write("[")
    for number, item in enumerate(objects):
        sys.stdout.write(("," if number else "") + "\n  " + json.dumps(item))
    sys.stdout.write("\n]\n")


def _write_csv(columns: tuple[str, ...], rows: Iterable[dict[str, object]]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row[key] is None else row[key] for key in columns])


def _write_messages(found: Iterable[StoredMessage], output_format: str) -> None:
    if output_format == "json":
        _write_json(message_json(item) for item in found)
    elif output_format == "csv":
        _write_csv(MESSAGE_CSV, (row for item in found for row in _message_csv_rows(item)))
    else:
        _write_table(
            ("ACCEPTED (UTC)", "QUEUE ID", "USER", "FROM", "RCPT", "STATES", "SUBJECT"),
            (20, 16, 16, 28, 4, 24),
            (_message_cells(item) for item in found),
            "(no messages)",
        )


def _message_csv_rows(found: StoredMessage) -> Iterator[dict[str, object]]:
    fields = _message_fields(found)
    if not found.recipients:
        yield {**fields, **dict.fromkeys(MESSAGE_CSV[len(MESSAGE_KEYS) :])}
    for story in found.recipients:
        last = story.attempts[-1] if story.attempts else None
        yield {
            **fields,
            "recipient": story.address,
            "state": story.state,
            "attempts": len(story.attempts),
            "last_at": iso(last.at) if last else None,
            "last_status": last.status if last else None,
            "last_dsn": last.dsn if last else None,
            "last_reply": last.reply if last else None,
        }


def _message_cells(found: StoredMessage) -> tuple[str, ...]:
    rec = found.record
    counts: dict[str, int] = {}
    for story in found.recipients:
        counts[story.state] = counts.get(story.state, 0) + 1
    states = ", ".join(f"{counts[state]} {state}" for state in STATES if state in counts)
    return (
        iso(rec.accepted_at),
        rec.queue_id,
        rec.user,
        rec.header_from or "-",
        str(len(found.recipients)),
        states or "-",
        rec.subject,
    )


def _write_show(found: StoredMessage, output_format: str) -> None:
    if output_format == "json":
        _write_json([message_json(found)])  # a list of one object, like every JSON output
        return
    if output_format == "csv":
        _write_csv(SHOW_CSV, _show_csv_rows(found))
        return
    for key, value in _message_fields(found).items():
        print(f"{key + ':':<15}{'-' if value is None else value}")
    print("recipients:")
    for story in found.recipients:
        print(f"  {story.address}  {story.state}")
        for attempt in story.attempts:
            cells = [iso(attempt.at), attempt.status, attempt.dsn or "-", attempt.failure_class or "-"]
            cells += [attempt.relay or "-", f"({attempt.reply})" if attempt.reply else ""]
            if attempt.queue_id != found.record.queue_id:
                cells.append(f"[as {attempt.queue_id}]")
            print("    " + " ".join(cell for cell in cells if cell))
        if not story.attempts:
            print("    (no delivery attempt logged)")


def _show_csv_rows(found: StoredMessage) -> Iterator[dict[str, object]]:
    for story in found.recipients:
        head = {"queue_id": found.record.queue_id, "recipient": story.address, "state": story.state}
        if not story.attempts:
            yield {**head, **dict.fromkeys(SHOW_CSV[len(head) :])}
        for attempt in story.attempts:
            yield {**head, "attempt_queue_id": attempt.queue_id, **_attempt_json(attempt)}


def _write_contacts(contacts: Iterable[Contact], output_format: str) -> None:
    rows = (contact_json(contact) for contact in contacts)
    if output_format == "json":
        _write_json(rows)
    elif output_format == "csv":
        _write_csv(CONTACT_KEYS, rows)
    else:
        _write_table(
            ("USER", "ADDRESS", "FIRST SENT (UTC)", "LAST SENT (UTC)", "MESSAGES", "STATE", "SUPPRESSED"),
            (16, 32, 20, 20, 8, 10),
            (tuple("-" if row[key] is None else str(row[key]) for key in CONTACT_KEYS) for row in rows),
            "(no recipients)",
        )


def _write_table(header: tuple[str, ...], widths: tuple[int, ...], rows: Iterable[tuple[str, ...]], empty: str) -> None:
    """Fixed column widths (a longer cell pushes the line on; the last column is free text), so each
    row is printed as it comes instead of after measuring them all."""
    printed = False
    for row in rows:
        if not printed:
            print(_line(header, widths))
            printed = True
        print(_line(row, widths))
    if not printed:
        print(empty)


def _line(cells: tuple[str, ...], widths: tuple[int, ...]) -> str:
    return " ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=False)) + " " + cells[-1]
