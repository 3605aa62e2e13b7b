"""The ``verify`` use cases: prove new senders and domains before they authorize anything.

:func:`start` e-mails a one-time code to a pending address, or hands out the token a pending domain
publishes in DNS; :func:`confirm` (address + code) and :func:`check` (domain, by DNS) move the entry
from ``pending_*`` to ``authorized_*``; :func:`pending` lists what waits; :func:`cancel` drops a
pending entry. Pending entries restrict the user too, so cancelling a user's last entry would let
it send as any sender: refused unless the operator allows it. Every write of the users file goes
through :class:`~smtpplus_milter.admin.store.UsersStore`, which checks that rule.

Locks are always taken in the same order: the state file (:mod:`smtpplus_milter.infra.state`),
then the users file and the passwd-file (the store). ``users add/edit`` start verifications only
after their own write has released the users file, so the commands can never wait for each other.
Everything here takes ``now`` from the caller and prints nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from typing import Any

from smtpplus_milter.admin.errors import Refused
from smtpplus_milter.admin.store import Draft, UsersStore
from smtpplus_milter.config import Config
from smtpplus_milter.core.addresses import AddressError, normalize_address, normalize_domain
from smtpplus_milter.core.dnscheck import DnsFailure, check_token, deliverability_warnings
from smtpplus_milter.core.users import User, normalize_login
from smtpplus_milter.core.verification import (
    TOKEN_PREFIX,
    Confirmation,
    Kind,
    Outcome,
    as_record,
    describe,
    format_code,
    kind_of,
    txt_name,
    txt_record,
)
from smtpplus_milter.infra import mailer
from smtpplus_milter.infra.dns import Resolver
from smtpplus_milter.infra.files import FileProblem
from smtpplus_milter.infra.state import StateFile
from smtpplus_milter.infra.usersfile import ALLOW_ANY_SENDER

MAIL_TIMEOUT = 30.0


def _state_file(config: Config) -> StateFile:
    return StateFile(config.state_path)


def _resolver(config: Config) -> Resolver:
    return Resolver(config.settings.verification.resolver)


def _smtp(config: Config) -> tuple[str, int]:
    smtp = config.settings.verification.smtp
    return smtp.host, smtp.port


def user_of(config: Config, name: str) -> User:
    """The SMTP+ user *name* (case-insensitive), or a refusal naming it."""
    user = config.directory.lookup(name)
    if user is None:
        raise Refused(f"there is no SMTP+ user {name!r}; see 'smtpplus-milter users list'")
    return user


def entry_of(text: str, *, address_only: bool = False, domain_only: bool = False) -> tuple[Kind, str]:
    """*text* as the address or domain it names, normalised; a refusal if it is neither (or not the one asked)."""
    kind = kind_of(text)
    if address_only and kind != "sender":
        raise Refused(f"{text!r} is not an address; domains are verified with 'verify check USER DOMAIN'")
    if domain_only and kind != "domain":
        raise Refused(f"{text!r} is an address; addresses are verified with 'verify confirm USER ADDRESS CODE'")
    try:
        return kind, (str(normalize_address(text)) if kind == "sender" else normalize_domain(text))
    except AddressError as exc:
        raise Refused(f"{exc}; give an address as local@domain or a bare domain") from None


def require_pending(user: User, kind: Kind, entry: str) -> None:
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


# --- starting --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    """A verification under way: a code e-mailed to an address, or a token for a domain's DNS."""

    login: str
    kind: Kind
    entry: str
    record: str | None = None  # domains: the TXT record to publish
    sender: str | None = None  # addresses: where the code mail came from
    ttl_hours: int = 0
    expires: float | None = None  # addresses: when the code stops working


def start(config: Config, user: User, kind: Kind, entry: str, *, now: float) -> Started:
    """Start (or restart) the verification of *entry*, which must be pending for *user*."""
    require_pending(user, kind, entry)
    login = normalize_login(user.login)
    settings = config.settings.verification
    if kind == "domain":
        with _state_file(config).edit() as state:
            attempt = state.start_domain(login, entry, now=now)
        assert attempt.token is not None
        return Started(user.login, kind, entry, record=txt_record(entry, attempt.token))
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
    return Started(user.login, kind, entry, sender=settings.from_, ttl_hours=ttl, expires=now + ttl * 3600)


def start_pending(
    config: Config, user: User, senders: Iterable[str], domains: Iterable[str], *, now: float
) -> tuple[list[Started], list[str]]:
    """Start the verification of entries ``users add/edit`` just put into pending_*.

    Returns what started and, for the rest, the problems (``"entry: why"``): the user change is
    made already, so one entry that cannot start must not stop the others.
    """
    started: list[Started] = []
    problems: list[str] = []
    entries: list[tuple[Kind, str]] = [("sender", sender) for sender in senders]
    entries += [("domain", domain) for domain in domains]
    for kind, entry in entries:
        try:
            started.append(start(config, user, kind, entry, now=now))
        except (Refused, FileProblem) as exc:
            problems.append(f"{entry}: {exc}")
    return started, problems


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
    host, port = _smtp(config)
    try:
        mailer.submit(host, port, message, sender=settings.from_, recipients=[address], timeout=MAIL_TIMEOUT)
    except mailer.MailProblem as exc:
        raise Refused(
            f"could not send the code to {address} through verification.smtp {settings.smtp}: {exc}; "
            "check that this port accepts mail without SMTP AUTH and without the milter, then run 'verify start' again"
        ) from None


# --- confirming ----------------------------------------------------------------------------------


def _settle(
    config: Config,
    user: User,
    kind: Kind,
    entry: str,
    *,
    verified: bool,
    allow_any_sender: bool = False,
    again: str = "",
) -> tuple[User, ...]:
    """Move *entry* out of pending_* (into authorized_* when *verified*); the users widened, as allowed."""

    def make(draft: Draft) -> None:
        draft.document.settle(user.login, kind, entry, verified=verified)

    written = UsersStore(config).change(make, allow_any_sender=allow_any_sender, again=lambda _: again)
    return written.widened


def confirm(config: Config, user: User, address: str, code: str, *, now: float) -> Confirmation:
    """Check *code* for *address*; if it is right, authorize the address. Every outcome is returned."""
    require_pending(user, "sender", address)
    login = normalize_login(user.login)
    with _state_file(config).edit() as state:
        result = state.confirm(login, address, code, now=now)
        if result.outcome is Outcome.CONFIRMED:
            # Inside the state lock: if the users file cannot be written, the state is not
            # written either and the code stays usable.
            _settle(config, user, "sender", address, verified=True)
    return result


@dataclass(frozen=True)
class Checked:
    """A domain whose token was found in DNS, now authorized; *warnings*: why its mail may still bounce."""

    warnings: tuple[str, ...]


def check(config: Config, user: User, domain: str, *, warn: Callable[[str], None]) -> Checked:
    """Look up the domain's TXT token; if it is there, authorize the domain.

    The deliverability *warnings* are handed to *warn* as soon as they are known: they matter
    most when the check then fails, and a refusal would otherwise carry them away.
    """
    require_pending(user, "domain", domain)
    login = normalize_login(user.login)
    settings = config.settings.verification
    state_file = _state_file(config)
    attempt = state_file.read().get(login, "domain", domain)
    if attempt is None or attempt.token is None:
        raise Refused(f"no token was handed out for {domain}; run: smtpplus-milter verify start {user.login} {domain}")
    record = txt_record(domain, attempt.token)
    published = state_file.read()
    try:
        resolver = _resolver(config)
        found = check_token(resolver, domain, lambda text: published.token_matches(login, domain, text))
        warnings = tuple(deliverability_warnings(resolver, domain, settings.relay_ips))
    except DnsFailure as exc:
        raise Refused(f"could not look up {txt_name(domain)}: {exc}; try again later") from None
    for warning in warnings:
        warn(warning)
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
        _settle(config, user, "domain", domain, verified=True)
    return Checked(warnings)


def cancel(config: Config, user: User, kind: Kind, entry: str, *, allow_any_sender: bool) -> tuple[User, ...]:
    """Drop the pending *entry* and its code or token; returns the users left free to send as anybody."""
    require_pending(user, kind, entry)
    again = f"smtpplus-milter verify cancel {user.login} {entry} {ALLOW_ANY_SENDER}"
    with _state_file(config).edit() as state:
        state.drop(normalize_login(user.login), kind, entry)
        # Inside the state lock: a refusal here writes neither file, and the code or token stays.
        return _settle(config, user, kind, entry, verified=False, allow_any_sender=allow_any_sender, again=again)


def forget(config: Config, login: str, entries: Iterable[tuple[Kind, str]]) -> None:
    """Drop the attempts of *entries* of *login* (normalised), e.g. once --verified authorized them."""
    wanted = list(entries)
    state_file = _state_file(config)
    if not wanted or not state_file.path.exists():
        return
    with state_file.edit() as state:
        for kind, entry in wanted:
            state.drop(login, kind, entry)


def forget_user(config: Config, login: str) -> None:
    """Drop every attempt of *login*, e.g. when the user is deleted."""
    state_file = _state_file(config)
    if state_file.path.exists():
        with state_file.edit() as state:
            state.drop_user(normalize_login(login))


# --- listing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pending:
    """One entry waiting for verification, as ``verify list`` reports it."""

    login: str
    kind: Kind
    entry: str
    age_seconds: int | None  # since the first attempt; None: never started
    state: str
    attempt: dict[str, Any] | None  # what --json shows of the attempt (never the code's hash)

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def pending(config: Config, *, now: float) -> list[Pending]:
    """Every pending entry of every user, by login, addresses before domains."""
    state = _state_file(config).read()
    found: list[Pending] = []
    for key in sorted(config.directory.users):
        user = config.directory.users[key]
        entries: list[tuple[Kind, str]] = [("sender", s) for s in sorted(user.pending_senders)]
        entries += [("domain", d) for d in sorted(user.pending_domains)]
        for kind, entry in entries:
            attempt = state.get(key, kind, entry)
            found.append(
                Pending(
                    login=user.login,
                    kind=kind,
                    entry=entry,
                    age_seconds=None if attempt is None else int(now - attempt.started),
                    state=describe(attempt, now),
                    attempt=None if attempt is None else as_record(attempt),
                )
            )
    return found
