"""What the milter would do with one message, and why (``smtpplus-milter explain``).

:func:`explain` runs the same decisions, in the same order and with the same inputs, as the
milter adapter does across its callbacks: :func:`decide_mail_from` at MAIL FROM (a rejection or
a bypass ends it there), then :func:`decide_headers` and :func:`plan_priority` at end of headers.
tests/milter/test_explain_agrees.py holds the two to the same answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from smtpplus_milter.core.authorization import decide_headers, decide_mail_from
from smtpplus_milter.core.decision import Decision, Verdict
from smtpplus_milter.core.priority import PriorityPlan, plan_priority
from smtpplus_milter.core.users import Directory, User


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
    directory: Directory,
    queues: Mapping[int, str],
    login: str | None,
    mail_from: str,
    headers: Sequence[tuple[str, str]],
) -> Explanation:
    headers = tuple(headers)
    first = decide_mail_from(directory, login, mail_from)
    if first.bypass or first.rejected:
        return Explanation(login, mail_from, headers, "mail_from", first, directory.lookup(login or ""), None)
    user = directory.lookup(login or "")
    assert user is not None  # decide_mail_from accepted a known user
    second = decide_headers(directory, user, headers)
    reasons = (*first.reasons, *second.reasons)
    unauthorized = (*first.unauthorized, *second.unauthorized)
    if second.rejected:
        final = Decision(second.verdict, second.reply, reasons, unauthorized, spoofing=second.spoofing)
        return Explanation(login, mail_from, headers, "end_of_headers", final, user, None)
    plan = plan_priority(headers, user_priority=user.priority, queues=queues)
    final = Decision(Verdict.ACCEPT, None, (*reasons, *plan.reading.problems), unauthorized, spoofing=second.spoofing)
    return Explanation(login, mail_from, headers, "end_of_message", final, user, plan)
