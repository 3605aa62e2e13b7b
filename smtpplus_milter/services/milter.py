"""The pymilter adapter: translate libmilter's callbacks into :class:`MessageSession` steps and
the session's answers back into libmilter calls.

Every decision is the core's (:mod:`smtpplus_milter.core.session`); this module only collects what
Postfix says, keeps the body when a banner needs it (in memory, on disk above
:data:`SPOOL_IN_MEMORY`), applies header edits and the new body, answers, and hands the outcome to
the reporter. One :class:`SmtpPlusMilter` lives per SMTP connection (libmilter calls it from its
worker threads); each message snapshots the runtime's config at MAIL FROM, so a reload never
changes the rules half-way through a message. Every callback is guarded: a bug here answers what
``milter.on_internal_error`` says (tempfail by default: the client retries, nothing is lost).
"""

from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TypeVar

import Milter

from smtpplus_milter.config import Config
from smtpplus_milter.core.decision import Reply
from smtpplus_milter.core.priority import HeaderEdit
from smtpplus_milter.core.session import Action, MessageSession, Outcome, Step
from smtpplus_milter.daemon import StartupFailed
from smtpplus_milter.infra.policy_client import RefundSender
from smtpplus_milter.infra.spool import SpoolAppender, SpoolProblem
from smtpplus_milter.observe.alerts import AlertDispatcher
from smtpplus_milter.observe.log import EventWriter, get_logger
from smtpplus_milter.observe.metrics import Metrics, serve_metrics
from smtpplus_milter.services.runtime import Runtime
from smtpplus_milter.services.tracking import TrackingWriter

log = get_logger()

# Bodies to rewrite stay in memory up to this size, then go to a temporary file.
SPOOL_IN_MEMORY = 256 * 1024
# replacebody in pieces: libmilter sends each call as one packet of at most 64 KiB anyway.
REPLACE_CHUNK = 65535

# What we may ask Postfix to do to a message (negotiated once per connection). SETSYMLIST lets
# us name the macros we need (MACROS).
FLAGS = Milter.ADDHDRS | Milter.CHGHDRS | Milter.CHGBODY | Milter.SETSYMLIST

# The macros the decisions depend on, asked for per stage at negotiation. Postfix then sends
# exactly these whatever main.cf's milter_*_macros say, so an operator who trims
# milter_mail_macros for another milter cannot make every session look unauthenticated.
# ({auth_authen}: the SASL login; i: the queue id; {daemon_name}: which Postfix service.)
MACROS: Mapping[int, str] = MappingProxyType(
    {
        Milter.M_ENVFROM: "{auth_authen} i {daemon_name}",
        Milter.M_EOH: "i",
        Milter.M_EOM: "i",
    }
)

_ANSWERS = MappingProxyType(
    {
        Action.CONTINUE: Milter.CONTINUE,
        Action.ACCEPT: Milter.ACCEPT,
        Action.REJECT: Milter.REJECT,
        Action.TEMPFAIL: Milter.TEMPFAIL,
        Action.DISCARD: Milter.DISCARD,
    }
)

_F = TypeVar("_F", bound=Callable[..., Any])


def _guarded(replying: bool) -> Callable[[_F], _F]:
    """Turn any exception into the session's internal-error answer.

    Callbacks Postfix does not wait for (``@noreply``) cannot answer; they remember the failure
    and the next callback that can answer does.
    """

    def decorate(func: _F) -> _F:
        @functools.wraps(func)
        def wrapper(self: SmtpPlusMilter, *args: Any) -> Any:
            try:
                if replying and self.failure is not None:
                    return self._internal_error()
                return func(self, *args)
            except Exception as exc:
                if self.failure is None:
                    self.failure = exc
                    log.exception("internal_error", callback=func.__name__, queue_id=self._queue_id())
                return self._internal_error() if replying else Milter.CONTINUE

        return wrapper  # type: ignore[return-value]

    return decorate


class SmtpPlusMilter(Milter.Base):  # type: ignore[misc]
    """One milter connection. Built by libmilter through ``functools.partial(SmtpPlusMilter, runtime)``."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        runtime.connections.opened()
        if not runtime.config.settings.milter.socket.is_unix:
            runtime.nodelay.apply()
        self._closed = False
        # True once Postfix has agreed to send MACROS (negotiate); until then a missing
        # {auth_authen} proves nothing.
        self.macros_requested = False
        self.session: MessageSession | None = None
        self.spool: tempfile.SpooledTemporaryFile[bytes] | None = None
        self.failure: Exception | None = None
        self.started = 0.0
        self.reported = False

    def negotiate(self, opts: list[int]) -> int:
        answer = Milter.Base.negotiate(self, opts)
        if answer != Milter.CONTINUE:  # pymilter could not negotiate: Postfix keeps its defaults
            log.error("macros_not_requested", reason="milter negotiation failed; sessions without a login get 451")
            return answer
        try:
            if not self._actions & Milter.SETSYMLIST:
                raise Milter.DisabledAction("the MTA does not let a milter choose its macros (SETSYMLIST)")
            for stage, names in MACROS.items():
                # A str, not bytes: pymilter's own setsymlist() passes bytes, which its C layer
                # refuses on Python 3 (and Base.negotiate swallows that error).
                self._ctx.setsymlist(stage, names)
        except Exception as exc:
            log.error("macros_not_requested", reason=str(exc), consequence="sessions without a login get 451")
            return answer
        self.macros_requested = True
        reader = self.runtime.suppressions
        if reader is not None and reader.current().entries:
            # The suppression list is checked at RCPT: Postfix must wait for that answer. Decided
            # per connection: while the list is empty, RCPT stays unanswered (no round trip).
            opts[1] &= ~Milter.P_NR_RCPT
            self._protocol = opts[1]
        return answer

    # Steps we never need: Postfix skips them entirely.
    @Milter.nocallback
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        return Milter.CONTINUE

    @Milter.nocallback
    def hello(self, hostname: str) -> int:
        return Milter.CONTINUE

    # Each recipient Postfix accepted: for the tracking record, checked against the suppression
    # list, and for the fanout decision at end of message (a list with bcc_in_to). Without the
    # suppression list nothing is answered here (noreply: Postfix does not wait).
    @Milter.noreply
    @_guarded(replying=False)
    def envrcpt(self, to: str, *params: str) -> int:
        session = self.session
        if session is None or session.decided or (self.runtime.tracking is None and not session.wants_recipients):
            return Milter.CONTINUE
        reader = self.runtime.suppressions
        # Only a connection that answers RCPT can refuse one (see negotiate).
        checking = reader is not None and not getattr(self, "_protocol", 0) & Milter.P_NR_RCPT
        index = reader.current().index if checking and reader is not None else None
        config, _rules = self.runtime.snapshot()
        step = session.recipient(to, index, drop=config.suppression.action == "drop")
        if session.suppressed and session.suppressed[-1].rcpt_to == to:
            reason = session.suppressed[-1].entry.reason
            self.runtime.metrics.suppressed.labels(user=session.login or "", reason=reason).inc()
        if step.action is Action.REJECT and step.reply is not None:
            self._set_reply(step.reply)  # this recipient only; the others go on
            return Milter.REJECT
        return Milter.CONTINUE

    @_guarded(replying=True)
    def envfrom(self, mail_from: str, *params: str) -> int:
        self._drop_spool()
        self.failure = None
        self.reported = False
        self.started = time.monotonic()
        _config, rules = self.runtime.snapshot()
        self.session = session = MessageSession(rules, macros_requested=self.macros_requested)
        step = session.mail_from(
            self.getsymval("{auth_authen}") or None,
            mail_from,
            params,
            queue_id=self.getsymval("i") or None,
            daemon_name=self.getsymval("{daemon_name}") or None,
        )
        return self._answer(step)

    # Defined (not @nocallback) on purpose: over TCP, answering DATA avoids a delayed-ACK stall
    # after the last RCPT (Postfix otherwise sends a lone small packet; measured here).
    @_guarded(replying=True)
    def data(self) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    @_guarded(replying=False)
    def header(self, name: str, value: str) -> int:
        if self.session is not None:
            self.session.header(name, value)
        return Milter.CONTINUE

    @_guarded(replying=True)
    def eoh(self) -> int:
        session = self.session
        if session is None:  # MAIL FROM was not seen by us: nothing to judge
            return Milter.ACCEPT
        step = session.end_of_headers(self.getsymval("i") or None)
        if step.action is Action.CONTINUE and session.wants_body:
            # Collected only for users whose list adds something; spooled to disk when large.
            self.spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, prefix="smtpplus-body-")
        return self._answer(step)

    # No reply per chunk: the size check answers at end of message (or at MAIL FROM with SIZE=).
    @Milter.noreply
    @_guarded(replying=False)
    def body(self, chunk: bytes) -> int:
        session = self.session
        if session is None or session.decided:
            return Milter.CONTINUE
        if not session.body(len(chunk)):
            self._drop_spool()  # never hold more than the limit
        elif self.spool is not None:
            self.spool.write(chunk)
        return Milter.CONTINUE

    @_guarded(replying=True)
    def eom(self) -> int:
        session = self.session
        if session is None or session.decided:
            return Milter.CONTINUE
        end = session.end_of_message(self.getsymval("i") or None)
        if end.step.refused:
            return self._answer(end.step)
        self._apply(end.edits)
        if end.banner is not None and self.spool is not None:
            self._add_banner(session, self.spool)
        for rcpt in end.drop:  # suppressed recipients accepted under suppression.action drop
            self.delrcpt(rcpt)
        if end.sender is not None:  # bounces.return_path: reports come back to the relay
            self.chgfrom(f"<{end.sender}>")
        session.accept()
        self._report()
        return _ANSWERS[end.step.action]

    def abort(self) -> int:
        # RSET, QUIT or a dropped client in the middle of a message: it was never accepted.
        self._drop_spool()
        self.session = None
        self.failure = None
        return Milter.CONTINUE

    def close(self) -> int:
        self._drop_spool()
        if not self._closed:
            self._closed = True
            self.runtime.connections.closed()
        return Milter.CONTINUE

    # --- applying the session's answers ---------------------------------------------------

    def _answer(self, step: Step) -> int:
        if step.reply is not None:
            self._set_reply(step.reply)
        if step.action is not Action.CONTINUE:
            self._report()
        return _ANSWERS[step.action]

    def _set_reply(self, reply: Reply) -> None:
        # The text is only the explanation: if libmilter will not take it, Postfix sends its own
        # generic text with the same class of answer (5xx stays 5xx), which is what counts.
        try:
            self.setreply(reply.code, reply.xcode, reply.text.replace("%", "%%"))
        except Exception:
            log.exception("reply_text_not_set", queue_id=self._queue_id(), reply=str(reply)[:200])

    def _apply(self, edits: tuple[HeaderEdit, ...]) -> None:
        for edit in edits:
            if edit.action == "add":
                self.addheader(edit.name, edit.value)
            else:  # an empty value deletes the header (smfi_chgheader)
                self.chgheader(edit.name, edit.index, edit.value if edit.action == "change" else "")

    def _add_banner(self, session: MessageSession, spool: tempfile.SpooledTemporaryFile[bytes]) -> None:
        spool.seek(0, 2)
        size = spool.tell()
        spool.seek(0)
        with self.runtime.budget.reserve(2 * size):  # the mapped input and the new body
            # The underlying file: a BytesIO while small; once rolled over, a real file that
            # inject() maps instead of reading into memory.
            result = session.add_banner(spool._file)  # type: ignore[arg-type]
            if result.status != "added" or result.body is None:
                return
            present = {name.lower() for name, _ in session.headers}
            for name, value in result.header_changes:
                if name.lower() in present:
                    self.chgheader(name, 1, value)
                else:
                    self.addheader(name, value)
            body = memoryview(result.body)
            for start in range(0, max(len(body), 1), REPLACE_CHUNK):
                self.replacebody(bytes(body[start : start + REPLACE_CHUNK]))
            del body, result

    def _drop_spool(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None

    def _internal_error(self) -> int:
        session = self.session
        if session is None:
            _config, rules = self.runtime.snapshot()
            session = self.session = MessageSession(rules, macros_requested=self.macros_requested)
        step = session.fail(repr(self.failure))
        if step.reply is not None and session.refusal is None:
            self._set_reply(step.reply)
        try:
            self._report()
        except Exception:  # the answer to Postfix matters more than the log line
            log.exception("finish_failed", queue_id=self._queue_id(), verdict=step.action.value)
        return _ANSWERS[step.action]

    def _report(self) -> None:
        """Hand the decided outcome to the reporter, once per message."""
        session = self.session
        outcome = session.outcome() if session is not None else None
        if outcome is None or self.reported:
            return
        self.reported = True
        runtime = self.runtime
        runtime.reporter.report(outcome, time.monotonic() - self.started if self.started else 0.0)
        if runtime.refunds is not None and session is not None:
            self._refund(runtime.refunds, session, outcome)
        if runtime.tracking is not None:
            record = outcome.record(runtime.node, datetime.now(UTC))
            if record is not None:
                runtime.tracking.submit(record)

    @staticmethod
    def _refund(refunds: RefundSender, session: MessageSession, outcome: Outcome) -> None:
        # Refused from the end of headers on: Postfix's end-of-data policy check ran before we saw
        # the headers and counted the message; it was not sent, so the count goes back.
        if not outcome.decision.rejected or session.stage == "mail_from" or session.user is None:
            return
        if session.queue_id:
            refunds.submit(session.user.login, session.queue_id)

    def _queue_id(self) -> str | None:
        return self.session.queue_id if self.session is not None else None


def factory_for(runtime: Runtime) -> Callable[[], SmtpPlusMilter]:
    """What libmilter calls for each new connection (``Milter.factory``)."""
    return functools.partial(SmtpPlusMilter, runtime)


# On SIGTERM, queued alerts get this long to go out before the process exits.
ALERTS_DRAIN_SECONDS = 5.0


class MilterService:
    """The milter as a :class:`~smtpplus_milter.daemon.Service`: its runtime, libmilter, metrics.

    Builds the process's one :class:`Runtime` (metrics on their own registry, served on
    ``metrics.listen``; the alert dispatcher; the background log writer) and binds libmilter's
    per-connection factory to it.
    """

    def __init__(self, config: Config) -> None:
        settings = config.settings
        self.config = config
        metrics = Metrics()
        listen = settings.metrics.listen
        if listen is not None:
            try:
                serve_metrics(listen, metrics.registry)
            except OSError as exc:
                raise StartupFailed(f"cannot serve metrics on {listen}: {exc.strerror}") from None
        # Alerts go out from threads of their own; the mail path only queues them.
        self.alerts = AlertDispatcher.from_config(settings.alerts, metrics)
        # The per-message log lines are written by a thread of their own, off libmilter's threads.
        self.writer = EventWriter()
        self.tracking: TrackingWriter | None = None
        if config.tracking is not None:
            # The milter only appends to the spool; the follower moves it into the store (docs/tracking.md).
            try:
                spool = SpoolAppender(config.tracking.spool_dir, max_bytes=config.tracking.spool_max_bytes)
            except SpoolProblem as exc:
                raise StartupFailed(str(exc)) from None
            self.tracking = TrackingWriter(spool, metrics)
            self.tracking.start()
        self.refunds: RefundSender | None = None
        policy = config.policy
        if policy.enabled and policy.refund_listen is not None:

            def refunded(result: str, reason: str) -> None:
                metrics.refund_requests.labels(result=result).inc()
                if result == "failed":
                    log.warning("limit_refund_failed", reason=reason, socket=str(policy.refund_listen))

            self.refunds = RefundSender(policy.refund_listen, refunded)
        self.runtime = Runtime(
            config,
            metrics=metrics,
            alerts=self.alerts,
            emit=self.writer.emit,
            tracking=self.tracking,
            refunds=self.refunds,
        )
        Milter.factory = factory_for(self.runtime)
        Milter.set_flags(FLAGS)

    def serve(self) -> None:
        milter = self.config.settings.milter
        Milter.runmilter("smtpplus", str(milter.socket), milter.timeout)

    def stop(self) -> None:
        import milter as libmilter

        libmilter.stop()

    def reload(self) -> None:
        self.runtime.reload()

    def busy(self) -> int:
        return self.runtime.connections.open

    def close(self) -> None:
        self.alerts.stop(ALERTS_DRAIN_SECONDS)
        if self.tracking is not None:
            self.tracking.stop()
        if self.refunds is not None:
            self.refunds.stop()
        self.writer.stop()

    def details(self) -> Mapping[str, Any]:
        listen = self.config.settings.metrics.listen
        return {
            "config": str(self.config.path),
            "users": len(self.config.directory.users),
            "metrics": str(listen) if listen is not None else None,
            "alert_sinks": self.alerts.sink_names,
            "tracking": self.config.tracking.node if self.config.tracking is not None else None,
        }
