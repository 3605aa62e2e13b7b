"""What the policy daemon answers Postfix, decided without I/O: one :class:`Conversation` per connection.

Postfix asks ``smtpplus-milter policyd`` twice per message (docs/limits.md):

* **At RCPT** (``smtpd_recipient_restrictions``), once per recipient, before the body is sent. The
  milter's own core decides, through a :class:`~smtpplus_milter.core.session.MessageSession`: an
  unknown or disabled SMTP+ user and an unauthorized envelope sender get exactly the milter's
  refusal (the milter keeps its own checks at MAIL FROM, which run first when both are in place);
  a recipient on the suppression list gets the milter's ``550 5.7.1`` (unless
  ``suppression.action`` is ``drop``: then the milter accepts and drops it); a recipient past the
  user's ``recipients_per_message`` gets ``452 4.5.3 Too many recipients``. Postfix sends
  ``recipient_count=0`` at RCPT, so the recipients are counted here, per message: Postfix gives
  every request about one message on one connection the same ``instance`` value, and a
  connection carries one message at a time.
* **At END-OF-MESSAGE** (``smtpd_end_of_data_restrictions``), once, when ``size`` and
  ``recipient_count`` are final: :meth:`Conversation.end_of_message` says what to count (an
  :class:`Admission`); the daemon's store checks and counts it in one step and
  :func:`limited` turns a refusal into the reply. The queue id is the token that makes a
  repeated request (Postfix retries a policy query) count once.

Sessions without a SASL login, logins that are not SMTP+ users under ``unknown_user: pass``, and
every other request (other stages, other request types) get ``DUNNO``: Postfix goes on with its
own restrictions, and the milter decides as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from smtpplus_milter.core.limits import TOO_MANY_RECIPIENTS, Limits, Message, Verdict, check_recipient
from smtpplus_milter.core.policy_protocol import PolicyRequest
from smtpplus_milter.core.session import Action, MessageSession, Outcome, Rules
from smtpplus_milter.core.suppression import Entry

# Config.limits_for: a login's resolved limits.
LimitsFor = Callable[[str], Limits]

DUNNO = "DUNNO"
# The store cannot be reached and sending_limits.on_store_error is tempfail.
STORE_UNAVAILABLE = "451 4.3.0 SMTP+ sending limits cannot be checked at the moment; try again later"

Stage = Literal["rcpt", "end_of_message", "other"]
Result = Literal[
    "dunno",  # not ours to judge (no login, not an SMTP+ user, another stage)
    "accepted",  # judged and allowed
    "refused",  # unknown/disabled user, unauthorized sender (the milter's refusal)
    "suppressed",  # a recipient on the suppression list
    "too_many_recipients",  # recipients_per_message
    "limited",  # a sending limit at END-OF-MESSAGE
    "store_error",  # the store could not answer (on_store_error decided)
]


@dataclass(frozen=True)
class Answer:
    """The reply to one request, and what happened for the log and the metrics.

    *outcome*: a refusal decided by this request for the first time (the reporter logs and counts
    it once per message, as the milter would have). *suppressed*: the entry that refused the
    recipient. *limit*: the limit named by a ``too_many_recipients`` or ``limited`` answer.
    """

    action: str
    stage: Stage
    result: Result
    login: str | None = None
    outcome: Outcome | None = None
    suppressed: Entry | None = None
    limit: str | None = None


@dataclass(frozen=True)
class Admission:
    """What END-OF-MESSAGE asks the store to check and count: *message* for user *key* under *limits*."""

    key: str  # the normalised login: one set of counters per SMTP+ user
    login: str
    limits: Limits
    message: Message
    token: str  # the queue id (a repeated request counts once)


def other(_request: PolicyRequest) -> Answer:
    return Answer(DUNNO, "other", "dunno")


def limited(admission: Admission, verdict: Verdict) -> Answer:
    """The answer for the store's *verdict* on *admission*."""
    if verdict.allowed:
        return Answer(DUNNO, "end_of_message", "accepted", admission.login)
    return Answer(
        verdict.reply(admission.login),
        "end_of_message",
        "too_many_recipients" if verdict.limit == "recipients_per_message" else "limited",
        admission.login,
        limit=verdict.limit,
    )


def store_failed(admission: Admission, on_store_error: str) -> Answer:
    """The store could not answer: ``tempfail`` (451, the client retries) or ``allow`` (uncounted)."""
    action = STORE_UNAVAILABLE if on_store_error == "tempfail" else DUNNO
    return Answer(action, "end_of_message", "store_error", admission.login)


@dataclass
class _Message:
    """What one connection knows about the message in progress (one ``instance``)."""

    instance: str
    session: MessageSession
    first: Answer | None  # the MAIL FROM judgement: None to go on, else the answer every request gets
    recipients: int = 0  # recipients this daemon let through so far


class Conversation:
    """One policy connection's state: the message in progress, keyed by Postfix's ``instance``.

    Not thread-safe: one connection is served by one thread, one request at a time.
    """

    def __init__(self) -> None:
        self._message: _Message | None = None

    def recipient(
        self,
        rules: Rules,
        request: PolicyRequest,
        limits_for: LimitsFor,
        suppressions: Mapping[str, Sequence[Entry]] | None,
        *,
        drop_suppressed: bool,
    ) -> Answer:
        """A RCPT request: judge the session once per message, then this recipient."""
        message = self._judge(rules, request)
        if message is None:
            return Answer(DUNNO, "rcpt", "dunno")
        if message.first is not None:
            first = message.first
            # Reported once per message: the copies for its other recipients carry no outcome.
            message.first = replace(first, outcome=None)
            return first
        session = message.session
        user = session.user
        login = user.login if user is not None else session.login
        rcpt = request.recipient or ""
        if suppressions and not drop_suppressed:
            step = session.recipient(rcpt, suppressions)
            if step.action is Action.REJECT and step.reply is not None:
                entry = session.suppressed[-1].entry if session.suppressed else None
                return Answer(str(step.reply), "rcpt", "suppressed", login, suppressed=entry)
        verdict = check_recipient(limits_for(login or ""), message.recipients + 1)
        if not verdict.allowed:
            return Answer(TOO_MANY_RECIPIENTS, "rcpt", "too_many_recipients", login, limit=verdict.limit)
        message.recipients += 1
        return Answer(DUNNO, "rcpt", "accepted", login)

    def end_of_message(self, rules: Rules, request: PolicyRequest, limits_for: LimitsFor) -> Answer | Admission:
        """An END-OF-MESSAGE request: what to count, or the answer when there is nothing to count."""
        message = self._judge(rules, request)
        self._message = None  # the message is over, whatever the answer
        if message is None:
            return Answer(DUNNO, "end_of_message", "dunno")
        if message.first is not None:
            first = message.first
            return Answer(first.action, "end_of_message", first.result, first.login)
        user = message.session.user
        if user is None:  # cannot happen: a session that goes on has its user
            return Answer(DUNNO, "end_of_message", "dunno")
        # The queue id is the token; should Postfix not send it, the instance still names this
        # message on this connection (a retry then counts again: Postfix always sends it here).
        token = request.queue_id or f"instance:{request.instance or ''}"
        counted = Message(recipients=request.recipient_count or 0, bytes=request.size or 0)
        return Admission(user.login, user.login, limits_for(user.login), counted, token)

    def _judge(self, rules: Rules, request: PolicyRequest) -> _Message | None:
        """The message this request belongs to, judged at its first request; None: not ours to judge."""
        login = request.sasl_username
        if not login:
            return None
        instance = request.instance or ""
        current = self._message
        if current is not None and current.instance == instance and instance:
            return current
        session = MessageSession(rules)
        step = session.mail_from(login, request.sender or "")
        first: Answer | None = None
        if session.bypass:
            self._message = None
            return None
        if step.refused and step.reply is not None:
            user = session.user
            first = Answer(
                str(step.reply),
                "rcpt",
                "refused",
                user.login if user is not None else login,
                outcome=session.outcome(),
            )
        current = self._message = _Message(instance, session, first)
        return current
