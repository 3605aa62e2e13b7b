"""Decisions are values: what to answer, and why.

The milter adapter turns a :class:`Decision` into libmilter calls; the same value feeds the
``message`` log event, the metrics, the alerts and ``explain``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    ACCEPT = "accepted"
    REJECT = "rejected"
    TEMPFAIL = "tempfailed"


@dataclass(frozen=True)
class Reply:
    code: str
    xcode: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.xcode} {self.text}"


@dataclass(frozen=True)
class Unauthorized:
    """One sender that the user may not use (fires an alert in both modes)."""

    field: str  # envelope_from | header_from | header_sender
    address: str  # as seen (normalised where possible), safe to log
    reason: str


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reply: Reply | None = None
    reasons: tuple[str, ...] = ()
    unauthorized: tuple[Unauthorized, ...] = ()
    # True when the message is not SMTP+ traffic (unauthenticated, or an unknown login let
    # through): the adapter stops looking at it.
    bypass: bool = False

    @property
    def rejected(self) -> bool:
        return self.verdict is not Verdict.ACCEPT
