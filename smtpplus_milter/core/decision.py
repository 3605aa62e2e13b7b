"""Decisions are values: what to answer, and why.

The milter adapter turns a :class:`Decision` into libmilter calls; the same value feeds the
``message`` log event, the metrics, the alerts and ``explain``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

# libmilter refuses a reply over 980 bytes (code, enhanced code, text and separators), and
# pymilter then raises. Our texts are far shorter; client-supplied parts (addresses, logins)
# are cut to fit, so no client can make a refusal impossible to send.
MAX_REPLY_TEXT = 400
_UNSAFE = re.compile(r"[^ -$&-~]")  # anything but printable ASCII, and '%'


def safe_text(text: str, limit: int = 120) -> str:
    """Make client-supplied text fit into an SMTP reply and a log line.

    libmilter silently drops a reply with a lone '%', and CR/LF or 8-bit bytes would break the
    SMTP reply line. Longer text is cut to *limit* characters, ending in "...".
    """
    cleaned = _UNSAFE.sub("?", text[: limit * 4])  # never scan more than could be shown
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


class Verdict(StrEnum):
    ACCEPT = "accepted"
    REJECT = "rejected"
    TEMPFAIL = "tempfailed"


@dataclass(frozen=True)
class Reply:
    """An SMTP reply. The text is made safe and bounded here, whoever built it."""

    code: str
    xcode: str
    text: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", safe_text(self.text, MAX_REPLY_TEXT))

    def __str__(self) -> str:
        return f"{self.code} {self.xcode} {self.text}"


@dataclass(frozen=True)
class Unauthorized:
    """One sender that the user may not use (fires an alert in both modes)."""

    field: str  # envelope_from | header_from | header_sender
    address: str  # as seen (normalised where possible), safe to log
    reason: str


@dataclass(frozen=True)
class Spoofing:
    """An authorized From:/Sender: address shown next to a different one (display-name spoofing).

    ``"ceo@bank.example" <info@yourcompany.com>`` is authorized (the address decides), but a
    reader sees the bank: this is what phishing looks like, so the milter reports it.
    """

    field: str  # header_from | header_sender
    address: str  # the real, authorized address
    shown: str  # the other address-like text, safe to log
    where: str  # display_name | comment


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reply: Reply | None = None
    reasons: tuple[str, ...] = ()
    unauthorized: tuple[Unauthorized, ...] = ()
    # True when the message is not SMTP+ traffic (unauthenticated, or an unknown login let
    # through): the adapter stops looking at it.
    bypass: bool = False
    # Authorized header addresses whose name or comment shows another address; never changes
    # the verdict.
    spoofing: tuple[Spoofing, ...] = ()

    @property
    def rejected(self) -> bool:
        return self.verdict is not Verdict.ACCEPT
