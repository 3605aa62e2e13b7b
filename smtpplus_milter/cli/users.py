"""``smtpplus-milter users ...``: manage SMTP+ users and their SASL credentials.

Every write follows one path (:func:`_transaction`): lock the users file and the passwd-file,
read both, make the change in memory, validate the new users file with the loader that
``check-config`` and a reload use, then replace the files atomically. The passwd-file is the
door: a new login is written there last (after the users file that restricts it) and a login
that goes away is removed there first. Nothing is written when anything fails.

Inside that transaction, too, the rule that no change turns a restricted user into one that may
send as any sender unless the operator asks for it (``--allow-any-sender``): a user with no
authorized or pending entry at all is unrestricted, so removing the last one is not a small edit.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smtpplus_milter.config import Config, ConfigError, load_config
from smtpplus_milter.core.users import Directory, User, newly_unrestricted, normalize_login
from smtpplus_milter.infra.files import FileProblem, Ownership, locked, read_text, replace_atomically
from smtpplus_milter.infra.passwd import PasswdFile, PasswdProblem, generate_password, hash_password, passwd_login
from smtpplus_milter.infra.usersfile import ALLOW_ANY_SENDER, Edit, EditProblem, UsersDocument, any_sender_refusal

DEFAULT_PID_FILE = Path("/run/smtpplus/milter.pid")
RELOAD_HINT = "systemctl reload smtpplus-milter"
SERVICE = "smtpplus-milter.service"


class Refused(Exception):
    """A user mistake or a state that forbids the change: exit 1 with this message."""


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
    reload_options(add)

    edit = actions.add_parser("edit", help="change a user's settings")
    add_config(edit)
    edit.add_argument("name", metavar="NAME")
    _entry_options(edit, editing=True)
    reload_options(edit)

    for name, text in (
        ("delete", "remove a user and its password"),
        ("enable", "let a disabled user log in and send again"),
        ("disable", "refuse the user's login (Dovecot) and its mail (milter); the password is kept"),
        ("reset-password", "give the user a new password and print it (once); the old one stops working"),
    ):
        action = actions.add_parser(name, help=text)
        add_config(action)
        action.add_argument("name", metavar="NAME")
        reload_options(action)


def allow_any_sender_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        ALLOW_ANY_SENDER,
        action="store_true",
        help="accept that the user is left with no authorized or pending domains or senders, so that it may "
        "send as ANY sender; without it, a change that would do that to a restricted user is refused",
    )


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
    allow_any_sender_option(parser)
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


def reload_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reload", action="store_true", help="tell the running milter to reread the users file (SIGHUP)"
    )
    parser.add_argument(
        "--pid-file",
        type=Path,
        default=DEFAULT_PID_FILE,
        metavar="FILE",
        help="the pid file 'smtpplus-milter run --pid-file' writes (default %(default)s)",
    )


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


# --- entry point ---------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    try:
        return _dispatch(args)
    except Refused as exc:
        _err(f"smtpplus-milter users {args.users_command}: {exc}")
        return 1
    except (FileProblem, EditProblem, PasswdProblem) as exc:
        _err(f"smtpplus-milter users {args.users_command}: {exc}; nothing was changed")
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    command = args.users_command
    if command == "list":
        return _list(args.config, as_json=args.json)
    if command == "show":
        return _show(args.config, args.name, as_json=args.json)
    if command == "add":
        return _add(args, _edit_from(args, editing=False))
    if command == "edit":
        edit = _edit_from(args, editing=True)
        if edit.empty():
            raise Refused("nothing to change; give at least one option (see 'users edit --help')")
        return _edit(args, edit)
    if command in ("enable", "disable"):
        return _set_active(args, command == "enable")
    if command == "delete":
        return _delete(args)
    if command == "reset-password":
        return _reset_password(args)
    raise Refused(f"unknown action {command}")  # pragma: no cover - argparse enforces the choices


def _is_utf8(text: str) -> bool:
    # Arguments that were not UTF-8 arrive with surrogate escapes, which no file may hold.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _err(text: str) -> None:
    print(text, file=sys.stderr)


def audit_event(event: str, **fields: Any) -> None:
    """A structured log line (stderr: JSON, or key=value on a terminal) for the audit trail."""
    from smtpplus_milter.observe import log as logsetup

    logsetup.configure()
    operator = os.environ.get("SUDO_USER") or getpass.getuser()
    logsetup.get_logger().info(event, operator=operator, **fields)


def any_sender_chosen(users: list[User], command: str) -> None:
    """Say and log that the operator let *users* send as any sender (``--allow-any-sender``)."""
    for user in users:
        _err(
            f"note: {user.login} may now send as ANY sender: it has no authorized or pending domains or senders "
            f"left ({ALLOW_ANY_SENDER} given); logged"
        )
        audit_event("any_sender_allowed", user=user.login, command=command)


# --- the one write path --------------------------------------------------------------------------


@dataclass
class _Files:
    config: Config
    users_text: str
    document: UsersDocument
    passwd_path: Path
    passwd: PasswdFile
    passwd_text: str | None
    after: Directory | None = None  # the users as the validated new text has them
    widened: list[User] = field(default_factory=list)  # restricted before, any sender after (allowed)


def load(config_path: Path) -> Config:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        lines = "\n  ".join(str(problem) for problem in exc.problems)
        raise Refused(f"the configuration does not validate; fix it first (nothing was changed):\n  {lines}") from None


def passwd_path_of(config: Config) -> Path:
    return config.passwd_path


@contextlib.contextmanager
def _transaction(config_path: Path) -> Iterator[_Files]:
    config = load(config_path)
    passwd_path = passwd_path_of(config)
    # Always users file first, then passwd-file: two writers can never wait for each other.
    with locked(config.users_path), locked(passwd_path):
        # Reread under the lock: another writer may have changed the files since.
        config = load(config_path)
        users_text = read_text(config.users_path) or ""
        passwd_text = read_text(passwd_path, missing_ok=True)
        document = UsersDocument(users_text)
        yield _Files(config, users_text, document, passwd_path, PasswdFile.parse(passwd_text), passwd_text)


def _validated(files: _Files, *, allow_any_sender: bool = False, again: str = "") -> str:
    """The new users file text, if it passes the same validation as check-config.

    It also must not leave a restricted user free to send as any sender, unless *allow_any_sender*
    (then the users it widens are in ``files.widened``). *again* is the command that would.
    """
    text = files.document.dump()
    try:
        after = load_config(files.config.path, users_text=text).directory
    except ConfigError as exc:
        lines = "\n  ".join(str(problem) for problem in exc.problems)
        raise Refused(
            "the users file would not validate after this change (line numbers as the file would be); "
            f"nothing was changed:\n  {lines}"
        ) from None
    # files.config was reread under the lock: this compares with the file as it is now.
    widened = newly_unrestricted(files.config.directory, after)
    if widened and not allow_any_sender:
        raise Refused(any_sender_refusal(widened, again or f"repeat the command with {ALLOW_ANY_SENDER}"))
    files.after, files.widened = after, widened
    return text


def _new_passwd_ownership() -> Ownership:
    """root:dovecot 0640 for a passwd-file we create: Dovecot's auth process runs as dovecot."""
    import grp

    try:
        gid = grp.getgrnam("dovecot").gr_gid
    except KeyError:
        gid = os.getegid()
    uid = os.geteuid()
    if uid != 0:
        gid = os.getegid() if gid not in os.getgroups() else gid
    return Ownership(0o640, 0 if uid == 0 else uid, gid)


def _write_users(files: _Files, text: str) -> None:
    if text != files.users_text:
        replace_atomically(files.config.users_path, text.encode("utf-8"))


def _write_passwd(files: _Files) -> None:
    text = files.passwd.render()
    if text != (files.passwd_text or ""):
        replace_atomically(files.passwd_path, text.encode("utf-8"), new_file=_new_passwd_ownership(), newer_mtime=True)


def _login(name: str) -> str:
    try:
        passwd_login(name)
    except PasswdProblem as exc:
        raise Refused(str(exc)) from None
    return name.strip()


# --- the actions --------------------------------------------------------------------------------


def _add(args: argparse.Namespace, edit: Edit) -> int:
    name = _login(args.name)
    with _transaction(args.config) as files:
        if files.passwd.get(name) is not None:
            raise Refused(
                f"{files.passwd_path} already has a line for {name.lower()}; remove it there first "
                "(or add the user to the users file by hand and run 'users reset-password')"
            )
        pending = files.config.settings.verification.required and not args.verified
        files.document.add(name, edit, pending=pending)
        text = _validated(files)
        assert files.after is not None
        added = files.after.lookup(name)
        password = generate_password()
        files.passwd.set_password(name, hash_password(password), disabled=edit.active is False)
        _write_users(files, text)  # the restrictions first ...
        _write_passwd(files)  # ... then the login
        active = edit.active is not False
    _notes(files)
    _print_credentials(name, password, created=True, active=active)
    if added is not None and added.unrestricted:
        # Allowed: a user created without entries is unrestricted by design. Said loudly, because
        # a forgotten --authorized-domain looks exactly like this.
        chosen = f" ({ALLOW_ANY_SENDER} given)" if args.allow_any_sender else ""
        _err(
            f"note: {added.login} has no authorized domains or senders: it may send as ANY sender{chosen}. "
            f"To restrict it: smtpplus-milter users edit {added.login} --authorized-domain D / --authorized-sender A"
        )
    _after_entries(args, files.config, name, None)
    reload_milter(args)
    return 0


def _after_entries(
    args: argparse.Namespace, old: Config, name: str, before: User | None, *, promoted: bool = False
) -> None:
    """Start verification of the entries that just became pending, or log the operator's attestation.

    *promoted*: ``--verified`` moved entries that waited for verification to authorized_*; that is
    an attestation even where verification.required is off now.
    """
    config = load(old.path)
    user = config.directory.lookup(name)
    if user is None:
        return
    if args.verified and (config.settings.verification.required or promoted):
        senders = sorted(user.authorized_senders - (before.authorized_senders if before else frozenset()))
        domains = sorted(user.authorized_domains - (before.authorized_domains if before else frozenset()))
        if senders or domains:
            audit_event("verification_attested", user=user.login, senders=senders, domains=domains)
            _err(f"note: {', '.join([*senders, *domains])} authorized without verification (--verified); logged")
        return
    senders = sorted(user.pending_senders - (before.pending_senders if before else frozenset()))
    domains = sorted(user.pending_domains - (before.pending_domains if before else frozenset()))
    if not (senders or domains):
        return
    from smtpplus_milter.cli.verify import start_new

    _err("note: verification.required is on: the new entries authorize nothing until they are verified")
    for problem in start_new(config, user.login, senders, domains, now=time.time()):
        _err(f"warning: verification not started for {problem}")


def _edit(args: argparse.Namespace, edit: Edit) -> int:
    with _transaction(args.config) as files:
        key = files.document.key_of(args.name) or args.name
        before = files.config.directory.lookup(key)
        pending = files.config.settings.verification.required and not args.verified
        files.document.apply(args.name, edit, pending=pending, promote=args.verified)
        text = _validated(
            files,
            allow_any_sender=args.allow_any_sender,
            again=f"the same 'smtpplus-milter users edit {key} ...' with {ALLOW_ANY_SENDER}",
        )
        if edit.active is not None:
            files.passwd.set_disabled(key, not edit.active)
        if edit.active is False:
            _write_passwd(files)
            _write_users(files, text)
        else:
            _write_users(files, text)
            _write_passwd(files)
        user = files.after.lookup(key) if files.after else None
    _notes(files)
    any_sender_chosen(files.widened, "users edit")
    if user is not None and user.unrestricted and not files.widened:
        _err(f"note: {user.login} has no authorized domains or senders: it may send as ANY sender")
    _forget_promoted(files.config, key, files.document.promoted)
    print(f"SMTP+ user {key} changed.")
    _after_entries(args, files.config, key, before, promoted=bool(files.document.promoted))
    reload_milter(args)
    return 0


def _set_active(args: argparse.Namespace, active: bool) -> int:
    with _transaction(args.config) as files:
        key = _existing_key(files, args.name)
        files.document.apply(key, Edit(active=active), pending=False)
        text = _validated(files)
        has_password = files.passwd.set_disabled(key, not active)
        if active:
            _write_users(files, text)
            _write_passwd(files)
        else:
            _write_passwd(files)  # Dovecot refuses the login from now on ...
            _write_users(files, text)  # ... and the milter, after the reload, any session still open
    if active:
        print(f"SMTP+ user {key} enabled.")
        if not has_password:
            _err(f"note: {key} has no password in {files.passwd_path}; run 'users reset-password {key}'")
    else:
        print(f"SMTP+ user {key} disabled: Dovecot refuses its login; the milter refuses its mail after the reload.")
    reload_milter(args)
    return 0


def _existing_key(files: _Files, name: str) -> str:
    """The users-file key of *name* (logins are case-insensitive), or a refusal naming it."""
    key: str | None = files.document.key_of(name)
    if key is None:
        raise Refused(f"there is no SMTP+ user {name!r}; see 'smtpplus-milter users list'")
    return key


def _delete(args: argparse.Namespace) -> int:
    with _transaction(args.config) as files:
        key = _existing_key(files, args.name)
        files.document.delete(key)
        text = _validated(files)
        files.passwd.remove(key)
        _write_passwd(files)
        _write_users(files, text)
    _forget_verifications(files.config, key)
    print(f"SMTP+ user {key} deleted (users file and {files.passwd_path}).")
    reload_milter(args)
    return 0


def _reset_password(args: argparse.Namespace) -> int:
    with _transaction(args.config) as files:
        key = _existing_key(files, args.name)
        _login(key)
        user = files.config.directory.lookup(key)
        active = user is not None and user.active
        password = generate_password()
        files.passwd.set_password(key, hash_password(password), disabled=not active)
        _write_passwd(files)
    _print_credentials(key, password, created=False, active=active)
    # Dovecot rereads the passwd-file by itself; the milter does not read it.
    return 0


def _forget_promoted(config: Config, login: str, promoted: list[tuple[str, str]]) -> None:
    """Drop the open verification attempts of entries --verified authorized: their code or token must not
    linger in the state file (nor show in 'verify list') once the entry no longer waits for it."""
    from smtpplus_milter.infra.state import StateFile

    path = config.state_path
    if not promoted or not path.exists():
        return
    with StateFile(path).edit() as state:
        for kind, entry in promoted:
            state.drop(normalize_login(login), "sender" if kind == "sender" else "domain", entry)


def _forget_verifications(config: Config, login: str) -> None:
    from smtpplus_milter.infra.state import StateFile

    path = config.state_path
    if path.exists():
        with StateFile(path).edit() as state:
            state.drop_user(normalize_login(login))


def _notes(files: _Files) -> None:
    for note in files.document.notes:
        _err(f"note: {note}")


def _print_credentials(login: str, password: str, *, created: bool, active: bool) -> None:
    print(f"SMTP+ user {login} {'added' if created else 'has a new password'}.")
    print(f"  login:    {login.lower()}")
    print(f"  password: {password}")
    print("The password is shown only this once; only its hash is stored. Give it to the application now.")
    if not active:
        print(f"The user is disabled: the login works only after 'smtpplus-milter users enable {login}'.")


NOT_RUNNING = "note: no running milter found; it reads the new users file when it starts"


def reload_milter(args: argparse.Namespace) -> None:
    if not args.reload:
        # The hint only where there is something to reload: right after the install (milter not
        # started yet) it sent the operator to a reload that fails.
        if milter_seems_running(args):
            _err(
                f"note: the running milter keeps the old users file until it reloads: {RELOAD_HINT} (or pass --reload)"
            )
        else:
            _err(NOT_RUNNING)
        return
    pid_file: Path = args.pid_file
    try:
        pid = int(pid_file.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        if not milter_seems_running(args):
            _err(NOT_RUNNING)
            return
        _err(f"note: no milter pid in {pid_file}; reload it yourself: {RELOAD_HINT}")
        return
    if pid <= 1:
        _err(f"note: {pid_file} holds pid {pid}, which is no milter; reload it yourself: {RELOAD_HINT}")
        return
    # A pidfd pins the process: if it ends and the pid is reused while we check, the signal
    # below fails instead of reaching the newcomer.
    pidfd: int | None
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        _err(f"note: pid {pid} from {pid_file} is not running; reload it yourself: {RELOAD_HINT}")
        return
    except (OSError, AttributeError):
        pidfd = None  # an old kernel: fall back to kill()
    try:
        _signal_if_milter(args, pid_file, pid, pidfd)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def milter_seems_running(args: argparse.Namespace) -> bool:
    """Whether a milter appears to run: only to choose the words of a note, never to signal anything.

    Passive looks only (no connection to the milter socket, which would be a milter session):
    the pid file names a live smtpplus process, something listens on the configured milter
    socket, or systemd has a main process for the unit.
    """
    try:
        pid = int(Path(args.pid_file).read_text(encoding="ascii").strip())
        if pid > 1 and b"smtpplus" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return True
    except (OSError, ValueError):
        pass
    spec = _milter_socket(args)
    if spec is not None and _listening_socket_inodes(spec):
        return True
    return _systemd_main_pid() is not None


def _signal_if_milter(args: argparse.Namespace, pid_file: Path, pid: int, pidfd: int | None) -> None:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        cmdline = b""
    # A stale pid file may name a process that is not ours any more: never signal that.
    if b"smtpplus" not in cmdline:
        _err(f"note: pid {pid} from {pid_file} is not a running smtpplus-milter; reload it yourself: {RELOAD_HINT}")
        return
    # The command line is no proof: the pid file is written by the service user, and any process
    # can be named "smtpplus...". Only the unit's main process or the holder of the milter's
    # listening socket is the milter; root signals nothing else.
    spec = _milter_socket(args)
    proof = _confirmed_milter(pid, spec)
    if proof is None:
        where = f" and does not hold the milter socket {spec}" if spec else ""
        _err(
            f"note: pid {pid} from {pid_file} is not confirmed as the running milter (it is not the MainPID of "
            f"{SERVICE}{where}); not signalled. Reload it yourself: {RELOAD_HINT}"
        )
        return
    try:
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signal.SIGHUP)
        else:
            os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        _err(f"note: cannot signal pid {pid} ({exc.strerror}); reload it yourself: {RELOAD_HINT}")
        return
    _err(f"reload: sent SIGHUP to the milter (pid {pid}): {proof}")


def _milter_socket(args: argparse.Namespace) -> str | None:
    try:
        return str(load_config(args.config).settings.milter.socket)
    except ConfigError:
        return None


def _confirmed_milter(pid: int, spec: str | None) -> str | None:
    """How we know *pid* is the running milter, or None if nothing says so."""
    if _systemd_main_pid() == pid:
        return f"it is the MainPID of {SERVICE}"
    if spec is not None:
        inodes = _listening_socket_inodes(spec)
        if inodes and inodes & _socket_inodes_of(pid):
            return f"it holds the milter socket {spec}"
    return None


def _systemd_main_pid() -> int | None:
    if not Path("/run/systemd/system").is_dir():  # systemd is not the init: no unit to ask
        return None
    try:
        done = subprocess.run(
            ["systemctl", "show", "-p", "MainPID", "--value", SERVICE],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        main = int(done.stdout.strip())
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return main if done.returncode == 0 and main > 0 else None


def _listening_socket_inodes(spec: str) -> set[int]:
    """Inodes of the listening sockets behind a milter socket spec (unix:PATH, inet[6]:PORT@HOST)."""
    kind, _, rest = spec.partition(":")
    inodes: set[int] = set()
    try:
        if kind in ("unix", "local"):
            wanted = os.path.normpath(rest)
            for fields in _proc_table("/proc/net/unix", 7):
                # Num RefCount Protocol Flags Type St Inode Path; flag 0x10000 = listening (__SO_ACCEPTCON)
                if len(fields) == 8 and os.path.normpath(fields[7]) == wanted and int(fields[3], 16) & 0x10000:
                    inodes.add(int(fields[6]))
            return inodes
        port = int(rest.partition("@")[0])
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for fields in _proc_table(table, None):
                # sl local_address rem_address st ... inode; st 0A = LISTEN
                if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                    inodes.add(int(fields[9]))
    except ValueError:
        return set()  # a line we cannot read confirms nothing
    return inodes


def _proc_table(path: str, maxsplit: int | None) -> list[list[str]]:
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[1:]
    except OSError:
        return []
    return [line.split(None, -1 if maxsplit is None else maxsplit) for line in lines]


def _socket_inodes_of(pid: int) -> set[int]:
    inodes: set[int] = set()
    directory = f"/proc/{pid}/fd"
    try:
        names = os.listdir(directory)
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(f"{directory}/{name}")
        except OSError:
            continue
        if target.startswith("socket:[") and target.endswith("]") and target[8:-1].isdigit():
            inodes.add(int(target[8:-1]))
    return inodes


# --- reading -------------------------------------------------------------------------------------


def _password_state(passwd: PasswdFile | None, login: str) -> str:
    if passwd is None:
        return "unknown"
    entry = passwd.get(login)
    if entry is None:
        return "none"
    return "disabled" if entry.disabled else "set"


def _read_passwd(config: Config) -> PasswdFile | None:
    try:
        return PasswdFile.parse(read_text(passwd_path_of(config), missing_ok=True))
    except FileProblem:
        return None  # e.g. not root: the table shows "unknown"


def _user_record(config: Config, passwd: PasswdFile | None, login: str) -> dict[str, Any]:
    user = config.directory.users[login]
    lists = config.settings.lists
    return {
        "login": user.login,
        "active": user.active,
        "priority": user.priority,
        "list": user.list,
        "note": user.note,
        "authorized_domains": sorted(user.authorized_domains),
        "authorized_senders": sorted(user.authorized_senders),
        "pending_domains": sorted(user.pending_domains),
        "pending_senders": sorted(user.pending_senders),
        "any_sender": user.unrestricted,
        "password": _password_state(passwd, login),
        "queue": config.settings.priority.queues[user.priority],
        "header": _variants(lists[user.list].header) if user.list else [],
        "footer": _variants(lists[user.list].footer) if user.list else [],
    }


def _variants(section: Any) -> list[str]:
    if section is None:
        return []
    return [name for name in ("text", "html") if getattr(section, name)]


def _list(config_path: Path, *, as_json: bool) -> int:
    config = load(config_path)
    passwd = _read_passwd(config)
    records = [_user_record(config, passwd, login) for login in sorted(config.directory.users)]
    if as_json:
        print(json.dumps(records, indent=2, ensure_ascii=False))
        return 0
    rows = [("LOGIN", "ACTIVE", "PRIO", "LIST", "PASSWORD", "SENDERS", "NOTE")]
    for record in records:
        allowed = [*record["authorized_domains"], *record["authorized_senders"]]
        senders = "(any)" if record["any_sender"] else ";".join(allowed) or "(pending only)"
        rows.append(
            (
                record["login"],
                "yes" if record["active"] else "no",
                str(record["priority"]),
                record["list"] or "-",
                record["password"],
                senders if len(senders) <= 40 else senders[:37] + "...",
                record["note"],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


def _show(config_path: Path, name: str, *, as_json: bool) -> int:
    config = load(config_path)
    user = config.directory.lookup(name)
    if user is None:
        raise Refused(f"there is no SMTP+ user {name!r}; see 'smtpplus-milter users list'")
    record = _user_record(config, _read_passwd(config), user.login)
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
