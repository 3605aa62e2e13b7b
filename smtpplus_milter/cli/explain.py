"""``smtpplus-milter explain``: what the milter would do with a given user, sender and priority.

The decision comes from :func:`smtpplus_milter.core.explain.explain`, which runs the milter's
own policy calls; this module only builds the message headers from the options and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from smtpplus_milter.cli.common import load_or_report
from smtpplus_milter.config import Config
from smtpplus_milter.config.rules import rules_of
from smtpplus_milter.core.explain import Explanation, explain


def add_parser(commands: Any, add_config: Any) -> None:
    parser = commands.add_parser(
        "explain", help="show what the milter would do with a message from a user, and why (nothing is sent)"
    )
    add_config(parser)
    parser.add_argument("--user", metavar="LOGIN", help="the SASL login (omit for an unauthenticated session)")
    parser.add_argument("--mail-from", required=True, metavar="ADDR", help="the envelope sender (MAIL FROM); '' for <>")
    parser.add_argument(
        "--header-from",
        action="append",
        default=None,
        metavar="VALUE",
        help="a From: header (repeat for several From: headers); default: the envelope sender",
    )
    parser.add_argument("--no-header-from", action="store_true", help="the message has no From: header")
    parser.add_argument("--header-sender", metavar="VALUE", help="a Sender: header")
    parser.add_argument("--x-priority", metavar="V", help="an X-Priority: header, e.g. '1 (Highest)'")
    parser.add_argument(
        "--header", action="append", default=[], metavar="'NAME: VALUE'", help="any other header (repeatable)"
    )
    parser.add_argument(
        "--rcpt",
        action="append",
        default=[],
        metavar="ADDR",
        help="an envelope recipient (repeatable): shows whether a list with bcc_in_to would split the message",
    )
    parser.add_argument("--json", action="store_true", help="JSON instead of text")


def build_headers(args: argparse.Namespace) -> list[tuple[str, str]] | str:
    """The message headers the options describe, or an error text."""
    headers: list[tuple[str, str]] = []
    if args.header_from is not None and args.no_header_from:
        return "give --header-from or --no-header-from, not both"
    if not args.no_header_from:
        for value in args.header_from if args.header_from is not None else [args.mail_from.strip("<>")]:
            headers.append(("From", value))
    if args.header_sender is not None:
        headers.append(("Sender", args.header_sender))
    if args.x_priority is not None:
        headers.append(("X-Priority", args.x_priority))
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip() or any(ch.isspace() for ch in name.strip()):
            return f"--header {item!r}: write it as 'Name: value'"
        headers.append((name.strip(), value.strip()))
    return headers


def run(args: argparse.Namespace) -> int:
    headers = build_headers(args)
    if isinstance(headers, str):
        print(f"smtpplus-milter explain: {headers}", file=sys.stderr)
        return 2
    config = load_or_report(args.config)
    if config is None:
        return 1
    mail_from = args.mail_from if args.mail_from.startswith("<") else f"<{args.mail_from}>"
    result = explain(rules_of(config), args.user or None, mail_from, headers, recipients=args.rcpt)
    record = to_record(config, result, assumed_from=args.header_from is None and not args.no_header_from)
    if args.json:
        print(json.dumps(record, indent=2, ensure_ascii=False))
    else:
        print(to_text(record))
    return 0


def to_record(config: Config, result: Explanation, *, assumed_from: bool = False) -> dict[str, Any]:
    decision, user, plan = result.decision, result.user, result.priority
    smtp_plus = not decision.bypass
    list_info: dict[str, Any] | None = None
    if user is not None and user.list and smtp_plus:
        section = config.settings.lists.get(user.list)
        list_info = {
            "name": user.list,
            "header": _variants(section.header if section else None),
            "footer": _variants(section.footer if section else None),
        }
    return {
        "verdict": decision.verdict.value,
        "stage": result.stage,
        "reply": str(decision.reply) if decision.reply else None,
        "smtp_plus": smtp_plus,
        "reasons": list(decision.reasons),
        "unauthorized": [
            {"field": item.field, "address": item.address, "reason": item.reason} for item in decision.unauthorized
        ],
        "mode": config.settings.authorization.mode,
        "display_name_spoofing": {
            "setting": config.settings.authorization.display_name_spoofing,
            "found": [
                {"field": item.field, "address": item.address, "shown": item.shown, "where": item.where}
                for item in decision.spoofing
            ],
        },
        "user": None
        if user is None
        else {
            "login": user.login,
            "active": user.active,
            "priority": user.priority,
            "list": user.list,
            "any_sender": user.unrestricted,
        },
        "login": result.login,
        "mail_from": _shown(result.mail_from),
        "headers": [_shown(f"{name}: {value}") for name, value in result.headers],
        "header_from_assumed": assumed_from,
        "priority": None
        if plan is None
        else {
            "message": plan.message,
            "message_source": plan.reading.source,
            # False: no priority header at all; "message" is then only the reading's default and
            # the user's priority applies as it is (core/priority.py plan_priority).
            "message_carried": plan.reading.carried,
            "user": plan.user,
            "effective": plan.effective,
        },
        "queue": plan.queue if plan else None,
        "header_edits": [] if plan is None else [_edit_text(edit) for edit in result.edits or plan.edits],
        "recipients": list(result.recipients),
        "fanout": None
        if not result.splits
        else {"mode": result.fanout.mode if result.fanout else None, "tagged": result.fanout is not None},
        "list": list_info,
    }


def _shown(text: str) -> str:
    """Arguments that were not UTF-8 arrive with surrogate escapes; show their bytes as \\xNN."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _variants(section: Any) -> list[str]:
    if section is None:
        return []
    return [name for name in ("text", "html") if getattr(section, name)]


def _edit_text(edit: Any) -> str:
    if edit.action == "add":
        return f"add {edit.name}: {edit.value}"
    if edit.action == "change":
        return f"change {edit.name}[{edit.index}] to {edit.value}"
    return f"delete {edit.name}[{edit.index}]"


def to_text(record: dict[str, Any]) -> str:
    lines = []
    verdict = record["verdict"].upper()
    where = {"mail_from": "at MAIL FROM", "end_of_headers": "at end of headers", "end_of_message": ""}[record["stage"]]
    lines.append(f"{verdict} {where}".rstrip() + (f": {record['reply']}" if record["reply"] else ""))
    if not record["smtp_plus"]:
        lines.append("Not SMTP+ traffic: the milter lets the message pass untouched.")
    if record["user"]:
        user = record["user"]
        lines.append(
            f"User: {user['login']} (active: {'yes' if user['active'] else 'no'}, priority {user['priority']}, "
            f"list {user['list'] or '-'})"
        )
        if user.get("any_sender"):
            lines.append("Senders: ANY (the user has no authorized or pending domains or senders)")
    lines.append(f"Checked: MAIL FROM {record['mail_from']}; " + "; ".join(record["headers"] or ["(no headers)"]))
    if record["header_from_assumed"]:
        lines.append("  (From: assumed equal to the envelope sender; give --header-from to test another)")
    lines.append("Why:")
    lines += [f"  - {reason}" for reason in record["reasons"]] or ["  - (no rule applied)"]
    if record["unauthorized"] and record["verdict"] == "accepted":
        lines.append(f"Alert: unauthorized sender(s) delivered anyway (authorization.mode: {record['mode']})")
    spoofing = record["display_name_spoofing"]
    for item in spoofing["found"]:
        where = "display name" if item["where"] == "display_name" else "a comment"
        lines.append(
            f"Spoofing: {item['field']} {item['address']} shows {item['shown']} in {where} "
            f"(authorization.display_name_spoofing: {spoofing['setting']}; the address decides)"
        )
    if record["priority"]:
        priority = record["priority"]
        if priority["message_carried"]:
            lines.append(
                f"Priority: message {priority['message']} ({priority['message_source']}), user {priority['user']}, "
                f"effective {priority['effective']} -> queue {record['queue']}"
            )
        else:
            lines.append(
                f"Priority: message none (no priority header; the user's priority {priority['user']} applies), "
                f"effective {priority['effective']} -> queue {record['queue']}"
            )
        lines += [f"  header edit: {edit}" for edit in record["header_edits"]]
    fanout = record.get("fanout")
    if fanout and not record["recipients"]:
        lines.append("Copies: the list makes per-recipient copies (bcc_in_to); give --rcpt to see this message's")
    elif fanout and fanout["tagged"]:
        lines.append(
            "Copies: tagged for the fanout filter: each recipient not named in To:/Cc: gets a copy with "
            "their own address in To: (the others get the message unchanged)"
        )
    elif fanout:
        lines.append("Copies: none (every recipient is named in To:/Cc:)")
    if record["list"]:
        item = record["list"]
        lines.append(
            f"List: {item['name']}: header {'/'.join(item['header']) or 'none'}, "
            f"footer {'/'.join(item['footer']) or 'none'}"
        )
    elif record["verdict"] == "accepted" and record["smtp_plus"]:
        lines.append("List: none (no header/footer)")
    return "\n".join(lines)
