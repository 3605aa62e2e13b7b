"""Sender authorization: may this SMTP+ user send as these addresses?

Two entry points mirror the two moments the milter can refuse a message: ``decide_mail_from``
(who logged in, and the envelope sender) and ``decide_headers`` (From: and Sender:). Both return
a :class:`~smtpplus_milter.core.decision.Decision`; nothing here has side effects.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from email.header import decode_header, make_header

from smtpplus_milter.core.addresses import (
    Address,
    AddressError,
    Mailbox,
    normalize_address,
    parse_envelope_sender,
    parse_mailboxes,
)
from smtpplus_milter.core.decision import Decision, Reply, Spoofing, Unauthorized, Verdict, safe_text
from smtpplus_milter.core.users import Check, Directory, Mode, User

REPLY_TO_HINT = "a visitor's address from a web form belongs in Reply-To, not From"

# How much of a client's address a reply or log line repeats: enough to recognise it, short
# enough that the reply always fits (an envelope address may be a thousand characters long).
SHOWN_ADDRESS = 200


@dataclass(frozen=True)
class _Seen:
    """One address to check: where it came from, what it looked like, what it parsed to."""

    field: str
    shown: str
    address: Address | None
    problem: str | None = None
    mailbox: Mailbox | None = None  # header addresses: the names and comments shown with it


AUTH_REQUIRED = Reply("530", "5.7.0", "Authentication required: log in with SMTP AUTH to send through this relay")


def decide_mail_from(
    directory: Directory, login: str | None, mail_from: str, *, daemon_name: str | None = None
) -> Decision:
    """Decide at MAIL FROM: session kind, user status and the envelope sender.

    *daemon_name* is Postfix's ``{daemon_name}`` macro: which of its services took the session.
    """
    policy = directory.policy
    if not login:
        if daemon_name and daemon_name in policy.submission_daemon_names:
            shown = safe_text(daemon_name, 64)
            return Decision(
                Verdict.REJECT,
                AUTH_REQUIRED,
                reasons=(f"unauthenticated session on submission service {shown} refused (submission_daemon_names)",),
            )
        if policy.unauthenticated == "pass":
            return Decision(Verdict.ACCEPT, reasons=("unauthenticated session: not SMTP+ traffic",), bypass=True)
        return Decision(
            Verdict.REJECT, AUTH_REQUIRED, reasons=("unauthenticated session refused (unauthenticated: reject)",)
        )
    user = directory.lookup(login)
    if user is None:
        shown = safe_text(login, 64)
        if policy.unknown_user == "pass":
            return Decision(
                Verdict.ACCEPT,
                reasons=(f"login {shown} is not an SMTP+ user; passed (unknown_user: pass)",),
                bypass=True,
            )
        return Decision(
            Verdict.REJECT,
            Reply("550", "5.7.1", f"SASL login {shown} is not an SMTP+ user; ask the relay operator to add it"),
            reasons=(f"login {shown} is not an SMTP+ user (unknown_user: reject)",),
        )
    if not user.active:
        return Decision(
            Verdict.REJECT,
            Reply("550", "5.7.1", f"SMTP+ user {user.login} is disabled; ask the relay operator to enable it"),
            reasons=(f"SMTP+ user {user.login} is disabled (active: false)",),
        )
    if Check.ENVELOPE_FROM not in policy.checks:
        return Decision(Verdict.ACCEPT, reasons=("envelope sender not checked (authorization.check)",))
    try:
        address = parse_envelope_sender(mail_from)
    except AddressError as exc:
        seen = _Seen("envelope_from", safe_text(mail_from.strip("<>")), None, str(exc))
    else:
        if address is None:
            return Decision(Verdict.ACCEPT, reasons=("envelope_from <>: null sender is not checked",))
        seen = _Seen("envelope_from", str(address), address)
    return _judge(directory, user, [seen])


def decide_headers(directory: Directory, user: User, headers: Sequence[tuple[str, str]]) -> Decision:
    """Decide at end of headers: every address in From:, and Sender: if present."""
    checks = directory.policy.checks
    seen: list[_Seen] = []
    if Check.HEADER_FROM in checks:
        seen += _read_header(headers, "From", required=True)
    if Check.HEADER_SENDER in checks:
        seen += _read_header(headers, "Sender", required=False)
    if not seen:
        return Decision(Verdict.ACCEPT, reasons=("no header sender checked",))
    decision = _judge(directory, user, seen)
    # Only authorized addresses: an unauthorized one is reported as such already.
    spoofing = tuple(
        found
        for item in seen
        if item.mailbox is not None and (user.unrestricted or user.authorizes(item.mailbox.address))
        for found in _spoofing(item.field, item.mailbox)
    )[:MAX_SPOOFING]
    return dataclasses.replace(decision, spoofing=spoofing) if spoofing else decision


# The first few are enough to see what a message pretends; a hostile header cannot make the log
# lines and alerts that follow from them many.
MAX_SPOOFING = 10

# Text that looks like an address: something@something.tld, no spaces or address delimiters.
# The local part may only start after a delimiter (the lookbehind): otherwise every position of
# a long run without '@' would start a scan to its end, quadratic in the length of the name.
_ADDRESS_LIKE = re.compile(r"(?<![^\s<>()\[\]\",;:@])[^\s<>()\[\]\",;:@]+@[^\s<>()\[\]\",;:@]+\.[^\s<>()\[\]\",;:@]+")


def _spoofing(field: str, mailbox: Mailbox) -> list[Spoofing]:
    """Address-like text in the names or comments of *mailbox* that is not its own address.

    NFKC first, so a fullwidth at sign (U+FF20) or letters count as the ASCII ones a reader takes
    them for. Encoded-words in comments are decoded too (the parser decodes them only in names);
    the text as written is searched first, so the order of what is found is stable.
    """
    real = str(mailbox.address)
    found: dict[str, Spoofing] = {}
    texts = [(text, "display_name") for text in mailbox.names] + [(text, "comment") for text in mailbox.comments]
    for text, where in texts:
        variants = dict.fromkeys((text, _decoded(text))) if "=?" in text else (text,)
        for variant in variants:
            folded = unicodedata.normalize("NFKC", variant)
            if "@" not in folded:
                continue
            for match in _ADDRESS_LIKE.finditer(folded):
                candidate = match.group().strip(".'`")
                try:
                    shown = str(normalize_address(candidate))
                except AddressError:
                    shown = candidate.lower()
                if shown != real and shown not in found:
                    found[shown] = Spoofing(field, real, safe_text(candidate), where)
                    if len(found) >= MAX_SPOOFING:
                        return list(found.values())
    return list(found.values())


def _decoded(text: str) -> str:
    try:
        return str(make_header(decode_header(text)))
    except Exception:  # a broken encoded-word: the raw text is searched anyway
        return text


def _read_header(headers: Sequence[tuple[str, str]], name: str, *, required: bool) -> list[_Seen]:
    field = f"header_{name.lower()}"
    values = [value for key, value in headers if key.strip().lower() == name.lower()]
    if not values:
        return [_Seen(field, f"(no {name}: header)", None, f"the message has no {name}: header")] if required else []
    if len(values) > 1:
        return [
            _Seen(field, f"({len(values)} {name}: headers)", None, f"the message has {len(values)} {name}: headers")
        ]
    try:
        mailboxes = parse_mailboxes(name, values[0])
    except AddressError as exc:
        return [_Seen(field, safe_text(values[0].strip()), None, str(exc))]
    if not mailboxes:
        return [_Seen(field, safe_text(values[0].strip()), None, f"{name}: holds no address")]
    if name == "Sender" and len(mailboxes) > 1:
        return [_Seen(field, safe_text(values[0].strip()), None, "Sender: must hold exactly one address")]
    return [_Seen(field, str(mailbox.address), mailbox.address, mailbox=mailbox) for mailbox in mailboxes]


def _judge(directory: Directory, user: User, seen: list[_Seen]) -> Decision:
    reasons: list[str] = []
    bad: list[Unauthorized] = []
    pending = False
    for item in seen:
        prefix = f"{item.field} {item.shown}"
        if user.unrestricted:
            reasons.append(f"{prefix}: authorized (user has no sender restriction)")
            continue
        if item.address is None:
            reason = f"{prefix}: not authorized: {item.problem}"
        elif str(item.address) in user.authorized_senders:
            reasons.append(f"{prefix}: authorized (authorized_senders)")
            continue
        elif item.address.domain in user.authorized_domains:
            reasons.append(f"{prefix}: authorized (authorized_domains {item.address.domain})")
            continue
        elif user.awaits_verification(item.address):
            pending = pending or not bad
            reason = f"{prefix}: not authorized: awaiting verification (pending)"
        else:
            reason = f"{prefix}: not authorized: neither the address nor its domain is listed for {user.login}"
        reasons.append(reason)
        bad.append(Unauthorized(item.field, item.shown, reason))
    if not bad:
        return Decision(Verdict.ACCEPT, reasons=tuple(reasons))
    if directory.policy.mode is Mode.ALERT:
        return Decision(
            Verdict.ACCEPT, reasons=(*reasons, "delivered anyway (authorization.mode: alert)"), unauthorized=tuple(bad)
        )
    first = bad[0]
    address = safe_text(first.address, SHOWN_ADDRESS)
    shown = f"<{address}>" if not address.startswith("(") else address
    text = f"{shown}: sender not authorized for SMTP+ user {user.login}"
    if pending:
        text += " (awaiting verification)"
    if first.field == "header_from":
        text += f"; {REPLY_TO_HINT}"
    return Decision(Verdict.REJECT, Reply("550", "5.7.1", text), reasons=tuple(reasons), unauthorized=tuple(bad))
