"""``smtpplus-milter verify ...``: prove new senders and domains before they authorize anything.

``start`` e-mails a one-time code to a pending address, or prints the DNS TXT record a pending
domain needs; ``confirm`` (address + code) and ``check`` (domain, by DNS) move the entry from
``pending_*`` to ``authorized_*`` in the users file; ``list`` shows what waits and since when;
``cancel`` drops a pending entry. Pending entries restrict the user too, so ``cancel`` of the
last entry a user has would let it send as any sender: it is refused unless the operator
passes ``--allow-any-sender``. Every write of the users file here checks that rule.

Locks are always taken in the same order: the state file (:mod:`smtpplus_milter.core.verification`),
then the users file. ``users add/edit`` take the users file's lock, release it, and only then
start verifications, so the two commands can never wait for each other.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import smtplib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

from smtpplus_milter.cli.users import (
    Refused,
    allow_any_sender_option,
    any_sender_chosen,
    audit_event,
    load,
    reload_milter,
    reload_options,
)
from smtpplus_milter.config import Config, ConfigError, load_config
from smtpplus_milter.core.addresses import AddressError, normalize_address, normalize_domain
from smtpplus_milter.core.dnscheck import DnsFailure, check_token, deliverability_warnings
from smtpplus_milter.core.users import User, newly_unrestricted, normalize_login
from smtpplus_milter.core.verification import (
    CODE_DIGITS,
    MAX_FAILURES,
    TOKEN_PREFIX,
    Kind,
    Outcome,
    as_record,
    describe,
    format_age,
    format_code,
    kind_of,
    normalize_code,
    txt_name,
    txt_record,
)
from smtpplus_milter.infra.dns import Resolver
from smtpplus_milter.infra.files import FileProblem, locked, read_text, replace_atomically
from smtpplus_milter.infra.state import StateFile
from smtpplus_milter.infra.usersfile import ALLOW_ANY_SENDER, EditProblem, UsersDocument, any_sender_refusal

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
    reload_options(confirm)

    check = actions.add_parser("check", help="look up the domain's TXT record; authorize it if it is there")
    add_config(check)
    check.add_argument("user", metavar="USER")
    check.add_argument("entry", metavar="DOMAIN")
    reload_options(check)

    listing = actions.add_parser("list", help="pending entries, their age and state")
    add_config(listing)
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")

    cancel = actions.add_parser("cancel", help="drop a pending address or domain (and its code or token)")
    add_config(cancel)
    cancel.add_argument("user", metavar="USER")
    cancel.add_argument("entry", metavar="ADDRESS|DOMAIN")
    allow_any_sender_option(cancel)
    reload_options(cancel)


# --- entry point ---------------------------------------------------------------------------------


def main(args: argparse.Namespace, *, clock: Clock = time.time) -> int:
    try:
        return _dispatch(args, clock)
    except Refused as exc:
        _err(f"smtpplus-milter verify {args.verify_command}: {exc}")
        return 1
    except (FileProblem, EditProblem) as exc:
        _err(f"smtpplus-milter verify {args.verify_command}: {exc}; nothing was changed")
        return 1


def _dispatch(args: argparse.Namespace, clock: Clock) -> int:
    command = args.verify_command
    if command == "list":
        return _list(args.config, as_json=args.json, now=clock())
    config = load(args.config)
    user = _user(config, args.user)
    kind, entry = _entry(args.entry, address_only=command == "confirm", domain_only=command == "check")
    if command == "start":
        return start_one(config, user, kind, entry, now=clock())
    if command == "confirm":
        return _confirm(args, config, user, entry, _code(args.code), now=clock())
    if command == "check":
        return _check(args, config, user, entry)
    if command == "cancel":
        return _cancel(args, config, user, kind, entry)
    raise Refused(f"unknown action {command}")  # pragma: no cover - argparse enforces the choices


def _err(text: str) -> None:
    print(text, file=sys.stderr)


def _user(config: Config, name: str) -> User:
    user = config.directory.lookup(name)
    if user is None:
        raise Refused(f"there is no SMTP+ user {name!r}; see 'smtpplus-milter users list'")
    return user


def _entry(text: str, *, address_only: bool = False, domain_only: bool = False) -> tuple[Kind, str]:
    kind = kind_of(text)
    if address_only and kind != "sender":
        raise Refused(f"{text!r} is not an address; domains are verified with 'verify check USER DOMAIN'")
    if domain_only and kind != "domain":
        raise Refused(f"{text!r} is an address; addresses are verified with 'verify confirm USER ADDRESS CODE'")
    try:
        return kind, (str(normalize_address(text)) if kind == "sender" else normalize_domain(text))
    except AddressError as exc:
        raise Refused(f"{exc}; give an address as local@domain or a bare domain") from None


def _code(parts: list[str]) -> str:
    """The code from its arguments ("4827 1930", "4827-1930", "48271930"): exactly CODE_DIGITS digits.

    A code of the wrong shape is a typo, refused before it is compared, so it costs no try.
    """
    code = normalize_code("".join(parts))
    if not (len(code) == CODE_DIGITS and code.isascii() and code.isdigit()):
        given = " ".join(parts)
        raise Refused(f"{given!r} is not a code: a code has {CODE_DIGITS} digits, as in the mail (e.g. 4827 1930)")
    return code


def _pending(user: User, kind: Kind, entry: str) -> None:
    """Refuse unless *entry* waits for verification for *user*."""
    pending = user.pending_senders if kind == "sender" else user.pending_domains
    if entry in pending:
        return
    authorized = user.authorized_senders if kind == "sender" else user.authorized_domains
    if entry in authorized:
        raise Refused(f"{entry} is already verified for {user.login} (authorized_{kind}s); nothing to do")
    option = "--authorized-sender" if kind == "sender" else "--authorized-domain"
    raise Refused(
        f"{entry} is not pending for {user.login}; add it first: "
        f"smtpplus-milter users edit {user.login} {option} {entry}"
    )


def _event(event: str, **fields: Any) -> None:
    """A line for the audit trail (see :func:`smtpplus_milter.cli.users.audit_event`)."""
    audit_event(event, **fields)


def _state_file(config: Config) -> StateFile:
    return StateFile(config.state_path)


# --- starting --------------------------------------------------------------------------------------


def start_one(config: Config, user: User, kind: Kind, entry: str, *, now: float) -> int:
    _pending(user, kind, entry)
    login = normalize_login(user.login)
    settings = config.settings.verification
    if kind == "domain":
        with _state_file(config).edit() as state:
            attempt = state.start_domain(login, entry, now=now)
        assert attempt.token is not None
        print(f"Domain {entry} of SMTP+ user {user.login}: ask the domain's owner to publish this DNS record")
        print(f"  {txt_record(entry, attempt.token)}")
        print(f"then run: smtpplus-milter verify check {user.login} {entry}")
        _event("verification_started", user=user.login, domain=entry)
        return 0
    if settings.from_ is None:
        raise Refused(
            f"cannot e-mail a code to {entry}: verification.from is not set in {config.path}; "
            "set it to the address verification mail comes from"
        )
    ttl = settings.code_ttl_hours
    with _state_file(config).edit() as state:
        code = state.start_sender(login, entry, ttl_hours=ttl, now=now)
        # Sent while the new state is not yet written: if the mail cannot go out, the old code
        # (if any) stays the valid one.
        _send_code(config, user, entry, code, now)
    expires = datetime.fromtimestamp(now + ttl * 3600, UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"A verification code was e-mailed to {entry} (from {settings.from_}); it is valid for {ttl} hours,")
    print(f"until {expires}, and can be used once. When the recipient tells you the code, run:")
    print(f"  smtpplus-milter verify confirm {user.login} {entry} CODE")
    _event("verification_started", user=user.login, sender=entry, expires=now + ttl * 3600)
    return 0


def _send_code(config: Config, user: User, address: str, code: str, now: float) -> None:
    settings = config.settings.verification
    assert settings.from_ is not None
    hours = settings.code_ttl_hours
    message = EmailMessage(policy=SMTP)
    message["From"] = settings.from_
    message["To"] = address
    message["Subject"] = f"Verification code {format_code(code)}"
    message["Date"] = format_datetime(datetime.fromtimestamp(now, UTC))
    message["Message-ID"] = make_msgid(domain=settings.from_.rpartition("@")[2])
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(
        f"Hello,\n\n"
        f"someone asked to let the SMTP+ relay account {user.login!r} send mail as {address}.\n"
        f"If you agree, give this code to the relay's operator (it is valid for {hours} hours, once):\n\n"
        f"    {format_code(code)}\n\n"
        f"If you did not expect this message, ignore it: without the code nothing changes.\n"
    )
    try:
        with smtplib.SMTP(settings.smtp.host, settings.smtp.port, timeout=30) as client:
            client.send_message(message, from_addr=settings.from_, to_addrs=[address])
    except (OSError, smtplib.SMTPException) as exc:
        raise Refused(
            f"could not send the code to {address} through verification.smtp {settings.smtp}: {exc}; "
            "check that this port accepts mail without SMTP AUTH and without the milter, then run 'verify start' again"
        ) from None


def start_new(config: Config, login: str, senders: list[str], domains: list[str], *, now: float) -> list[str]:
    """Start verification of entries ``users add/edit`` just put into pending_*; return the problems."""
    user = _user(config, login)
    problems: list[str] = []
    for kind, entries in (("sender", senders), ("domain", domains)):
        for entry in entries:
            try:
                start_one(config, user, kind, entry, now=now)  # type: ignore[arg-type]
            except (Refused, FileProblem) as exc:
                problems.append(f"{entry}: {exc}")
    return problems


# --- confirming ----------------------------------------------------------------------------------


@dataclass
class _UsersEdit:
    document: UsersDocument
    widened: list[User] = field(default_factory=list)  # restricted before, any sender after (allowed)


@contextlib.contextmanager
def _users_file(config: Config, *, allow_any_sender: bool = False, again: str = "") -> Iterator[_UsersEdit]:
    """Edit the users file under its lock; validate like check-config; replace it atomically.

    A change that leaves a restricted user free to send as any sender is refused unless
    *allow_any_sender*; *again* is the command that makes it on purpose.
    """
    with locked(config.users_path):
        text = read_text(config.users_path) or ""
        edit = _UsersEdit(UsersDocument(text))
        yield edit
        new = edit.document.dump()
        try:
            after = load_config(config.path, users_text=new).directory
        except ConfigError as exc:
            lines = "\n  ".join(str(problem) for problem in exc.problems)
            raise Refused(
                f"the users file would not validate after this change; nothing was changed:\n  {lines}"
            ) from None
        # Compared with the file as read under the lock, not with what the command started from.
        try:
            before = load_config(config.path, users_text=text).directory
        except ConfigError:
            before = config.directory
        edit.widened = newly_unrestricted(before, after)
        if edit.widened and not allow_any_sender:
            raise Refused(any_sender_refusal(edit.widened, again or f"repeat the command with {ALLOW_ANY_SENDER}"))
        if new != text:
            replace_atomically(config.users_path, new.encode("utf-8"))


def _confirm(args: argparse.Namespace, config: Config, user: User, address: str, code: str, *, now: float) -> int:
    _pending(user, "sender", address)
    login = normalize_login(user.login)
    with _state_file(config).edit() as state:
        result = state.confirm(login, address, code, now=now)
        if result.outcome is Outcome.CONFIRMED:
            # Inside the state lock: if the users file cannot be written, the state is not
            # written either and the code stays usable.
            with _users_file(config) as edit:
                edit.document.settle(user.login, "sender", address, verified=True)
    if result.outcome is Outcome.CONFIRMED:
        _event("verification_confirmed", user=user.login, sender=address)
        print(f"{address} is verified: SMTP+ user {user.login} may now send as it (authorized_senders).")
        reload_milter(args)
        return 0
    if result.outcome is Outcome.WRONG:
        _event("verification_failed", user=user.login, sender=address, tries_left=result.tries_left)
        raise Refused(f"wrong code for {address}; {result.tries_left} more tries before the code is voided")
    if result.outcome is Outcome.VOIDED:
        _event("verification_voided", user=user.login, sender=address)
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
    _pending(user, "domain", domain)
    login = normalize_login(user.login)
    settings = config.settings.verification
    state_file = _state_file(config)
    attempt = state_file.read().get(login, "domain", domain)
    if attempt is None or attempt.token is None:
        raise Refused(f"no token was handed out for {domain}; run: smtpplus-milter verify start {user.login} {domain}")
    record = txt_record(domain, attempt.token)
    published = state_file.read()
    try:
        resolver = Resolver(settings.resolver)
        found = check_token(resolver, domain, lambda text: published.token_matches(login, domain, text))
        warnings = deliverability_warnings(resolver, domain, settings.relay_ips)
    except DnsFailure as exc:
        raise Refused(f"could not look up {txt_name(domain)}: {exc}; try again later") from None
    for warning in warnings:
        _err(f"warning: {warning}")
    if not found.found:
        if found.published:
            seen = ", ".join(f'"{text}"' for text in found.published)
            raise Refused(
                f"{txt_name(domain)} holds {seen}, which is not the token for {user.login}; "
                f"the record must read: {record}"
            )
        raise Refused(
            f"no TXT record {txt_name(domain)} found (asked {resolver.address}); publish: {record} "
            "(new DNS records can take a while to appear), then run 'verify check' again"
        )
    with state_file.edit() as state:
        if not state.token_matches(login, domain, f"{TOKEN_PREFIX}{attempt.token}"):
            raise Refused(
                f"the verification of {domain} was cancelled or restarted meanwhile; run 'verify check' again"
            )
        state.drop(login, "domain", domain)
        with _users_file(config) as edit:
            edit.document.settle(user.login, "domain", domain, verified=True)
    _event("verification_confirmed", user=user.login, domain=domain, warnings=len(warnings))
    print(f"{domain} is verified: SMTP+ user {user.login} may now send from it (authorized_domains).")
    if warnings:
        print(f"Read the {len(warnings)} warning(s) above: mail from {domain} may still not be delivered.")
    print(f"The TXT record {txt_name(domain)} is no longer needed and may be removed.")
    reload_milter(args)
    return 0


def _cancel(args: argparse.Namespace, config: Config, user: User, kind: Kind, entry: str) -> int:
    _pending(user, kind, entry)
    again = f"smtpplus-milter verify cancel {user.login} {entry} {ALLOW_ANY_SENDER}"
    with _state_file(config).edit() as state:
        state.drop(normalize_login(user.login), kind, entry)
        # Inside the state lock: a refusal here writes neither file, and the code or token stays.
        with _users_file(config, allow_any_sender=args.allow_any_sender, again=again) as edit:
            edit.document.settle(user.login, kind, entry, verified=False)
    _event("verification_cancelled", user=user.login, **{kind: entry})
    any_sender_chosen(edit.widened, "verify cancel")
    print(f"{entry} is no longer pending for SMTP+ user {user.login}; its code or token no longer works.")
    reload_milter(args)
    return 0


# --- listing -------------------------------------------------------------------------------------


def _list(config_path: Path, *, as_json: bool, now: float) -> int:
    config = load(config_path)
    state = _state_file(config).read()
    records: list[dict[str, Any]] = []
    for key in sorted(config.directory.users):
        user = config.directory.users[key]
        pending: list[tuple[Kind, str]] = [("sender", s) for s in sorted(user.pending_senders)]
        pending += [("domain", d) for d in sorted(user.pending_domains)]
        for kind, entry in pending:
            attempt = state.get(key, kind, entry)
            records.append(
                {
                    "login": user.login,
                    "kind": kind,
                    "entry": entry,
                    "age_seconds": None if attempt is None else int(now - attempt.started),
                    "state": describe(attempt, now),
                    "attempt": None if attempt is None else as_record(attempt),
                }
            )
    if as_json:
        print(json.dumps(records, indent=2, ensure_ascii=False))
        return 0
    if not records:
        print("Nothing is pending verification.")
        return 0
    rows = [("LOGIN", "KIND", "ENTRY", "AGE", "STATE")]
    for record in records:
        age = "-" if record["age_seconds"] is None else format_age(record["age_seconds"])
        rows.append((record["login"], record["kind"], record["entry"], age, record["state"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0
