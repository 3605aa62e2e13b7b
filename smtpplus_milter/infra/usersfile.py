"""Editing the users file in place, keeping the operator's comments and formatting.

The milter reads the users file with PyYAML (:mod:`smtpplus_milter.config.yamlsrc`, which keeps line
numbers for error messages). Writing it back with PyYAML would drop every comment and re-quote
every string, so edits go through ruamel.yaml's round-trip mode, which keeps comments, key
order, quoting and flow/block style of everything it was not asked to change.

This module only turns a requested change into new file text; validating that text
(:func:`smtpplus_milter.config.load_config` with ``users_text``) and replacing the file are the
caller's job. It also words the one refusal every writer of the users file shares
(:func:`any_sender_refusal`), so that ``users`` and ``verify`` say it the same way.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark, YAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString
from ruamel.yaml.tokens import CommentToken

from smtpplus_milter.core.addresses import AddressError, normalize_address, normalize_domain
from smtpplus_milter.core.users import User, normalize_login

ALLOW_ANY_SENDER = "--allow-any-sender"


class EditProblem(ValueError):
    """A requested change that cannot be made; the message says what to do instead."""


@dataclass
class Edit:
    """One ``users add``/``users edit`` request. ``None`` means "leave as it is"."""

    active: bool | None = None
    priority: int | None = None
    clear_priority: bool = False
    list_name: str | None = None
    clear_list: bool = False
    note: str | None = None
    clear_note: bool = False
    add_domains: list[str] = field(default_factory=list)
    add_senders: list[str] = field(default_factory=list)
    remove_domains: list[str] = field(default_factory=list)
    remove_senders: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return self == Edit()


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap a long note or list
    return yaml


class UsersDocument:
    """The users file as a round-trip document."""

    def __init__(self, text: str) -> None:
        self._yaml = _yaml()
        try:
            data = self._yaml.load(text)
        except YAMLError as exc:
            raise EditProblem(f"the users file is not valid YAML ({exc}); fix it (check-config shows where)") from None
        if data is None:
            data = CommentedMap()
        if not isinstance(data, CommentedMap):
            raise EditProblem("the users file must be a YAML mapping of login: settings")
        self.data: CommentedMap = data
        self.notes: list[str] = []
        # (kind, normalised entry) that --verified moved from pending_* to authorized_*
        self.promoted: list[tuple[str, str]] = []

    def dump(self) -> str:
        out = io.StringIO()
        self._yaml.dump(self.data, out)
        return out.getvalue()

    def key_of(self, login: str) -> str | None:
        """The key as written in the file for *login* (logins are case-insensitive)."""
        wanted = normalize_login(login)
        for key in self.data:
            if normalize_login(str(key)) == wanted:
                return str(key)
        return None

    def entry(self, login: str) -> CommentedMap:
        key = self.key_of(login)
        if key is None:
            raise EditProblem(f"there is no SMTP+ user {login!r}; see 'smtpplus-milter users list'")
        value = self.data[key]
        if value is None:  # "login:" with nothing under it is a user with all defaults
            value = self.data[key] = CommentedMap()
        if not isinstance(value, CommentedMap):
            raise EditProblem(f"the entry of {key!r} is not a mapping; fix the users file by hand")
        return value

    def add(self, login: str, edit: Edit, *, pending: bool) -> None:
        if self.key_of(login) is not None:
            raise EditProblem(
                f"SMTP+ user {self.key_of(login)!r} already exists; use 'users edit' or 'users reset-password'"
            )
        entry = CommentedMap()
        entry["active"] = True if edit.active is None else edit.active
        had_users = len(self.data) > 0
        self.data[login] = entry
        if had_users:
            self.data.yaml_set_comment_before_after_key(login, before="\n")
        self.apply(login, edit, pending=pending)

    def delete(self, login: str) -> None:
        key = self.key_of(login)
        if key is None:
            raise EditProblem(f"there is no SMTP+ user {login!r}; see 'smtpplus-milter users list'")
        del self.data[key]

    def apply(self, login: str, edit: Edit, *, pending: bool, promote: bool = False) -> None:
        """Make *edit*: new entries go to pending_* if *pending*, else to authorized_*.

        With *promote* (the operator's ``--verified``), an entry that is already pending moves to
        authorized_* (recorded in :attr:`promoted`) instead of being left as it is.
        """
        entry = self.entry(login)
        if edit.active is not None:
            _put(entry, "active", edit.active)
        _set_or_clear(entry, "priority", edit.priority, edit.clear_priority)
        _set_or_clear(entry, "list", edit.list_name, edit.clear_list)
        note = DoubleQuotedScalarString(edit.note) if edit.note is not None else None
        _set_or_clear(entry, "note", note, edit.clear_note)
        target = "pending" if pending else "authorized"
        promote = promote and not pending
        self._add_items(login, entry, f"{target}_domains", edit.add_domains, "domain", promote=promote)
        self._add_items(login, entry, f"{target}_senders", edit.add_senders, "sender", promote=promote)
        self._remove_items(entry, "domains", edit.remove_domains, _domain_key)
        self._remove_items(entry, "senders", edit.remove_senders, _sender_key)

    def pending_entries(self, login: str, kind: str) -> list[str]:
        """The pending_domains / pending_senders of *login*, normalised (*kind*: domain or sender)."""
        norm = _domain_key if kind == "domain" else _sender_key
        return [norm(item) for item in _items(self.entry(login).get(f"pending_{kind}s"))]

    def settle(self, login: str, kind: str, value: str, *, verified: bool) -> None:
        """Take *value* out of pending_{kind}s; into authorized_{kind}s when *verified*."""
        entry = self.entry(login)
        norm = _domain_key if kind == "domain" else _sender_key
        pending = f"pending_{kind}s"
        items = _items(entry.get(pending))
        kept = [item for item in items if norm(item) != norm(value)]
        if len(kept) == len(items):
            raise EditProblem(f"{value} is not in pending_{kind}s of {self.key_of(login)}; see 'verify list'")
        if kept:
            _store(entry, pending, kept, entry.get(pending))
        else:
            _delete_key(entry, pending)
        if verified:
            target = f"authorized_{kind}s"
            present = {norm(item) for item in _items(entry.get(target))}
            if norm(value) not in present:
                written = next(item for item in items if norm(item) == norm(value))
                _store(entry, target, [*_items(entry.get(target)), written], entry.get(target))

    def _add_items(
        self, login: str, entry: CommentedMap, key: str, values: Sequence[str], kind: str, *, promote: bool
    ) -> None:
        if not values:
            return
        norm = _domain_key if kind == "domain" else _sender_key
        # An option may carry several entries ("a.example;b.example"), as the file does.
        wanted = [part.strip() for value in values for part in value.split(";") if part.strip()]
        authorized = {norm(item) for item in _items(entry.get(f"authorized_{kind}s"))}
        pending = {norm(item) for item in _items(entry.get(f"pending_{kind}s"))}
        new: list[str] = []
        promoted: list[str] = []
        for item in wanted:
            if norm(item) in pending and promote:
                pending.discard(norm(item))
                promoted.append(item)
                continue
            if norm(item) in pending:
                self.notes.append(
                    f"{item} is already in pending_{kind}s, waiting for verification; left as it is. To authorize "
                    f"it on your own word add --verified; to verify it: smtpplus-milter verify start {login} {item}"
                )
                continue
            if norm(item) in authorized or norm(item) in {norm(n) for n in new}:
                self.notes.append(f"{item} is already listed in authorized_{kind}s; left as it is")
                continue
            new.append(item)
        if new:
            _store(entry, key, [*_items(entry.get(key)), *new], entry.get(key))
        for item in promoted:
            self.settle(login, kind, item, verified=True)
            self.promoted.append((kind, norm(item)))
            self.notes.append(f"{item} was pending verification; moved to authorized_{kind}s (--verified)")

    def _remove_items(self, entry: CommentedMap, kind: str, values: Sequence[str], norm: Any) -> None:
        for value in values:
            wanted = norm(value)
            for key in (f"authorized_{kind}", f"pending_{kind}"):
                items = _items(entry.get(key))
                kept = [item for item in items if norm(item) != wanted]
                if len(kept) != len(items):
                    if kept:
                        _store(entry, key, kept, entry.get(key))
                    else:
                        _delete_key(entry, key)
                    break
            else:
                raise EditProblem(f"{value} is not listed in authorized_{kind} or pending_{kind}")


def any_sender_refusal(users: Sequence[User], again: str) -> str:
    """Why a change that would leave *users* free to send as anybody is refused, and how to make it anyway.

    *again* is the command that makes the change on purpose (it ends with ``--allow-any-sender``).
    """
    names = ", ".join(user.login for user in users)
    first = users[0].login
    return (
        f"{names} would have no authorized domains or senders left and could then send as ANY sender; "
        f"nothing was changed. To keep it restricted, give it another entry first "
        f"(smtpplus-milter users edit {first} --authorized-domain D / --authorized-sender A). "
        f"To let it send as anybody on purpose: {again}"
    )


def _set_or_clear(entry: CommentedMap, key: str, value: object, clear: bool) -> None:
    if clear:
        if key in entry:
            _delete_key(entry, key)
    elif value is not None:
        _put(entry, key, value)


def _items(value: object) -> list[str]:
    """The entries of a ';'-string or a list, as written (validation happens afterwards)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(";") if part.strip()]
    if isinstance(value, Iterable):
        return [str(part) for part in value]
    return [str(value)]


def _store(entry: CommentedMap, key: str, items: list[str], old: object) -> None:
    """Write *items* back in the style the key already had (list or ';'-string)."""
    if isinstance(old, CommentedSeq):
        following = _take_following(entry, key)  # it hangs on the last item, which may go
        del old[:]
        old.extend(items)
        if following:
            _append_following(entry, key, following)
        return
    joined = ";".join(items)
    # Keep the scalar's quoting style (ruamel's str subclasses); plain strings become "...".
    style: type[str] = type(old) if isinstance(old, str) and type(old) is not str else DoubleQuotedScalarString
    _put(entry, key, style(joined))


def _delete_key(entry: CommentedMap, key: str) -> None:
    """Delete *key*, keeping the blank lines and comment lines that follow its value in the file.

    ruamel hangs whatever follows a value (the blank line before the next user, a comment line
    above it) on the key before it. A plain ``del`` of the last key of a user deleted them too,
    and the next user's entry stuck to this one. Only the key's own end-of-line comment goes.
    """
    keys = list(entry)
    index = keys.index(key)
    following = _take_following(entry, key)
    del entry[key]
    if following and index > 0:
        _append_following(entry, keys[index - 1], following)


def _put(entry: CommentedMap, key: str, value: object) -> None:
    """``entry[key] = value``; a new key goes after the last one, so it takes over what followed that.

    Without this, a key added to the last user of a block landed after the blank line that
    separated it from the next user.
    """
    if key in entry or not entry:
        entry[key] = value
        return
    last = str(list(entry)[-1])
    following = _take_following(entry, last)
    entry[key] = value
    if following:
        _append_following(entry, key, following)


def _trailing_slot(entry: CommentedMap, key: str) -> tuple[list[Any], int]:
    """Where ruamel keeps the comment token that follows *key*'s value: (slot, index in it)."""
    value = entry.get(key)
    if isinstance(value, CommentedSeq) and value and value.fa.flow_style() is False:
        # A block list: what follows it hangs on its last item.
        return value.ca.items.setdefault(len(value) - 1, [None, None, None, None]), 0
    return entry.ca.items.setdefault(key, [None, None, None, None]), 2


def _take_following(entry: CommentedMap, key: str) -> str:
    """Remove and return the lines after *key*'s own line (blank lines, comment lines) from its token."""
    slot, position = _trailing_slot(entry, key)
    token = slot[position]
    if token is None:
        return ""
    first, newline, rest = str(token.value).partition("\n")
    if not newline:
        return ""
    if first.strip():
        token.value = first + "\n"  # the key's own end-of-line comment stays with it
    else:
        slot[position] = None
    return rest


def _append_following(entry: CommentedMap, key: str, lines: str) -> None:
    slot, position = _trailing_slot(entry, key)
    if slot[position] is None:
        slot[position] = CommentToken("\n" + lines, CommentMark(0), None)
    else:
        slot[position].value = str(slot[position].value) + lines


def _domain_key(value: str) -> str:
    try:
        return normalize_domain(value)
    except AddressError:
        return value.strip().lower()


def _sender_key(value: str) -> str:
    try:
        return str(normalize_address(value))
    except AddressError:
        return value.strip().lower()
