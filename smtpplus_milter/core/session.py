"""One message's whole story, without I/O: what Postfix said goes in, what to answer comes out.

A :class:`MessageSession` is driven step by step by whatever door the message came through: the
milter adapter calls it from libmilter's callbacks, ``explain`` calls the same steps with what the
operator typed. Each step returns a :class:`Step` (go on, stop looking, refuse with a reply); the
end of the message returns the header edits and, for a list with a header/footer, the banner to
add. When the session is over, :meth:`MessageSession.outcome` is the one value that the reporter
turns into the ``message`` log line, the metrics and the alerts (and, later, the tracking record).

The rules, in the order they apply:

1. MAIL FROM: a session without a SASL login is only judged when Postfix agreed to send us the
   macros we asked for (otherwise "no login" may just mean a trimmed macro list: 451). Then
   :func:`~smtpplus_milter.core.authorization.decide_mail_from` (unauthenticated / unknown /
   disabled user, envelope sender). A ``SIZE=`` over ``limits.max_message_bytes`` is refused here.
2. End of headers: :func:`~smtpplus_milter.core.authorization.decide_headers` (From:/Sender:), then
   the priority plan (headers read, combined with the user's priority, one queue).
3. End of message: the size actually received is checked again (a client may lie in SIZE= or
   send none); then the priority edits and the banner of the user's list. When the user's list
   splits its messages (``lists.NAME.bcc_in_to``) and some envelope recipient is not named in
   To:/Cc:, the tag ``X-SMTPPlus-Fanout: <queue id> <mode>`` is added AFTER ``X-SMTPPlus-Queue``:
   Postfix runs the last FILTER its header checks found, and the fanout filter must win over the
   priority transport (each copy gets its priority transport when it is re-injected). A milter
   cannot create messages; the copies are made after the queue (docs/fanout.md).
   A list with ``unsubscribe`` (docs/unsubscribe.md): any ``List-Unsubscribe``/``List-Unsubscribe-Post``
   the client sent is deleted (and ``List-Id`` when the list has ``list_id``, which is then added);
   with one recipient the two headers with that recipient's token are added here, with several the
   message is tagged ``<queue id> each <list> <user>`` and the fanout filter adds them to each copy.

A refusal, once decided, stays that refusal whatever fails afterwards; a failure before any
decision answers what ``milter.on_internal_error`` says (:meth:`MessageSession.fail`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import BinaryIO, Literal

from smtpplus_milter.core.authorization import decide_headers, decide_mail_from
from smtpplus_milter.core.decision import Decision, Reply, Spoofing, Unauthorized, Verdict, safe_text
from smtpplus_milter.core.fanout import TAG, Tag, named, needs_fanout
from smtpplus_milter.core.priority import HeaderEdit, PriorityPlan, plan_priority
from smtpplus_milter.core.suppression import Entry, suppressed_recipient
from smtpplus_milter.core.tokens import BOUNCE_PREFIX, make_bounce_token
from smtpplus_milter.core.tracking import (
    MAX_FIELD,
    MAX_RECIPIENTS,
    MessageRecord,
    decode_subject,
    envelope_address,
    first_value,
    from_address,
    recipient_address,
)
from smtpplus_milter.core.unsubscribe import HEADERS as UNSUBSCRIBE_HEADERS
from smtpplus_milter.core.unsubscribe import LIST_ID, ListUnsubscribe, list_id_value
from smtpplus_milter.core.users import Directory, User
from smtpplus_milter.mime.footer import Banner, InjectionResult, inject

INTERNAL_ERROR_REPLY = Reply("451", "4.3.0", "SMTP+ relay: temporary internal error, try again later")
MACROS_MISSING_REPLY = Reply(
    "451", "4.3.0", "SMTP+ relay: cannot tell whether this session is authenticated, try again later"
)
# Put into every HTML banner/footer so a forwarded or resent message never gets a second one.
FOOTER_MARKER = "smtpplus-footer"

# To:/Cc: values above this many bytes in all are not parsed to find who is named (measured with
# the parser core.fanout.named uses: 64 KiB of commas 0.14 s, 64 KiB of addresses 0.06 s): such a
# message is tagged whenever its list splits, and the fanout filter decides per copy (a named
# recipient's copy goes on unchanged). So is a value the parser gives up on (600 nested "(" make
# it recurse too deep): tagging when in doubt costs a pass through the filter, never a copy.
MAX_NAMED_BYTES = 64 * 1024

# Metric label values that are not logins.
UNAUTHENTICATED = "_unauthenticated"
UNKNOWN = "_unknown"
ALL_USERS = "_all"

# Alert kinds (the sinks turn them into alertnames).
UNAUTHORIZED_SENDER = "unauthorized_sender"
DISABLED_USER = "disabled_user"
DISPLAY_NAME_SPOOFING = "display_name_spoofing"


def size_reply(limit: int) -> Reply:
    return Reply(
        "552", "5.3.4", f"message too big: this relay accepts at most {limit} bytes (limits.max_message_bytes)"
    )


@dataclass(frozen=True)
class ReturnPath:
    domain: str
    node: str
    key: bytes = field(repr=False)

    def sender(self, queue_id: str) -> str:
        return f"{BOUNCE_PREFIX}{make_bounce_token(self.node, queue_id, self.key)}@{self.domain}"


@dataclass(frozen=True)
class Rules:
    """The part of the configuration a message is judged by, snapshotted at MAIL FROM."""

    directory: Directory
    queues: Mapping[int, str]
    max_message_bytes: int
    # List name -> what it adds; only lists that add something are here.
    banners: Mapping[str, Banner] = field(default_factory=dict)
    on_internal_error: Literal["tempfail", "accept"] = "tempfail"
    display_name_spoofing: Literal["alert", "log", "off"] = "alert"
    per_user_labels: bool = True
    # bounces.return_path: SMTP+ mail leaves with the envelope sender b+TOKEN@<domain> (TOKEN:
    # this node and the queue id, signed with the key), so reports come back to the relay.
    return_path: ReturnPath | None = None
    # List name -> how its messages are split into per-recipient copies (core.fanout.MODES;
    # lists.NAME.bcc_in_to gives "bcc"). Lists that are not split are not here.
    fanout: Mapping[str, str] = field(default_factory=dict)
    # List name -> its unsubscribe settings (lists.NAME.unsubscribe, with the key): every recipient
    # gets List-Unsubscribe with their own token. Lists without it (transactional) are not here.
    unsubscribe: Mapping[str, ListUnsubscribe] = field(default_factory=dict)
    # List name -> lists.NAME.list_id (List-Id: <id>); lists without one are not here.
    list_ids: Mapping[str, str] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return self.directory.policy.mode.value


class Action(StrEnum):
    CONTINUE = "continue"  # go on with the next step
    ACCEPT = "accept"  # accept the message unchanged and stop looking at it
    REJECT = "reject"
    TEMPFAIL = "tempfail"
    DISCARD = "discard"  # accept it and deliver it to nobody (every recipient was dropped)


@dataclass(frozen=True)
class Step:
    action: Action
    reply: Reply | None = None

    @property
    def refused(self) -> bool:
        return self.action in (Action.REJECT, Action.TEMPFAIL)


GO_ON = Step(Action.CONTINUE)


@dataclass(frozen=True)
class EndOfMessage:
    """What to do at the end of an accepted message: header edits first, then the banner."""

    step: Step
    edits: tuple[HeaderEdit, ...] = ()
    banner: Banner | None = None
    drop: tuple[str, ...] = ()  # RCPT TO arguments to remove (suppressed, suppression.action drop)
    sender: str | None = None  # the new envelope sender (bounces.return_path), None: unchanged


@dataclass(frozen=True)
class Notice:
    """Something an operator should be alerted about (one per address and kind)."""

    kind: str  # unauthorized_sender | disabled_user | display_name_spoofing
    user: str
    sender: str
    field: str  # envelope_from | header_from | header_sender, comma-joined when several
    action: str  # rejected | delivered
    reply: str  # the reply the client got, "" when delivered
    shown: str = ""  # display_name_spoofing: the other addresses it showed


@dataclass(frozen=True)
class Suppressed:
    """A recipient the suppression list kept from a message, and the entry that did it."""

    rcpt_to: str  # as the client gave it (what the milter must name to remove it)
    address: str
    entry: Entry
    dropped: bool  # accepted and removed (suppression.action drop) rather than refused at RCPT


@dataclass(frozen=True)
class Outcome:
    """Everything that is known about one message once it is decided."""

    decision: Decision
    stage: str  # mail_from | end_of_headers | end_of_message: where the final answer was given
    login: str | None
    user: User | None
    user_label: str  # the smtpplus_*{user} label: a login, _unknown, _unauthenticated or _all
    queue_id: str | None
    mail_from: str
    headers: tuple[tuple[str, str], ...]
    size: int | None  # bytes received (or announced with SIZE= when nothing was received)
    priority: PriorityPlan | None  # only for an accepted message
    footer: InjectionResult | None
    mode: str
    spoofing: tuple[Spoofing, ...]  # only those the operator wants to hear about
    notices: tuple[Notice, ...]
    recipients: tuple[str, ...] = ()  # envelope recipients as given at RCPT TO (at most MAX_RECIPIENTS)
    suppressed: tuple[Suppressed, ...] = ()  # recipients the suppression list kept from the message
    fanout: Tag | None = None  # the tag added: the message is split into per-recipient copies

    @property
    def verdict(self) -> Verdict:
        return self.decision.verdict

    @property
    def action(self) -> str:
        return _action(self.decision.verdict)

    def record(self, node: str, accepted_at: datetime) -> MessageRecord | None:
        """The tracking record of an accepted SMTP+ message; None for anything else.

        Only messages of a known user, accepted and with a queue id, are tracked: a refused or
        tempfailed message never entered the queue, and unauthenticated mail is not SMTP+ traffic.
        """
        plan = self.priority
        if self.decision.verdict is not Verdict.ACCEPT or self.decision.bypass or self.user is None:
            return None
        if not self.queue_id or plan is None:
            return None
        message_id = first_value(self.headers, "Message-ID")
        return MessageRecord(
            node=node,
            queue_id=self.queue_id,
            user=self.user.login,
            list=self.user.list,
            envelope_from=envelope_address(self.mail_from),
            header_from=from_address(self.headers),
            subject=decode_subject(first_value(self.headers, "Subject") or ""),
            message_id=message_id.strip()[:MAX_FIELD] if message_id else None,
            size=self.size or 0,
            priority=plan.effective,
            queue=plan.queue,
            accepted_at=accepted_at,
            recipients=self.recipients,
            suppressed=tuple(dict.fromkeys(item.address for item in self.suppressed)),
        )

    def header_values(self, name: str) -> list[str]:
        return [safe_text(value.strip(), 200) for key, value in self.headers if key.lower() == name]

    def log_fields(self, elapsed: float) -> dict[str, object]:
        """The fields of the one ``message`` log event (*elapsed*: seconds from MAIL FROM)."""
        accepted = self.decision.verdict is Verdict.ACCEPT
        plan = self.priority if accepted else None
        return {
            "queue_id": self.queue_id,
            "user": self.login,
            "senders": {
                "envelope_from": safe_text(self.mail_from.strip("<>"), 200),
                "header_from": self.header_values("from"),
                "header_sender": self.header_values("sender"),
            },
            "decision": self.decision.verdict.value,
            "reply": str(self.decision.reply) if self.decision.reply else None,
            "reasons": list(self.decision.reasons),
            "priority": (
                {
                    "message": plan.message if plan.reading.carried else None,
                    "user": plan.user,
                    "effective": plan.effective,
                }
                if plan
                else None
            ),
            "queue": plan.queue if plan else None,
            "footer": {"result": self.footer.status, "reason": self.footer.reason} if self.footer else None,
            "size": self.size,
            **(
                {
                    "suppressed": [
                        {"recipient": i.address, "scope": i.entry.scope, "reason": i.entry.reason, "dropped": i.dropped}
                        for i in self.suppressed
                    ]
                }
                if self.suppressed
                else {}
            ),
            **({"fanout": self.fanout.mode} if self.fanout is not None else {}),
            "ms": round(elapsed * 1000, 2),
        }


class MessageSession:
    """One message from MAIL FROM to the final answer. Not thread-safe: one per connection.

    *macros_requested*: Postfix agreed at negotiation to send the macros asked for; without
    that, a missing login proves nothing.
    """

    def __init__(self, rules: Rules, *, macros_requested: bool = True) -> None:
        self.rules = rules
        self.macros_requested = macros_requested
        self.login: str | None = None
        self.user: User | None = None
        self.queue_id: str | None = None
        self.envelope_from = ""
        self.announced_size: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.recipients: list[str] = []
        self.more_recipients = False  # more than MAX_RECIPIENTS: the rest were not kept
        self.fanout: Tag | None = None
        self.suppressed: list[Suppressed] = []
        self.received = 0  # header and body bytes as they arrived
        self.reasons: list[str] = []
        self.unauthorized: list[Unauthorized] = []
        self.spoofing: list[Spoofing] = []
        self.priority: PriorityPlan | None = None
        self.banner: Banner | None = None
        self.footer: InjectionResult | None = None
        self.stage = "mail_from"
        self.bypass = False
        # Set once a refusal is decided: nothing that fails afterwards may change it.
        self.refusal: Decision | None = None
        self._outcome: Outcome | None = None
        self._oversize = False

    # --- the steps ------------------------------------------------------------------------

    def mail_from(
        self,
        login: str | None,
        mail_from: str,
        params: tuple[str, ...] = (),
        *,
        queue_id: str | None = None,
        daemon_name: str | None = None,
    ) -> Step:
        self.login = login or None
        self.envelope_from = mail_from
        self.queue_id = queue_id or None
        for param in params:
            name, _, value = param.partition("=")
            if name.upper() == "SIZE" and value.isdigit():
                self.announced_size = int(value)
        if self.login is None and not self.macros_requested:
            reason = "no {auth_authen}: Postfix did not agree to send the macros this milter needs"
            return self._refuse(Decision(Verdict.TEMPFAIL, MACROS_MISSING_REPLY, reasons=(reason,)))
        directory = self.rules.directory
        decision = decide_mail_from(directory, self.login, mail_from, daemon_name=daemon_name)
        self._note(decision)
        if decision.bypass:
            self.bypass = True
            self._decide(decision)
            return Step(Action.ACCEPT)
        if decision.rejected:
            return self._refuse(decision)
        self.user = directory.lookup(self.login or "")
        limit = self.rules.max_message_bytes
        if self.announced_size is not None and self.announced_size > limit:
            self.reasons.append(f"SIZE={self.announced_size} is over limits.max_message_bytes ({limit})")
            return self._refuse(Decision(Verdict.REJECT, size_reply(limit)))
        return GO_ON

    def recipient(
        self, rcpt_to: str, suppressions: Mapping[str, Sequence[Entry]] | None = None, *, drop: bool = False
    ) -> Step:
        """One RCPT TO that Postfix accepted so far: checked against the suppression list.

        A suppressed recipient of an SMTP+ user is refused with 550 5.7.1 (the other recipients go
        on), or with *drop* accepted and removed at the end of the message. Either way it is
        recorded in state ``suppressed``. Every other one is kept for the tracking record (bounded).
        """
        address = recipient_address(rcpt_to)
        user = self.user
        refused = (
            suppressed_recipient(suppressions, user.login, user.list, rcpt_to)
            if suppressions and user is not None
            else None
        )
        if refused is not None and len(self.suppressed) < MAX_RECIPIENTS:
            entry, refusal = refused
            self.suppressed.append(Suppressed(rcpt_to, address, entry, drop))
            if not drop:
                return Step(Action.REJECT, refusal)
        elif len(self.recipients) < MAX_RECIPIENTS:
            self.recipients.append(address)
        else:
            self.more_recipients = True
        return GO_ON

    @property
    def wants_recipients(self) -> bool:
        """True when the end of message needs the envelope recipients (the user's list splits)."""
        user = self.user
        if user is None or user.list is None:
            return False
        return user.list in self.rules.fanout or user.list in self.rules.unsubscribe

    def header(self, name: str, value: str) -> None:
        self.headers.append((name, value))
        self.received += len(name) + len(value) + 4  # "name: value\r\n"

    def end_of_headers(self, queue_id: str | None = None) -> Step:
        user = self.user
        if user is None or self.decided:  # MAIL FROM was not judged here: nothing to judge
            return Step(Action.ACCEPT)
        self.stage = "end_of_headers"
        self.queue_id = queue_id or self.queue_id
        self.received += 2  # the empty line that ends the header
        decision = decide_headers(self.rules.directory, user, self.headers)
        self._note(decision)
        if decision.rejected:
            return self._refuse(decision)
        self.priority = plan_priority(self.headers, user_priority=user.priority, queues=self.rules.queues)
        self.reasons.extend(self.priority.reading.problems)
        self.banner = self.rules.banners.get(user.list) if user.list else None
        return GO_ON

    @property
    def wants_body(self) -> bool:
        """True when the body must be kept for :meth:`add_banner` (the user's list adds one)."""
        return self.banner is not None and not self._oversize

    def body(self, size: int) -> bool:
        """Count *size* more body bytes; False once the message is over the limit (stop keeping it)."""
        if self._oversize:
            return False
        self.received += size
        if self.received > self.rules.max_message_bytes:
            self._oversize = True
        return not self._oversize

    def end_of_message(self, queue_id: str | None = None) -> EndOfMessage:
        if self.decided:
            return EndOfMessage(GO_ON)
        self.stage = "end_of_message"
        self.queue_id = queue_id or self.queue_id
        limit = self.rules.max_message_bytes
        if self._oversize or self.received > limit:
            self.reasons.append(f"{self.received} bytes received, over limits.max_message_bytes ({limit})")
            return EndOfMessage(self._refuse(Decision(Verdict.REJECT, size_reply(limit))))
        edits = self.priority.edits if self.priority is not None else ()
        drop = tuple(item.rcpt_to for item in self.suppressed if item.dropped)
        if drop and not self.recipients:
            # Every recipient is suppressed: nobody to deliver to, and the client is told "sent".
            self.reasons.append("every recipient is suppressed: accepted and discarded")
            return EndOfMessage(Step(Action.DISCARD), drop=drop)
        return_path = self.rules.return_path
        sender = return_path.sender(self.queue_id) if return_path is not None and self.queue_id else None
        list_edits = (*self._list_edits(), *self._fanout_edits())
        return EndOfMessage(GO_ON, (*edits, *list_edits), self.banner, drop, sender)

    def _list_edits(self) -> tuple[HeaderEdit, ...]:
        """List-Id and, for a list with unsubscribe, the client's List-Unsubscribe headers replaced.

        The two List-Unsubscribe headers are added here only for a message with one recipient;
        with several, :meth:`_fanout_edits` tags it and the filter adds them per copy.
        """
        user = self.user
        if user is None or user.list is None:
            return ()
        unsubscribe = self.rules.unsubscribe.get(user.list)
        list_id = self.rules.list_ids.get(user.list)
        replaced = {name.lower() for name in UNSUBSCRIBE_HEADERS} if unsubscribe is not None else set()
        if list_id is not None:
            replaced.add(LIST_ID.lower())
        edits: list[HeaderEdit] = []
        for wanted in sorted(replaced):
            found = [name for name, _ in self.headers if name.strip().lower() == wanted]
            # Last first: the indices of the ones still to delete never shift.
            edits += [HeaderEdit("delete", found[i], index=i + 1) for i in reversed(range(len(found)))]
        if list_id is not None:
            edits.append(HeaderEdit("add", LIST_ID, list_id_value(list_id)))
        recipients = self._distinct_recipients()
        if unsubscribe is not None and len(recipients) == 1 and not self.more_recipients:
            try:
                added = unsubscribe.headers(user.login, user.list, recipients[0], self.queue_id)
            except ValueError as exc:  # an address too long for a token: delivered without them
                self.reasons.append(f"no List-Unsubscribe: {exc}")
            else:
                edits += [HeaderEdit("add", name, value) for name, value in added]
        return tuple(edits)

    def _distinct_recipients(self) -> list[str]:
        """The envelope recipients still in the message, each address once (case-insensitive)."""
        return list({address.lower(): address for address in self.recipients}.values())

    def _fanout_edits(self) -> tuple[HeaderEdit, ...]:
        """For a list that splits: every Bcc: header deleted, and the fanout tag when a recipient is
        not named in To:/Cc:.

        Added after the priority edits, so after ``X-SMTPPlus-Queue`` (the last FILTER wins).
        """
        user = self.user
        mode = self.rules.fanout.get(user.list) if user is not None and user.list else None
        # A list with unsubscribe gives every recipient their own copy (their own token).
        unsubscribe = user is not None and user.list is not None and user.list in self.rules.unsubscribe
        if unsubscribe:
            mode = "each"
        if mode is None or user is None:
            return ()
        # A Bcc: header never leaves a list that splits, whether this message is split or not (the
        # filter also removes it from every copy; this covers the unsplit ones and the copies
        # of a message the filter could not read). Last first: the indices never shift.
        bcc = [name for name, _ in self.headers if name.strip().lower() == "bcc"]
        hidden = tuple(HeaderEdit("delete", bcc[i], index=i + 1) for i in reversed(range(len(bcc))))
        if not self.queue_id:
            # The filter keys its journal by the queue id: without one, no copies (never the case
            # with Postfix, which we ask for macro i at end of message).
            self.reasons.append("no queue id from Postfix: not split into per-recipient copies")
            return hidden
        values = [value for name, value in self.headers if name.strip().lower() in ("to", "cc")]
        if mode == "each":
            # Who is named does not matter: more than one recipient is split (and one recipient
            # already got the headers from _list_edits).
            needed = self.more_recipients or len(self._distinct_recipients()) > 1
        elif self.more_recipients or sum(len(value) for value in values) > MAX_NAMED_BYTES:
            needed = True  # cannot tell cheaply: the filter decides per copy
        else:
            try:
                needed = needs_fanout(mode, named(values), self.recipients)
            except (RecursionError, ValueError):
                needed = True
        if not needed:
            return hidden
        self.fanout = Tag(self.queue_id, mode, user.list, user.login) if unsubscribe else Tag(self.queue_id, mode)
        return (*hidden, HeaderEdit("add", TAG, self.fanout.render()))

    def add_banner(self, body: BinaryIO | bytes) -> InjectionResult:
        """Run the header/footer injection on the kept body and remember its result.

        The caller applies ``header_changes`` and the new body when the status is ``added``.
        """
        assert self.banner is not None
        result = inject(self.headers, body, self.banner, marker=FOOTER_MARKER)
        self.footer = result
        if result.status not in ("added", "skipped"):
            self.reasons.append(f"footer not added ({result.status}): {result.reason}; delivered unchanged")
        return result

    def accept(self) -> None:
        """The message was accepted with every change applied."""
        if not self.decided:
            self._decide(
                Decision(
                    Verdict.ACCEPT,
                    reasons=tuple(self.reasons),
                    unauthorized=tuple(self.unauthorized),
                    spoofing=tuple(self.spoofing),
                )
            )

    def fail(self, description: str) -> Step:
        """Something failed in the adapter or here: what to answer now.

        A refusal decided before the failure stays that refusal. Otherwise the answer is what
        ``milter.on_internal_error`` says: tempfail (the client retries, nothing is lost) or
        accept unchanged. What was found before the failure (an unauthorized sender) is kept.
        """
        if self.refusal is not None:
            return _step(self.refusal)
        if self.rules.on_internal_error == "accept":
            decision = Decision(Verdict.ACCEPT, None, (*self.reasons, "internal error: accepted unchanged"))
        else:
            decision = Decision(
                Verdict.TEMPFAIL, INTERNAL_ERROR_REPLY, (*self.reasons, f"internal error: {description}")
            )
        self._decide(
            Decision(
                decision.verdict,
                decision.reply,
                decision.reasons,
                tuple(self.unauthorized),
                spoofing=tuple(self.spoofing),
            )
        )
        return _step(decision) if decision.rejected else Step(Action.ACCEPT)

    # --- the result -----------------------------------------------------------------------

    @property
    def decided(self) -> bool:
        return self._outcome is not None

    def outcome(self) -> Outcome | None:
        """The final outcome, once decided (None while the message is still going on)."""
        return self._outcome

    def _note(self, decision: Decision) -> None:
        self.reasons.extend(decision.reasons)
        self.unauthorized.extend(decision.unauthorized)
        self.spoofing.extend(decision.spoofing)

    def _refuse(self, decision: Decision) -> Step:
        reply = decision.reply or INTERNAL_ERROR_REPLY
        final = Decision(
            decision.verdict, reply, tuple(self.reasons), tuple(self.unauthorized), spoofing=tuple(self.spoofing)
        )
        self.refusal = final
        self._decide(final)
        return _step(final)

    def _decide(self, decision: Decision) -> None:
        if self._outcome is not None:
            return
        self._outcome = self._build(decision)

    def _build(self, decision: Decision) -> Outcome:
        rules = self.rules
        accepted = decision.verdict is Verdict.ACCEPT
        spoofing = tuple(self.spoofing) if rules.display_name_spoofing != "off" else ()
        return Outcome(
            decision=decision,
            stage=self.stage,
            login=self.login,
            user=self.user if self.user is not None else rules.directory.lookup(self.login or ""),
            user_label=self._user_label(decision),
            queue_id=self.queue_id,
            mail_from=self.envelope_from,
            headers=tuple(self.headers),
            size=self.received or self.announced_size,
            priority=self.priority if accepted else None,
            footer=self.footer,
            mode=rules.mode,
            spoofing=spoofing,
            notices=self._notices(decision, spoofing),
            recipients=tuple(self.recipients),
            suppressed=tuple(self.suppressed),
            fanout=self.fanout if accepted else None,
        )

    def _user_label(self, decision: Decision) -> str:
        if not self.rules.per_user_labels:
            return ALL_USERS
        if decision.bypass:
            return UNKNOWN if self.login else UNAUTHENTICATED
        if self.user is not None:
            return self.user.login
        if self.login and self.rules.directory.lookup(self.login) is None:
            return UNKNOWN
        return self.login or UNAUTHENTICATED

    def _notices(self, decision: Decision, spoofing: tuple[Spoofing, ...]) -> tuple[Notice, ...]:
        """Which alerts this message raises: one per address and kind."""
        if not self.login:
            return ()
        user = self.user or self.rules.directory.lookup(self.login)
        login = user.login if user is not None else self.login
        reply = str(decision.reply) if decision.reply else ""
        action = _action(decision.verdict)
        notices = []
        # In alert mode the same sender is often both envelope and From: one alert for both.
        fields: dict[str, list[str]] = {}
        for item in decision.unauthorized:
            fields.setdefault(item.address, []).append(item.field)
        for address, names in fields.items():
            notices.append(Notice(UNAUTHORIZED_SENDER, login, address, ",".join(names), action, reply))
        if spoofing and self.rules.display_name_spoofing == "alert":
            spoofed: dict[str, tuple[list[str], list[str]]] = {}
            for found in spoofing:
                where, shown = spoofed.setdefault(found.address, ([], []))
                if found.field not in where:
                    where.append(found.field)
                if found.shown not in shown:
                    shown.append(found.shown)
            for address, (where, shown) in spoofed.items():
                notices.append(
                    Notice(DISPLAY_NAME_SPOOFING, login, address, ",".join(where), action, reply, ", ".join(shown))
                )
        if decision.verdict is Verdict.REJECT and user is not None and not user.active:
            sender = safe_text(self.envelope_from.strip("<>"), 200)
            notices.append(Notice(DISABLED_USER, login, sender, "envelope_from", action, reply))
        return tuple(notices)


def _action(verdict: Verdict) -> str:
    """What happened to the message, as alerts and log lines say it."""
    return "rejected" if verdict is Verdict.REJECT else "delivered"


def _step(decision: Decision) -> Step:
    return Step(Action.REJECT if decision.verdict is Verdict.REJECT else Action.TEMPFAIL, decision.reply)
