"""``smtpplus-milter users ...``: the options, the call of the use case, and what is printed.

The use cases (and the one way the users file and the passwd-file are written) are in
:mod:`smtpplus_milter.admin.users` and :mod:`smtpplus_milter.admin.store`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from smtpplus_milter.admin import users as admin
from smtpplus_milter.admin import verification
from smtpplus_milter.admin.errors import Refused
from smtpplus_milter.cli import common
from smtpplus_milter.cli.common import err
from smtpplus_milter.config import Config
from smtpplus_milter.core.users import User
from smtpplus_milter.infra.usersfile import ALLOW_ANY_SENDER, Edit

# --- argument parsing --------------------------------------------------------------------------


def add_parsers(commands: Any, add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    users = commands.add_parser("users", help="list, add, change and remove SMTP+ users and their passwords")
    actions = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="all users as a table")
    add_config(listing)
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")

    show = actions.add_parser("show", help="one user in detail")
    add_config(show)
    show.add_argument("name", metavar="NAME")
    show.add_argument("--json", action="store_true", help="JSON instead of text")

    add = actions.add_parser("add", help="add a user and print its new password (once)")
    add_config(add)
    add.add_argument("name", metavar="NAME", help="the SASL login")
    _entry_options(add, editing=False)
    common.reload_options(add)

    edit = actions.add_parser("edit", help="change a user's settings")
    add_config(edit)
    edit.add_argument("name", metavar="NAME")
    _entry_options(edit, editing=True)
    common.reload_options(edit)

    for name, text in (
        ("delete", "remove a user and its password"),
        ("enable", "let a disabled user log in and send again"),
        ("disable", "refuse the user's login (Dovecot) and its mail (milter); the password is kept"),
        ("reset-password", "give the user a new password and print it (once); the old one stops working"),
    ):
        action = actions.add_parser(name, help=text)
        add_config(action)
        action.add_argument("name", metavar="NAME")
        common.reload_options(action)


def _entry_options(parser: argparse.ArgumentParser, *, editing: bool) -> None:
    parser.add_argument("--priority", type=int, metavar="N", help="default priority, 1 (very high) .. 5 (very low)")
    parser.add_argument("--list", metavar="L", help="the list (header/footer group) from the config file")
    parser.add_argument("--note", metavar="TEXT", help="free text for the operators")
    parser.add_argument(
        "--authorized-domain",
        action="append",
        default=[],
        metavar="D",
        help="a domain this user may send from (repeat it, or separate with ';')",
    )
    parser.add_argument(
        "--authorized-sender",
        action="append",
        default=[],
        metavar="A",
        help="an address this user may send as (repeat it, or separate with ';')",
    )
    parser.add_argument(
        "--verified",
        action="store_true",
        help="with verification.required: authorize the new entries at once, on your own word "
        "(logged as verification_attested) instead of waiting for their verification",
    )
    common.allow_any_sender_option(parser)
    if not editing:
        parser.add_argument("--inactive", action="store_true", help="add the user disabled")
        return
    state = parser.add_mutually_exclusive_group()
    state.add_argument("--active", dest="active", action="store_const", const=True, help="same as 'users enable'")
    state.add_argument("--inactive", dest="active", action="store_const", const=False, help="same as 'users disable'")
    parser.add_argument("--remove-authorized-domain", action="append", default=[], metavar="D")
    parser.add_argument("--remove-authorized-sender", action="append", default=[], metavar="A")
    parser.add_argument("--clear-note", action="store_true", help="remove the note")
    parser.add_argument("--clear-priority", action="store_true", help="use priority.default from the config")
    parser.add_argument("--clear-list", action="store_true", help="no list: no header/footer")


def _edit_from(args: argparse.Namespace, *, editing: bool) -> Edit:
    for value in [args.name, args.note, args.list, *args.authorized_domain, *args.authorized_sender]:
        if value is not None and not _is_utf8(value):
            raise Refused(f"{value.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8; type it again")
    if editing:
        for option, value, clear in (
            ("--note", args.note, args.clear_note),
            ("--priority", args.priority, args.clear_priority),
            ("--list", args.list, args.clear_list),
        ):
            if value is not None and clear:
                raise Refused(f"give either {option} or --clear-{option[2:]}, not both")
    return Edit(
        active=(False if args.inactive else None) if not editing else args.active,
        priority=args.priority,
        clear_priority=editing and args.clear_priority,
        list_name=args.list,
        clear_list=editing and args.clear_list,
        note=args.note,
        clear_note=editing and args.clear_note,
        add_domains=args.authorized_domain,
        add_senders=args.authorized_sender,
        remove_domains=args.remove_authorized_domain if editing else [],
        remove_senders=args.remove_authorized_sender if editing else [],
    )


def _is_utf8(text: str) -> bool:
    # Arguments that were not UTF-8 arrive with surrogate escapes, which no file may hold.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- entry point ---------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    return common.guarded(f"users {args.users_command}", lambda: _dispatch(args))


def _dispatch(args: argparse.Namespace) -> int:
    command = args.users_command
    # The options first: a mistake in them is reported whatever state the files are in.
    edit = _edit_from(args, editing=command == "edit") if command in ("add", "edit") else Edit()
    if command == "edit" and edit.empty():
        raise Refused("nothing to change; give at least one option (see 'users edit --help')")
    if command == "add":
        admin.checked_login(args.name)
    config = common.load_or_report(args.config, command=f"users {command}", headline=common.FIX_FIRST)
    if config is None:
        return 1
    if command == "list":
        return _list(config, as_json=args.json)
    if command == "show":
        return _show(config, args.name, as_json=args.json)
    if command == "add":
        return _add(args, config, edit)
    if command == "edit":
        return _edit(args, config, edit)
    if command in ("enable", "disable"):
        return _set_active(args, config, command == "enable")
    if command == "delete":
        return _delete(args, config)
    if command == "reset-password":
        return _reset_password(config, args.name)
    raise Refused(f"unknown action {command}")  # pragma: no cover - argparse enforces the choices


# --- the actions --------------------------------------------------------------------------------


def _add(args: argparse.Namespace, config: Config, edit: Edit) -> int:
    added = admin.add(config, args.name, edit, verified=args.verified)
    _notes(added.notes)
    _print_credentials(added.credentials)
    user = added.user
    if user is not None and user.unrestricted:
        # Allowed: a user created without entries is unrestricted by design. Said loudly, because
        # a forgotten --authorized-domain looks exactly like this.
        chosen = f" ({ALLOW_ANY_SENDER} given)" if args.allow_any_sender else ""
        err(
            f"note: {user.login} has no authorized domains or senders: it may send as ANY sender{chosen}. "
            f"To restrict it: smtpplus-milter users edit {user.login} --authorized-domain D / --authorized-sender A"
        )
    _follow_up(config, user, added.follow_up)
    common.reload_milter(args, config)
    return 0


def _edit(args: argparse.Namespace, config: Config, edit: Edit) -> int:
    edited = admin.edit(config, args.name, edit, verified=args.verified, allow_any_sender=args.allow_any_sender)
    _notes(edited.notes)
    common.any_sender_chosen(edited.widened, "users edit")
    user = edited.user
    if user is not None and user.unrestricted and not edited.widened:
        err(f"note: {user.login} has no authorized domains or senders: it may send as ANY sender")
    print(f"SMTP+ user {edited.key} changed.")
    _follow_up(config, user, edited.follow_up)
    common.reload_milter(args, config)
    return 0


def _follow_up(config: Config, user: User | None, follow_up: admin.FollowUp) -> None:
    """Log the operator's attestation of entries authorized with --verified, or start the verifications."""
    if user is None:
        return
    attested = [*follow_up.attested_senders, *follow_up.attested_domains]
    if attested:
        senders, domains = list(follow_up.attested_senders), list(follow_up.attested_domains)
        common.audit_event("verification_attested", user=user.login, senders=senders, domains=domains)
        err(f"note: {', '.join(attested)} authorized without verification (--verified); logged")
        return
    if not (follow_up.pending_senders or follow_up.pending_domains):
        return
    err("note: verification.required is on: the new entries authorize nothing until they are verified")
    started, problems = verification.start_pending(
        config, user, follow_up.pending_senders, follow_up.pending_domains, now=time.time()
    )
    for one in started:
        common.report_started(one)
    for problem in problems:
        err(f"warning: verification not started for {problem}")


def _set_active(args: argparse.Namespace, config: Config, active: bool) -> int:
    done = admin.set_active(config, args.name, active)
    key = done.key
    if active:
        print(f"SMTP+ user {key} enabled.")
        if not done.has_password:
            err(f"note: {key} has no password in {done.passwd_path}; run 'users reset-password {key}'")
    else:
        print(f"SMTP+ user {key} disabled: Dovecot refuses its login; the milter refuses its mail after the reload.")
    common.reload_milter(args, config)
    return 0


def _delete(args: argparse.Namespace, config: Config) -> int:
    deleted = admin.delete(config, args.name)
    print(f"SMTP+ user {deleted.key} deleted (users file and {deleted.passwd_path}).")
    common.reload_milter(args, config)
    return 0


def _reset_password(config: Config, name: str) -> int:
    _print_credentials(admin.reset_password(config, name))
    # Dovecot rereads the passwd-file by itself; the milter does not read it.
    return 0


def _notes(notes: tuple[str, ...]) -> None:
    for note in notes:
        err(f"note: {note}")


def _print_credentials(credentials: admin.Credentials) -> None:
    login = credentials.login
    print(f"SMTP+ user {login} {'added' if credentials.created else 'has a new password'}.")
    print(f"  login:    {login.lower()}")
    print(f"  password: {credentials.password}")
    print("The password is shown only this once; only its hash is stored. Give it to the application now.")
    if not credentials.active:
        print(f"The user is disabled: the login works only after 'smtpplus-milter users enable {login}'.")


# --- reading -------------------------------------------------------------------------------------


def _list(config: Config, *, as_json: bool) -> int:
    records = admin.records(config)
    if as_json:
        print(json.dumps([record.as_dict() for record in records], indent=2, ensure_ascii=False))
        return 0
    rows = [("LOGIN", "ACTIVE", "PRIO", "LIST", "PASSWORD", "SENDERS", "NOTE")]
    for record in records:
        allowed = [*record.authorized_domains, *record.authorized_senders]
        senders = "(any)" if record.any_sender else ";".join(allowed) or "(pending only)"
        rows.append(
            (
                record.login,
                "yes" if record.active else "no",
                str(record.priority),
                record.list or "-",
                record.password,
                senders if len(senders) <= 40 else senders[:37] + "...",
                record.note,
            )
        )
    common.print_table(rows)
    return 0


def _show(config: Config, name: str, *, as_json: bool) -> int:
    user = admin.find(config, name)
    record = admin.record(config, user).as_dict()
    if as_json:
        print(json.dumps(record, indent=2, ensure_ascii=False))
        return 0
    for key, value in record.items():
        if key == "any_sender":
            # Said in words: "any_sender: True" is easy to read past, and it is the one line that matters.
            key, value = "senders", _senders_in_words(user)
        shown = (";".join(value) or "-") if isinstance(value, list) else value
        print(f"{key + ':':<20}{shown}")
    return 0


def _senders_in_words(user: User) -> str:
    if user.unrestricted:
        return "ANY (no authorized domains or senders)"
    if user.authorized_domains or user.authorized_senders:
        return "only the authorized domains and senders above"
    return "none yet (its entries await verification)"
