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
from smtpplus_milter.core.session import MessageSession, Outcome, Rules
from smtpplus_milter.core.suppression import Entry, suppressed_recipient
from smtpplus_milter.core.users import User

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
    user: User | None  # the SMTP+ user (None only with a refusal)
    first: Answer | None  # the MAIL FROM judgement: None to go on, else the answer every request gets
    recipients: int = 0  # recipients this daemon let through so far


# How many (login, envelope sender) judgements are remembered; past it they are all forgotten.
JUDGEMENTS = 10_000


class Judgements:
    """MAIL FROM judgements that let a message go on, shared by every connection of a daemon.

    The milter's session judges a login and an envelope sender the same way every time under one
    set of rules, and an application sends message after message with the same pair: remembering
    "this pair may send, as this user" (or "not an SMTP+ session") saves most of the work of a
    message's first request. Refusals are not remembered: each refused message is judged (and
    reported) afresh. A new set of rules (a reload) starts empty. Safe to share between threads:
    a lost race only judges a pair twice.
    """

    def __init__(self, size: int = JUDGEMENTS) -> None:
        self.size = size
        self._rules: Rules | None = None
        self._seen: dict[tuple[str, str], User | None] = {}

    def get(self, rules: Rules, login: str, sender: str) -> tuple[bool, User | None]:
        """(known, user): known False when the pair must be judged; user None: not ours to judge."""
        if rules is not self._rules:
            return False, None
        try:
            return True, self._seen[(login, sender)]
        except KeyError:
            return False, None

    def remember(self, rules: Rules, login: str, sender: str, user: User | None) -> None:
        if rules is not self._rules:
            self._rules, self._seen = rules, {}
        elif len(self._seen) >= self.size:
            self._seen = {}
        self._seen[(login, sender)] = user


class Conversation:
    """One policy connection's state: the message in progress, keyed by Postfix's ``instance``.

    Not thread-safe: one connection is served by one thread, one request at a time.
    *judgements*: the daemon's shared :class:`Judgements` (None: judge every message afresh).
    """

    def __init__(self, judgements: Judgements | None = None) -> None:
        self._message: _Message | None = None
        self._judgements = judgements

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
        user = message.user
        login = user.login if user is not None else ""
        if suppressions and not drop_suppressed and user is not None:
            refused = suppressed_recipient(suppressions, user.login, user.list, request.recipient or "")
            if refused is not None:
                entry, reply = refused
                return Answer(str(reply), "rcpt", "suppressed", login, suppressed=entry)
        verdict = check_recipient(limits_for(login), message.recipients + 1)
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
        user = message.user
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
        sender = request.sender or ""
        judgements = self._judgements
        if judgements is not None:
            known, user = judgements.get(rules, login, sender)
            if known:
                self._message = _Message(instance, user, None) if user is not None else None
                return self._message
        session = MessageSession(rules)
        step = session.mail_from(login, sender)
        first: Answer | None = None
        if session.bypass:
            if judgements is not None:
                judgements.remember(rules, login, sender, None)
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
        elif judgements is not None and session.user is not None:
            judgements.remember(rules, login, sender, session.user)
        current = self._message = _Message(instance, session.user, first)
        return current
