"""``smtpplus-milter verify ...``: the options, the call of the use case, and what is printed.

``start`` e-mails a one-time code to a pending address, or prints the DNS TXT record a pending
domain needs; ``confirm`` (address + code) and ``check`` (domain, by DNS) move the entry from
``pending_*`` to ``authorized_*``; ``list`` shows what waits and since when; ``cancel`` drops a
pending entry. The use cases, and the order in which they take their locks, are in
:mod:`smtpplus_milter.admin.verification`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from smtpplus_milter.admin import verification
from smtpplus_milter.admin.errors import Refused
from smtpplus_milter.cli import common
from smtpplus_milter.cli.common import err
from smtpplus_milter.config import Config
from smtpplus_milter.core.users import User
from smtpplus_milter.core.verification import CODE_DIGITS, MAX_FAILURES, Outcome, format_age, normalize_code, txt_name

Clock = Callable[[], float]


# --- argument parsing --------------------------------------------------------------------------


def add_parsers(commands: Any, add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    verify = commands.add_parser("verify", help="verify new senders (code by e-mail) and domains (DNS TXT record)")
    actions = verify.add_subparsers(dest="verify_command", metavar="ACTION", required=True)

    start = actions.add_parser(
        "start", help="e-mail a code to a pending address, or print the TXT record for a pending domain"
    )
    add_config(start)
    start.add_argument("user", metavar="USER", help="the SMTP+ user (SASL login)")
    start.add_argument("entry", metavar="ADDRESS|DOMAIN")

    confirm = actions.add_parser("confirm", help="check the code the address received; authorize it if right")
    add_config(confirm)
    confirm.add_argument("user", metavar="USER")
    confirm.add_argument("entry", metavar="ADDRESS")
    # nargs="+": the code mail shows it as "4827 1930", and typed like that unquoted it is two arguments.
    confirm.add_argument("code", metavar="CODE", nargs="+", help="the code, e.g. 48271930 or 4827 1930")
    common.reload_options(confirm)

    check = actions.add_parser("check", help="look up the domain's TXT record; authorize it if it is there")
    add_config(check)
    check.add_argument("user", metavar="USER")
    check.add_argument("entry", metavar="DOMAIN")
    common.reload_options(check)

    listing = actions.add_parser("list", help="pending entries, their age and state")
    add_config(listing)
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")

    cancel = actions.add_parser("cancel", help="drop a pending address or domain (and its code or token)")
    add_config(cancel)
    cancel.add_argument("user", metavar="USER")
    cancel.add_argument("entry", metavar="ADDRESS|DOMAIN")
    common.allow_any_sender_option(cancel)
    common.reload_options(cancel)


# --- entry point ---------------------------------------------------------------------------------


def main(args: argparse.Namespace, *, clock: Clock = time.time) -> int:
    return common.guarded(f"verify {args.verify_command}", lambda: _dispatch(args, clock))


def _dispatch(args: argparse.Namespace, clock: Clock) -> int:
    command = args.verify_command
    config = common.load_or_report(args.config, command=f"verify {command}", headline=common.FIX_FIRST)
    if config is None:
        return 1
    if command == "list":
        return _list(config, as_json=args.json, now=clock())
    user = verification.user_of(config, args.user)
    kind, entry = verification.entry_of(args.entry, address_only=command == "confirm", domain_only=command == "check")
    if command == "start":
        common.report_started(verification.start(config, user, kind, entry, now=clock()))
        return 0
    if command == "confirm":
        return _confirm(args, config, user, entry, _code(args.code), now=clock())
    if command == "check":
        return _check(args, config, user, entry)
    if command == "cancel":
        widened = verification.cancel(config, user, kind, entry, allow_any_sender=args.allow_any_sender)
        common.audit_event("verification_cancelled", user=user.login, **{kind: entry})
        common.any_sender_chosen(widened, "verify cancel")
        print(f"{entry} is no longer pending for SMTP+ user {user.login}; its code or token no longer works.")
        common.reload_milter(args, config)
        return 0
    raise Refused(f"unknown action {command}")  # pragma: no cover - argparse enforces the choices


def _code(parts: list[str]) -> str:
    """The code from its arguments ("4827 1930", "4827-1930", "48271930"): exactly CODE_DIGITS digits.

    A code of the wrong shape is a typo, refused before it is compared, so it costs no try.
    """
    code = normalize_code("".join(parts))
    if not (len(code) == CODE_DIGITS and code.isascii() and code.isdigit()):
        given = " ".join(parts)
        raise Refused(f"{given!r} is not a code: a code has {CODE_DIGITS} digits, as in the mail (e.g. 4827 1930)")
    return code


def _confirm(args: argparse.Namespace, config: Config, user: User, address: str, code: str, *, now: float) -> int:
    result = verification.confirm(config, user, address, code, now=now)
    if result.outcome is Outcome.CONFIRMED:
        common.audit_event("verification_confirmed", user=user.login, sender=address)
        print(f"{address} is verified: SMTP+ user {user.login} may now send as it (authorized_senders).")
        common.reload_milter(args, config)
        return 0
    if result.outcome is Outcome.WRONG:
        common.audit_event("verification_failed", user=user.login, sender=address, tries_left=result.tries_left)
        raise Refused(f"wrong code for {address}; {result.tries_left} more tries before the code is voided")
    if result.outcome is Outcome.VOIDED:
        common.audit_event("verification_voided", user=user.login, sender=address)
        raise Refused(
            f"the code for {address} is void after {MAX_FAILURES} wrong tries; "
            f"send a new one: smtpplus-milter verify start {user.login} {address}"
        )
    if result.outcome is Outcome.EXPIRED:
        raise Refused(
            f"the code for {address} has expired; send a new one: smtpplus-milter verify start {user.login} {address}"
        )
    raise Refused(
        f"no code was sent to {address} for {user.login} (or it was used already); "
        f"send one: smtpplus-milter verify start {user.login} {address}"
    )


def _check(args: argparse.Namespace, config: Config, user: User, domain: str) -> int:
    checked = verification.check(config, user, domain, warn=lambda warning: err(f"warning: {warning}"))
    warnings = checked.warnings
    common.audit_event("verification_confirmed", user=user.login, domain=domain, warnings=len(warnings))
    print(f"{domain} is verified: SMTP+ user {user.login} may now send from it (authorized_domains).")
    if warnings:
        print(f"Read the {len(warnings)} warning(s) above: mail from {domain} may still not be delivered.")
    print(f"The TXT record {txt_name(domain)} is no longer needed and may be removed.")
    common.reload_milter(args, config)
    return 0


# --- listing -------------------------------------------------------------------------------------


def _list(config: Config, *, as_json: bool, now: float) -> int:
    found = verification.pending(config, now=now)
    if as_json:
        print(json.dumps([item.as_dict() for item in found], indent=2, ensure_ascii=False))
        return 0
    if not found:
        print("Nothing is pending verification.")
        return 0
    rows = [("LOGIN", "KIND", "ENTRY", "AGE", "STATE")]
    for item in found:
        age = "-" if item.age_seconds is None else format_age(item.age_seconds)
        rows.append((item.login, item.kind, item.entry, age, item.state))
    common.print_table(rows)
    return 0
