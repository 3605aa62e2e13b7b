"""The Dovecot passwd-file that Postfix's SASL logins are checked against.

One line per login: ``login:{SHA512-CRYPT}$6$salt$hash`` (more ``:``-fields may follow and are
kept). Logins are lowercase because Dovecot lowercases a login before the lookup. A disabled
login keeps its line, commented out as ``#disabled:login:{SHA512-CRYPT}...``: Dovecot skips
lines that start with ``#``, so the login is refused, and ``enable`` restores it unchanged.
(Dovecot's ``nologin`` extra field would not do: the IMAP/POP3 login processes act on it, but
the auth server still answers OK to Postfix.)

Hashes are SHA512-CRYPT made by libpass (the maintained fork of passlib), see docs/users.md.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from passlib.hash import sha512_crypt

SCHEME = "SHA512-CRYPT"
# glibc's and Dovecot's own default. The passwords are 32 random characters (192 bits): no
# amount of key stretching makes guessing one feasible or not, while every SMTP AUTH pays
# the rounds in Dovecot (libpass's default of 656,000 would cost ~0.3 s of CPU per login).
ROUNDS = 5000
DISABLED = "#disabled:"
PASSWORD_BYTES = 24  # token_urlsafe: 32 characters of A-Z a-z 0-9 - _


class PasswdProblem(ValueError):
    """A login that cannot be written to a passwd-file."""


def generate_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def hash_password(password: str) -> str:
    hashed: str = sha512_crypt.using(rounds=ROUNDS).hash(password)
    return "{" + SCHEME + "}" + hashed


def verify_password(password: str, stored: str) -> bool:
    prefix = "{" + SCHEME + "}"
    if not stored.startswith(prefix):
        return False
    return bool(sha512_crypt.verify(password, stored[len(prefix) :]))


def passwd_login(login: str) -> str:
    """The login as it is written to the file; raise PasswdProblem if it cannot be."""
    name = login.strip().lower()
    if not name or name.startswith("#") or any(ch in ":" or ord(ch) < 0x21 or ord(ch) == 0x7F for ch in name):
        raise PasswdProblem(
            f"{login!r} cannot be a login in a Dovecot passwd-file (no ':', spaces or control characters, "
            "and it must not start with '#')"
        )
    return name


@dataclass(frozen=True)
class Entry:
    login: str
    password: str  # as stored, with its {SCHEME} prefix
    rest: tuple[str, ...]  # uid, gid, ... extra fields: kept as they were
    disabled: bool

    def line(self) -> str:
        text = ":".join((self.login, self.password, *self.rest))
        return DISABLED + text if self.disabled else text


@dataclass
class PasswdFile:
    """The file's lines; entries are parsed on demand so comments and foreign lines stay as they are."""

    lines: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str | None) -> PasswdFile:
        return cls(text.splitlines() if text else [])

    def render(self) -> str:
        return "".join(f"{line}\n" for line in self.lines)

    @staticmethod
    def _entry(line: str) -> Entry | None:
        disabled = line.startswith(DISABLED)
        body = line[len(DISABLED) :] if disabled else line
        if not body or body.startswith(("#", ":")):
            return None
        parts = body.split(":")
        return Entry(parts[0], parts[1] if len(parts) > 1 else "", tuple(parts[2:]), disabled)

    def _find(self, login: str) -> tuple[int, Entry] | None:
        name = passwd_login(login)
        for index, line in enumerate(self.lines):
            entry = self._entry(line)
            if entry is not None and entry.login == name:
                return index, entry
        return None

    def entries(self) -> list[Entry]:
        """The login lines, disabled ones included, in file order (comments and foreign lines left out)."""
        return [entry for entry in map(self._entry, self.lines) if entry is not None]

    def get(self, login: str) -> Entry | None:
        found = self._find(login)
        return found[1] if found else None

    def set_password(self, login: str, hashed: str, *, disabled: bool = False) -> None:
        found = self._find(login)
        if found is None:
            self.lines.append(Entry(passwd_login(login), hashed, (), disabled).line())
            return
        index, entry = found
        self.lines[index] = Entry(entry.login, hashed, entry.rest, disabled).line()

    def set_disabled(self, login: str, disabled: bool) -> bool:
        """Comment the login out (or back in); False when it has no line."""
        found = self._find(login)
        if found is None:
            return False
        index, entry = found
        self.lines[index] = Entry(entry.login, entry.password, entry.rest, disabled).line()
        return True

    def remove(self, login: str) -> bool:
        found = self._find(login)
        if found is None:
            return False
        del self.lines[found[0]]
        return True
