"""What the milter would do with one message, and why (``smtpplus-milter explain``).

:func:`explain` drives a :class:`~smtpplus_milter.core.session.MessageSession`, the very object
the milter adapter drives from libmilter's callbacks, with the login, envelope sender and headers
the operator gave. The two cannot disagree: there is only one place where the rules are applied.
No body is given, so no header/footer is added (the list's banner is shown from the config).
With envelope recipients given, the fanout decision is shown too (a list with ``bcc_in_to`` tags
the message when a recipient is not named in To:/Cc:); there is no queue id yet, so the tag shows
:data:`EXPLAIN_QUEUE_ID` in its place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from smtpplus_milter.core.decision import Decision, Verdict
from smtpplus_milter.core.fanout import Tag
from smtpplus_milter.core.priority import HeaderEdit, PriorityPlan
from smtpplus_milter.core.session import Action, MessageSession, Rules
from smtpplus_milter.core.users import User

# Postfix names the queue file only once the message is received: explain shows this instead.
EXPLAIN_QUEUE_ID = "QUEUEID"


@dataclass(frozen=True)
class Explanation:
    login: str | None
    mail_from: str
    headers: tuple[tuple[str, str], ...]
    stage: str  # where the final answer is given: "mail_from" | "end_of_headers" | "end_of_message"
    decision: Decision  # the final one, reasons of every step included
    user: User | None
    priority: PriorityPlan | None  # only for a message that is accepted as SMTP+ traffic
    recipients: tuple[str, ...] = ()
    splits: bool = False  # the user's list makes per-recipient copies (bcc_in_to)
    fanout: Tag | None = None  # the tag the milter would add (queue id: EXPLAIN_QUEUE_ID)
    edits: tuple[HeaderEdit, ...] = ()  # every header edit at end of message, in order

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
    recipients: Sequence[str] = (),
) -> Explanation:
    headers = tuple(headers)
    session = MessageSession(rules)
    edits: tuple[HeaderEdit, ...] = ()
    step = session.mail_from(login, mail_from, daemon_name=daemon_name)
    if step.action is Action.CONTINUE:
        for rcpt in recipients:
            session.recipient(rcpt)
        for name, value in headers:
            session.header(name, value)
        step = session.end_of_headers()
        if step.action is Action.CONTINUE:
            end = session.end_of_message(EXPLAIN_QUEUE_ID)
            if not end.step.refused:
                edits = end.edits
                session.accept()
    outcome = session.outcome()
    assert outcome is not None  # every path above ends decided
    priority = outcome.priority if not outcome.decision.bypass else None
    return Explanation(
        login,
        mail_from,
        headers,
        outcome.stage,
        outcome.decision,
        outcome.user,
        priority,
        recipients=tuple(recipients),
        splits=session.wants_recipients and not outcome.decision.bypass,
        fanout=outcome.fanout,
        edits=edits,
    )
