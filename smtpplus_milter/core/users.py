"""The SMTP+ user as the policy sees it, and the settings that shape authorization."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from smtpplus_milter.core.addresses import Address


class Mode(StrEnum):
    BLOCK = "block"
    ALERT = "alert"


class Check(StrEnum):
    ENVELOPE_FROM = "envelope_from"
    HEADER_FROM = "header_from"
    HEADER_SENDER = "header_sender"


@dataclass(frozen=True)
class User:
    """One SMTP+ user (a SASL login). Domains and senders are already normalised."""

    login: str
    active: bool = True
    priority: int = 3
    list: str | None = None
    note: str = ""
    authorized_domains: frozenset[str] = frozenset()
    authorized_senders: frozenset[str] = frozenset()
    pending_domains: frozenset[str] = frozenset()
    pending_senders: frozenset[str] = frozenset()

    @property
    def unrestricted(self) -> bool:
        """True when the user has no sender restriction at all (empty lists allow every sender).

        Pending entries count as a restriction: a user whose only entries await verification
        must not be able to send as anybody in the meantime.
        """
        return not (self.authorized_domains or self.authorized_senders or self.pending_domains or self.pending_senders)

    def authorizes(self, address: Address) -> bool:
        return str(address) in self.authorized_senders or address.domain in self.authorized_domains

    def awaits_verification(self, address: Address) -> bool:
        return str(address) in self.pending_senders or address.domain in self.pending_domains


@dataclass(frozen=True)
class AuthPolicy:
    """The global settings that decide what happens around the per-user lists."""

    mode: Mode = Mode.BLOCK
    checks: frozenset[Check] = frozenset(Check)
    unknown_user: str = "reject"  # reject | pass
    unauthenticated: str = "pass"  # pass | reject
    # {daemon_name} values of submission services: no login there is refused, whatever
    # `unauthenticated` says (a submission port never carries inbound mail).
    submission_daemon_names: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Directory:
    """Users by normalised (lower-case) login, plus the policy that applies to them."""

    users: Mapping[str, User] = field(default_factory=dict)
    policy: AuthPolicy = AuthPolicy()

    def lookup(self, login: str) -> User | None:
        return self.users.get(normalize_login(login))


def normalize_login(login: str) -> str:
    """SASL logins are compared case-insensitively."""
    return login.strip().lower()


def newly_unrestricted(before: Directory, after: Directory) -> list[User]:
    """The users *after* lets send as any sender although *before* restricted them, by login.

    A user created without entries may send as anybody; a change must never make a restricted
    user so as a side effect. Users that are new in *after* are not in the list.
    """
    widened = []
    for key in sorted(after.users):
        old = before.users.get(key)
        if after.users[key].unrestricted and old is not None and not old.unrestricted:
            widened.append(after.users[key])
    return widened
