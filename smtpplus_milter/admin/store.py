"""The one way the users file and the Dovecot passwd-file are changed: :meth:`UsersStore.change`.

Every writer of either file (``users add/edit/delete/enable/disable/reset-password``, ``verify
confirm/check/cancel``, the promotion of pending entries with ``--verified``) goes through it:

1. lock the users file, then the passwd-file. Always in this order, so two writers never wait for
   each other. A use case that also changes the verification state file takes that lock first:
   state file, then users file, then passwd-file. (``users add/edit`` start verifications only
   after :meth:`UsersStore.change` has returned and released its locks.)
2. read both again under the locks: another writer may have changed them since the command loaded
   the configuration. What the users file says now is the "before" of the rule in step 5.
3. let the caller change both in memory (a :class:`Draft`).
4. validate the new users text with :func:`~smtpplus_milter.config.load_config` (``users_text=``),
   the loader that ``check-config`` and a reload of the milter use (:class:`WouldNotValidate`).
5. refuse a change that leaves a restricted user free to send as any sender unless the operator
   allowed it (``--allow-any-sender``): a user with no authorized or pending entry at all is
   unrestricted, so removing the last one is not a small edit.
6. write what changed, in the order the passwd-file's role demands. The passwd-file is the door
   (Dovecot checks every SMTP AUTH against it; the milter never reads it): a change that lets a
   login in (a new line, a line enabled again, a new password) writes the users file first, so
   that the login never works before the restrictions that go with it; a change that shuts a
   login out (a line removed or disabled) writes the passwd-file first, so that the login stops
   working before its restrictions go. If the second write fails after a grant, the users file is
   put back as it was; after a removal the passwd-file is not put back, which would let the login
   in again, and :class:`PartialWrite` says so.

Nothing is written when anything before step 6 fails.
"""

from __future__ import annotations

import grp
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Generic, TypeVar

from smtpplus_milter.admin.errors import Refused
from smtpplus_milter.config import Config, ConfigError, ConfigProblem, load_config
from smtpplus_milter.core.users import Directory, User, newly_unrestricted
from smtpplus_milter.infra.files import FileProblem, Ownership, locked, read_text, replace_atomically
from smtpplus_milter.infra.passwd import PasswdFile
from smtpplus_milter.infra.usersfile import ALLOW_ANY_SENDER, UsersDocument, any_sender_refusal

T = TypeVar("T")


class WouldNotValidate(Exception):
    """The users file as the change would leave it does not validate; nothing was written."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


class PartialWrite(Exception):
    """The first of the two files was written, the second could not be; the message says where each stands."""


class Door(Enum):
    """What a change does to the logins the passwd-file lets in."""

    UNCHANGED = "unchanged"
    OPENS = "opens"  # a login gets in that did not (new line, enabled again, new password)
    CLOSES = "closes"  # a login that got in no longer does (line removed or disabled)


def door(before: PasswdFile, after: PasswdFile) -> Door:
    """Whether *after* lets logins in that *before* did not, or shuts out logins *before* let in.

    A change that does both has no safe order for the two writes; no use case makes one.
    """
    old = {entry.login: entry.password for entry in before.entries() if not entry.disabled}
    new = {entry.login: entry.password for entry in after.entries() if not entry.disabled}
    opens = any(old.get(login) != password for login, password in new.items())
    closes = any(login not in new for login in old)
    if opens and closes:
        raise ValueError("one change may not both let logins in and shut others out: no order of the writes is safe")
    return Door.OPENS if opens else Door.CLOSES if closes else Door.UNCHANGED


class Draft:
    """The two files as read under their locks, for the caller to change in memory.

    The users file is parsed for editing (:attr:`document`) only when the caller asks for it; a
    change that only touches the passwd-file leaves the users file exactly as it is.
    """

    def __init__(self, config: Config, before: Directory, users_text: str, passwd: PasswdFile, path: Path) -> None:
        self.config = config  # the configuration the command loaded (settings, paths)
        self.before = before  # the users as the file holds them now, read under the lock
        self.users_text = users_text
        self.passwd = passwd
        self.passwd_path = path
        self._document: UsersDocument | None = None

    @property
    def document(self) -> UsersDocument:
        if self._document is None:
            self._document = UsersDocument(self.users_text)
        return self._document

    def new_users_text(self) -> str | None:
        """The users file's new text, or None when the change leaves it as it was."""
        if self._document is None:
            return None
        text = self._document.dump()
        # Parsed and dumped is not changed: a dump that differs only in ruamel's own formatting of
        # an untouched file must not rewrite the operator's file.
        if text == self.users_text or text == UsersDocument(self.users_text).dump():
            return None
        return text

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple(self._document.notes) if self._document else ()

    @property
    def promoted(self) -> tuple[tuple[str, str], ...]:
        return tuple(self._document.promoted) if self._document else ()


@dataclass(frozen=True)
class Written(Generic[T]):
    """What :meth:`UsersStore.change` did; *value* is what the caller's change returned."""

    value: T
    before: Directory  # the users as the file held them under the lock, before the change
    after: Directory  # the users as the validated new file has them
    widened: tuple[User, ...]  # restricted before, any sender after (the operator allowed it)
    notes: tuple[str, ...]  # what the users file edit noticed (entries already listed, promoted)
    promoted: tuple[tuple[str, str], ...]  # (kind, entry) --verified moved from pending_* to authorized_*


class UsersStore:
    """The users file and the passwd-file of one configuration, changed only together (see the module)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.users_path = config.users_path
        self.passwd_path = config.passwd_path

    def change(
        self,
        make: Callable[[Draft], T],
        *,
        allow_any_sender: bool = False,
        again: Callable[[T], str] | None = None,
    ) -> Written[T]:
        """Lock, read, let *make* change the draft, validate, write in the door's order.

        *allow_any_sender* lets the change leave restricted users free to send as any sender;
        without it such a change is refused, and *again* (given what *make* returned) is the
        command that makes it on purpose. Raises :class:`~smtpplus_milter.config.ConfigError`
        when the files do not validate as they are, :class:`WouldNotValidate`, :class:`Refused`,
        :class:`~smtpplus_milter.infra.files.FileProblem` (nothing written) or :class:`PartialWrite`.
        """
        with locked(self.users_path), locked(self.passwd_path):
            users_text = read_text(self.users_path) or ""
            passwd_text = read_text(self.passwd_path, missing_ok=True) or ""
            before = load_config(self.config.path, users_text=users_text).directory
            draft = Draft(self.config, before, users_text, PasswdFile.parse(passwd_text), self.passwd_path)
            value = make(draft)
            new_users = draft.new_users_text()
            after = before if new_users is None else self._validated(new_users)
            widened = tuple(newly_unrestricted(before, after))
            if widened and not allow_any_sender:
                hint = again(value) if again else f"repeat the command with {ALLOW_ANY_SENDER}"
                raise Refused(any_sender_refusal(widened, hint))
            new_passwd = draft.passwd.render()
            self._write(
                users=(users_text, new_users),
                passwd=None if new_passwd == passwd_text else new_passwd,
                order=door(PasswdFile.parse(passwd_text), draft.passwd),
            )
        return Written(value, before, after, widened, draft.notes, draft.promoted)

    def _validated(self, text: str) -> Directory:
        try:
            return load_config(self.config.path, users_text=text).directory
        except ConfigError as exc:
            raise WouldNotValidate(exc.problems) from None

    def _write(self, *, users: tuple[str, str | None], passwd: str | None, order: Door) -> None:
        old_users, new_users = users
        if order is Door.CLOSES:
            if passwd is not None:
                self._write_passwd(passwd)
            if new_users is None:
                return
            try:
                self._write_users(new_users)
            except FileProblem as exc:
                # Not undone: putting the passwd-file back would let the login in again.
                raise PartialWrite(
                    f"{exc}; {self.passwd_path} was already written, so the login is refused from now on, "
                    "but the users file is as it was: run the command again"
                ) from None
            return
        if new_users is not None:
            self._write_users(new_users)
        if passwd is None:
            return
        try:
            self._write_passwd(passwd)
        except FileProblem as exc:
            if new_users is None:
                raise
            try:
                self._write_users(old_users)
            except FileProblem as restore:
                raise PartialWrite(
                    f"{exc}; the users file was already replaced and could not be put back ({restore}): it has "
                    f"the change, {self.passwd_path} has not (no login was let in). See 'smtpplus-milter users "
                    "list' (column PASSWORD); 'users reset-password' gives a user without one its password"
                ) from None
            raise  # both files as they were: nothing was changed

    def _write_users(self, text: str) -> None:
        replace_atomically(self.users_path, text.encode("utf-8"))

    def _write_passwd(self, text: str) -> None:
        # newer_mtime: Dovecot rereads the file only when its mtime (seconds) or size changed.
        replace_atomically(self.passwd_path, text.encode("utf-8"), new_file=_new_passwd_ownership(), newer_mtime=True)


def _new_passwd_ownership() -> Ownership:
    """root:dovecot 0640 for a passwd-file we create: Dovecot's auth process runs as dovecot."""
    try:
        gid = grp.getgrnam("dovecot").gr_gid
    except KeyError:
        gid = os.getegid()
    uid = os.geteuid()
    if uid != 0:
        gid = os.getegid() if gid not in os.getgroups() else gid
    return Ownership(0o640, 0 if uid == 0 else uid, gid)
