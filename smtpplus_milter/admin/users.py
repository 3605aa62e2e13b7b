"""The ``users`` use cases: add, edit, enable, disable, delete, reset a password, list and show.

Each takes the configuration the command loaded once and typed values (a login, an
:class:`~smtpplus_milter.infra.usersfile.Edit`), changes the files only through
:class:`~smtpplus_milter.admin.store.UsersStore`, and returns what changed: the user as the new
file has it, a new password to show once, notes, the verifications the new entries need. A
mistake is a :class:`~smtpplus_milter.admin.errors.Refused`. Nothing here prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smtpplus_milter.admin import verification
from smtpplus_milter.admin.errors import Refused
from smtpplus_milter.admin.store import Draft, UsersStore
from smtpplus_milter.config import Config
from smtpplus_milter.core.users import User, normalize_login
from smtpplus_milter.core.verification import Kind
from smtpplus_milter.infra.files import FileProblem, read_text
from smtpplus_milter.infra.passwd import PasswdFile, PasswdProblem, generate_password, hash_password, passwd_login
from smtpplus_milter.infra.usersfile import ALLOW_ANY_SENDER, Edit


@dataclass(frozen=True)
class Credentials:
    """A password to show once: only its hash is stored."""

    login: str  # as the operator wrote it (the passwd-file has it lower-case)
    password: str
    created: bool  # a new user, not a new password for an existing one
    active: bool


@dataclass(frozen=True)
class FollowUp:
    """What the entries a change added need next: their verification, or the operator's word logged."""

    attested_senders: tuple[str, ...] = ()  # authorized at once with --verified
    attested_domains: tuple[str, ...] = ()
    pending_senders: tuple[str, ...] = ()  # new in pending_*: their verification is to be started
    pending_domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class Added:
    user: User | None  # as the new users file has it
    credentials: Credentials
    notes: tuple[str, ...]
    follow_up: FollowUp


@dataclass(frozen=True)
class Edited:
    key: str  # the login as the users file spells it
    user: User | None
    widened: tuple[User, ...]  # left free to send as any sender, as the operator allowed
    notes: tuple[str, ...]
    follow_up: FollowUp


@dataclass(frozen=True)
class Activated:
    key: str
    active: bool
    has_password: bool  # False: the passwd-file has no line for it (enable: no login yet)
    passwd_path: Path


@dataclass(frozen=True)
class Deleted:
    key: str
    passwd_path: Path


def checked_login(name: str) -> str:
    """*name* as a login (stripped), or a refusal if a Dovecot passwd-file cannot hold it."""
    try:
        passwd_login(name)
    except PasswdProblem as exc:
        raise Refused(str(exc)) from None
    return name.strip()


def existing_key(draft: Draft, name: str) -> str:
    """The users-file key of *name* (logins are case-insensitive), or a refusal naming it."""
    key = draft.document.key_of(name)
    if key is None:
        raise Refused(f"there is no SMTP+ user {name!r}; see 'smtpplus-milter users list'")
    return key


def _verification_required(config: Config) -> bool:
    return config.settings.verification.required


# --- writing -------------------------------------------------------------------------------------


def add(config: Config, name: str, edit: Edit, *, verified: bool) -> Added:
    """Add the user *name* with a new password; its new entries wait for verification if required."""
    login = checked_login(name)

    def make(draft: Draft) -> str:
        if draft.passwd.get(login) is not None:
            raise Refused(
                f"{draft.passwd_path} already has a line for {login.lower()}; remove it there first "
                "(or add the user to the users file by hand and run 'users reset-password')"
            )
        draft.document.add(login, edit, pending=_verification_required(config) and not verified)
        password = generate_password()
        draft.passwd.set_password(login, hash_password(password), disabled=edit.active is False)
        return password

    written = UsersStore(config).change(make)
    user = written.after.lookup(login)
    credentials = Credentials(login, written.value, created=True, active=edit.active is not False)
    follow_up = _follow_up(config, user, None, verified=verified)
    return Added(user, credentials, written.notes, follow_up)


def edit(config: Config, name: str, change: Edit, *, verified: bool, allow_any_sender: bool) -> Edited:
    """Change the settings of *name*; ``change.active`` also enables or disables its login."""

    def make(draft: Draft) -> tuple[str, User | None]:
        key = draft.document.key_of(name) or name
        before = draft.before.lookup(key)
        pending = _verification_required(config) and not verified
        draft.document.apply(name, change, pending=pending, promote=verified)
        if change.active is not None:
            draft.passwd.set_disabled(key, not change.active)
        return key, before

    written = UsersStore(config).change(
        make,
        allow_any_sender=allow_any_sender,
        again=lambda made: f"the same 'smtpplus-milter users edit {made[0]} ...' with {ALLOW_ANY_SENDER}",
    )
    key, before = written.value
    _forget_promoted(config, key, written.promoted)
    user = written.after.lookup(key)
    follow_up = _follow_up(config, user, before, verified=verified, promoted=bool(written.promoted))
    return Edited(key, user, written.widened, written.notes, follow_up)


def set_active(config: Config, name: str, active: bool) -> Activated:
    """Enable or disable *name*: in the users file (the milter) and in the passwd-file (Dovecot)."""

    def make(draft: Draft) -> tuple[str, bool]:
        key = existing_key(draft, name)
        draft.document.apply(key, Edit(active=active), pending=False)
        return key, draft.passwd.set_disabled(key, not active)

    key, has_password = UsersStore(config).change(make).value
    return Activated(key, active, has_password, config.passwd_path)


def delete(config: Config, name: str) -> Deleted:
    """Remove *name* from both files, and its open verification attempts."""

    def make(draft: Draft) -> str:
        key = existing_key(draft, name)
        draft.document.delete(key)
        draft.passwd.remove(key)
        return key

    key = UsersStore(config).change(make).value
    verification.forget_user(config, key)
    return Deleted(key, config.passwd_path)


def reset_password(config: Config, name: str) -> Credentials:
    """A new password for *name*; the old one stops working. The users file is not written."""

    def make(draft: Draft) -> Credentials:
        key = existing_key(draft, name)
        checked_login(key)
        user = draft.before.lookup(key)
        active = user is not None and user.active
        password = generate_password()
        draft.passwd.set_password(key, hash_password(password), disabled=not active)
        return Credentials(key, password, created=False, active=active)

    return UsersStore(config).change(make).value


def _follow_up(
    config: Config, user: User | None, before: User | None, *, verified: bool, promoted: bool = False
) -> FollowUp:
    """The entries *user* gained: attested with --verified, or new pending ones to verify.

    *promoted*: ``--verified`` moved entries that waited for verification to authorized_*; that
    is an attestation even where verification.required is off now.
    """
    if user is None:
        return FollowUp()
    if verified and (_verification_required(config) or promoted):
        return FollowUp(
            attested_senders=_new(user.authorized_senders, before.authorized_senders if before else None),
            attested_domains=_new(user.authorized_domains, before.authorized_domains if before else None),
        )
    return FollowUp(
        pending_senders=_new(user.pending_senders, before.pending_senders if before else None),
        pending_domains=_new(user.pending_domains, before.pending_domains if before else None),
    )


def _new(now: frozenset[str], before: frozenset[str] | None) -> tuple[str, ...]:
    return tuple(sorted(now - (before or frozenset())))


def _forget_promoted(config: Config, login: str, promoted: tuple[tuple[str, str], ...]) -> None:
    """Drop the open verification attempts of entries --verified authorized: their code or token must not
    linger in the state file (nor show in 'verify list') once the entry no longer waits for it."""
    entries: list[tuple[Kind, str]] = [("sender" if kind == "sender" else "domain", entry) for kind, entry in promoted]
    verification.forget(config, normalize_login(login), entries)


# --- reading -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserRecord:
    """One user as ``users list`` and ``users show`` report it (``--json`` in this key order)."""

    login: str
    active: bool
    priority: int
    list: str | None
    note: str
    authorized_domains: tuple[str, ...]
    authorized_senders: tuple[str, ...]
    pending_domains: tuple[str, ...]
    pending_senders: tuple[str, ...]
    any_sender: bool
    password: str  # set, disabled, none, or unknown (the passwd-file could not be read)
    queue: str
    header: tuple[str, ...]
    footer: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {name: list(value) if isinstance(value, tuple) else value for name, value in vars(self).items()}


def find(config: Config, name: str) -> User:
    """The user *name* (case-insensitive), or a refusal naming it."""
    user = config.directory.lookup(name)
    if user is None:
        raise Refused(f"there is no SMTP+ user {name!r}; see 'smtpplus-milter users list'")
    return user


def records(config: Config) -> list[UserRecord]:
    """Every user, by login."""
    passwd = _read_passwd(config)
    return [_record(config, passwd, config.directory.users[login]) for login in sorted(config.directory.users)]


def record(config: Config, user: User) -> UserRecord:
    return _record(config, _read_passwd(config), user)


def _read_passwd(config: Config) -> PasswdFile | None:
    try:
        return PasswdFile.parse(read_text(config.passwd_path, missing_ok=True))
    except FileProblem:
        return None  # e.g. not root: the table shows "unknown"


def _password_state(passwd: PasswdFile | None, login: str) -> str:
    if passwd is None:
        return "unknown"
    entry = passwd.get(login)
    if entry is None:
        return "none"
    return "disabled" if entry.disabled else "set"


def _record(config: Config, passwd: PasswdFile | None, user: User) -> UserRecord:
    lists = config.settings.lists
    section = lists[user.list] if user.list else None
    return UserRecord(
        login=user.login,
        active=user.active,
        priority=user.priority,
        list=user.list,
        note=user.note,
        authorized_domains=tuple(sorted(user.authorized_domains)),
        authorized_senders=tuple(sorted(user.authorized_senders)),
        pending_domains=tuple(sorted(user.pending_domains)),
        pending_senders=tuple(sorted(user.pending_senders)),
        any_sender=user.unrestricted,
        password=_password_state(passwd, user.login),
        queue=config.settings.priority.queues[user.priority],
        header=_variants(section.header) if section else (),
        footer=_variants(section.footer) if section else (),
    )


def _variants(section: Any) -> tuple[str, ...]:
    if section is None:
        return ()
    return tuple(name for name in ("text", "html") if getattr(section, name))
