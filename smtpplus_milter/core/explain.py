"""What the milter would do with one message, and why (``smtpplus-milter explain``).

:func:`explain` drives a :class:`~smtpplus_milter.core.session.MessageSession`, the very object
the milter adapter drives from libmilter's callbacks, with the login, envelope sender and headers
the operator gave. The two cannot disagree: there is only one place where the rules are applied.
No body is given, so no header/footer is added (the list's banner is shown from the config).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from smtpplus_milter.core.decision import Decision, Verdict
from smtpplus_milter.core.priority import PriorityPlan
from smtpplus_milter.core.session import Action, MessageSession, Rules
from smtpplus_milter.core.users import User


@dataclass(frozen=True)
class Explanation:
    login: str | None
    mail_from: str
    headers: tuple[tuple[str, str], ...]
    stage: str  # where the final answer is given: "mail_from" | "end_of_headers" | "end_of_message"
    decision: Decision  # the final one, reasons of every step included
    user: User | None
    priority: PriorityPlan | None  # only for a message that is accepted as SMTP+ traffic

    @property
    def accepted(self) -> bool:
        return self.decision.verdict is Verdict.ACCEPT


def explain(
    rules: Rules,
    login: str | None,
    mail_from: str,
    headers: Sequence[tuple[str, str]],
    *,
    daemon_name: str | None = None,
) -> Explanation:
    headers = tuple(headers)
    session = MessageSession(rules)
    step = session.mail_from(login, mail_from, daemon_name=daemon_name)
    if step.action is Action.CONTINUE:
        for name, value in headers:
            session.header(name, value)
        step = session.end_of_headers()
        if step.action is Action.CONTINUE and not session.end_of_message().step.refused:
            session.accept()
    outcome = session.outcome()
    assert outcome is not None  # every path above ends decided
    priority = outcome.priority if not outcome.decision.bypass else None
    return Explanation(login, mail_from, headers, outcome.stage, outcome.decision, outcome.user, priority)
