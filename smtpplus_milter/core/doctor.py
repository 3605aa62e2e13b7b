"""``smtpplus-milter doctor``: will this relay's mail be delivered? The results, as values.

Each check says OK, WARN or FAIL, what it found, and the exact record or setting that fixes it
(docs/doctor.md). The checks themselves live where their inputs are: DNS checks in
:mod:`smtpplus_milter.core.deliverability` (through the ``Lookup`` interface verification already
uses), Postfix and port checks in :mod:`smtpplus_milter.admin.doctor_postfix`. This module owns
the shape every check returns, the report, its JSON (a contract with monitoring: keep the keys)
and its table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    """One check's result.

    *check*: what was checked (``spf``, ``dkim``, ``dmarc``, ``ptr``, ``tls``, ``port``,
    ``postfix_*``...); *subject*: of what (a domain, an IP, ``host:port``, a Postfix setting);
    *found*: what is there now; *fix*: the record to publish or the setting to change ("" when OK).
    """

    check: str
    subject: str
    status: Status
    found: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {
            "check": self.check,
            "subject": self.subject,
            "status": self.status.value,
            "found": self.found,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class Report:
    """Every check of one run, in the order they ran."""

    checks: tuple[Check, ...]

    @classmethod
    def of(cls, checks: Iterable[Check]) -> Report:
        return cls(tuple(checks))

    def count(self, status: Status) -> int:
        return sum(1 for check in self.checks if check.status is status)

    @property
    def failed(self) -> bool:
        return any(check.status is Status.FAIL for check in self.checks)

    @property
    def exit_code(self) -> int:
        """1 when any check failed, else 0 (warnings do not fail the run)."""
        return 1 if self.failed else 0

    def as_json(self) -> str:
        """Stable JSON: ``{"checks": [...], "summary": {"ok", "warn", "fail"}}``, checks in run order."""
        data = {
            "checks": [check.as_dict() for check in self.checks],
            "summary": {status.value.lower(): self.count(status) for status in Status},
        }
        return json.dumps(data, indent=2, ensure_ascii=False)

    def as_table(self) -> str:
        """For people: one block per check, the fix indented under it."""
        lines = []
        for check in self.checks:
            lines.append(f"{check.status.value:<4}  {check.check:<16} {check.subject}: {check.found}")
            if check.fix:
                lines.extend(f"      fix: {line}" for line in check.fix.splitlines())
        summary = ", ".join(f"{self.count(status)} {status.value}" for status in Status)
        lines.append(f"\n{summary}")
        return "\n".join(lines)
