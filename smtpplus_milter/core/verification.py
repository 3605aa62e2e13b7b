"""Verification attempts of new senders and domains: codes, tokens and their state file.

An *attempt* belongs to one (SMTP+ user, kind, entry). For an address it holds a one-time code
that was e-mailed to it; for a domain, the token the customer publishes in DNS. Codes are random
(:mod:`secrets`), stored only as a salted scrypt hash bound to the user and the address, valid for
``verification.code_ttl_hours``, used once, compared with :func:`hmac.compare_digest`, and voided
after :data:`MAX_FAILURES` wrong tries. A domain token is not a secret (it is published in DNS, and
publishing it is the proof), so it is kept in clear and can be shown again.

The state lives in ``verification.json`` next to the users file (``Config.state_path``), mode 0600,
replaced atomically under the same kind of lock as the users file (:mod:`smtpplus_milter.infra.files`).
Everything that decides takes ``now`` (seconds since the epoch) from the caller: tests bring
their own clock.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

STATE_FILE = "verification.json"
MAX_FAILURES = 5
CODE_DIGITS = 8
TOKEN_PREFIX = "smtpplus-verify="
TXT_LABEL = "_smtpplus-verify"

# scrypt rather than a bare HMAC: a code has only 8 digits, so a stolen state file must not let
# anyone try all 10^8 of them in seconds. These parameters cost about 50 ms per check.
_SCRYPT = MappingProxyType({"n": 2**14, "r": 8, "p": 1, "dklen": 32})

Kind = Literal["sender", "domain"]


class StateProblem(ValueError):
    """The state file's text is not a verification state (the message says what to do)."""


def kind_of(entry: str) -> Kind:
    return "sender" if "@" in entry else "domain"


def txt_name(domain: str) -> str:
    return f"{TXT_LABEL}.{domain}"


def txt_record(domain: str, token: str) -> str:
    """The record the customer publishes, in the form a DNS provider's form or a zone file takes."""
    return f'{txt_name(domain)} TXT "{TOKEN_PREFIX}{token}"'


@dataclass
class Attempt:
    login: str  # normalised (lower-case) SASL login
    kind: Kind
    entry: str  # normalised address or domain
    started: float
    expires: float | None = None  # codes only; domain tokens wait until checked or cancelled
    salt: str | None = None
    digest: str | None = None
    token: str | None = None
    failures: int = 0
    voided: bool = False

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.login, self.kind, self.entry)


class Outcome(StrEnum):
    CONFIRMED = "confirmed"
    WRONG = "wrong"  # wrong code, tries left
    VOIDED = "voided"  # this wrong code was the last allowed one, or an earlier one was
    EXPIRED = "expired"
    NOT_STARTED = "not_started"


@dataclass(frozen=True)
class Confirmation:
    outcome: Outcome
    tries_left: int = 0


def new_code() -> str:
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def new_token() -> str:
    return secrets.token_urlsafe(24)


def normalize_code(code: str) -> str:
    """Codes are shown as ``1234 5678``; accept them with or without spaces and dashes."""
    return "".join(ch for ch in code if ch not in " -\t")


def format_code(code: str) -> str:
    return f"{code[:4]} {code[4:]}"


def _digest(login: str, entry: str, code: str, salt: bytes) -> bytes:
    # Bound to the user and the address: a code is worth nothing for any other pair.
    secret = f"{login}\0{entry}\0{code}".encode()
    return hashlib.scrypt(secret, salt=salt, **_SCRYPT)


class State:
    """All attempts of one users file, keyed by (login, kind, entry)."""

    def __init__(self, attempts: list[Attempt] | None = None) -> None:
        self.attempts: dict[tuple[str, str, str], Attempt] = {a.key: a for a in attempts or []}

    # --- (de)serialisation -----------------------------------------------------------------

    @classmethod
    def parse(cls, text: str | None, where: Path | str = STATE_FILE) -> State:
        if not text:
            return cls()
        try:
            data = json.loads(text)
            attempts = [Attempt(**item) for item in data["attempts"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise StateProblem(
                f"{where} is not a verification state file ({exc}); move it away to start all verifications afresh"
            ) from None
        return cls(attempts)

    def render(self) -> str:
        attempts = [asdict(attempt) for attempt in sorted(self.attempts.values(), key=lambda a: a.key)]
        return json.dumps({"version": 1, "attempts": attempts}, indent=2) + "\n"

    # --- attempts --------------------------------------------------------------------------

    def get(self, login: str, kind: Kind, entry: str) -> Attempt | None:
        return self.attempts.get((login, kind, entry))

    def drop(self, login: str, kind: Kind, entry: str) -> Attempt | None:
        return self.attempts.pop((login, kind, entry), None)

    def drop_user(self, login: str) -> None:
        for key in [key for key in self.attempts if key[0] == login]:
            del self.attempts[key]

    def start_sender(self, login: str, address: str, *, ttl_hours: int, now: float) -> str:
        """A new code for *address*; any earlier code for it stops working. Returns the code (once)."""
        code = new_code()
        salt = secrets.token_bytes(16)
        earlier = self.get(login, "sender", address)
        self.attempts[(login, "sender", address)] = Attempt(
            login=login,
            kind="sender",
            entry=address,
            started=earlier.started if earlier else now,  # the entry's age, not the code's
            expires=now + ttl_hours * 3600,
            salt=salt.hex(),
            digest=_digest(login, address, code, salt).hex(),
        )
        return code

    def start_domain(self, login: str, domain: str, *, now: float) -> Attempt:
        """The domain's token: the one already handed out, or a new one."""
        attempt = self.get(login, "domain", domain)
        if attempt is None or attempt.token is None:
            attempt = Attempt(login=login, kind="domain", entry=domain, started=now, token=new_token())
            self.attempts[attempt.key] = attempt
        return attempt

    def confirm(self, login: str, address: str, code: str, *, now: float) -> Confirmation:
        """Check *code* for *address*. Success removes the attempt (single use); a wrong code counts."""
        attempt = self.get(login, "sender", address)
        if attempt is None or attempt.digest is None or attempt.salt is None:
            return Confirmation(Outcome.VOIDED if attempt is not None and attempt.voided else Outcome.NOT_STARTED)
        if attempt.voided:
            return Confirmation(Outcome.VOIDED)
        if attempt.expires is not None and now >= attempt.expires:
            return Confirmation(Outcome.EXPIRED)
        given = _digest(login, address, normalize_code(code), bytes.fromhex(attempt.salt))
        if hmac.compare_digest(given, bytes.fromhex(attempt.digest)):
            self.drop(login, "sender", address)
            return Confirmation(Outcome.CONFIRMED)
        attempt.failures += 1
        if attempt.failures >= MAX_FAILURES:
            # Keep the record (so the operator learns why), but nothing can match any more.
            attempt.voided = True
            attempt.digest = attempt.salt = None
            return Confirmation(Outcome.VOIDED)
        return Confirmation(Outcome.WRONG, MAX_FAILURES - attempt.failures)

    def token_matches(self, login: str, domain: str, published: str) -> bool:
        attempt = self.get(login, "domain", domain)
        if attempt is None or attempt.token is None:
            return False
        return hmac.compare_digest(published.encode(), f"{TOKEN_PREFIX}{attempt.token}".encode())


def describe(attempt: Attempt | None, now: float) -> str:
    """One line for ``verify list``: where this attempt stands."""
    if attempt is None:
        return "not started (run 'verify start')"
    if attempt.kind == "domain":
        return f"waiting for TXT {txt_name(attempt.entry)} (run 'verify check')"
    if attempt.voided:
        return f"voided after {MAX_FAILURES} wrong codes (run 'verify start' for a new code)"
    if attempt.expires is not None and now >= attempt.expires:
        return "code expired (run 'verify start' for a new code)"
    left = int((attempt.expires or now) - now)
    tries = f", {attempt.failures} wrong so far" if attempt.failures else ""
    return f"code sent, valid {format_age(left)} more{tries}"


def format_age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600}h"


def as_record(attempt: Attempt) -> dict[str, Any]:
    """What ``verify list --json`` shows: never the salt or digest."""
    return {
        "started": attempt.started,
        "expires": attempt.expires,
        "failures": attempt.failures,
        "voided": attempt.voided,
        "token": attempt.token,
    }
