"""The pymilter adapter: collect what Postfix says, ask the core, apply the answer.

One :class:`SmtpPlusMilter` instance lives per SMTP connection (libmilter calls it from its
worker threads). It snapshots the current config at MAIL FROM, so a reload never changes the
rules half-way through a message. Every callback is guarded: a bug in us answers what
``milter.on_internal_error`` says (tempfail by default: the client retries, nothing is lost).
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

import Milter

from smtpplus_milter.config import Config, ConfigError, load_config
from smtpplus_milter.core.authorization import decide_headers, decide_mail_from
from smtpplus_milter.core.decision import Decision, Reply, Spoofing, Verdict, safe_text
from smtpplus_milter.core.priority import HeaderEdit, PriorityPlan, plan_priority
from smtpplus_milter.core.users import User
from smtpplus_milter.mime.footer import Banner, InjectionResult, inject
from smtpplus_milter.observe import metrics
from smtpplus_milter.observe.alerts import (
    DISABLED_USER,
    DISPLAY_NAME_SPOOFING,
    UNAUTHORIZED_SENDER,
    Alert,
    AlertDispatcher,
)
from smtpplus_milter.observe.log import get_logger

log = get_logger()

INTERNAL_ERROR_REPLY = Reply("451", "4.3.0", "SMTP+ relay: temporary internal error, try again later")

# Bodies to rewrite stay in memory up to this size, then go to a temporary file.
SPOOL_IN_MEMORY = 256 * 1024
# replacebody in pieces: libmilter sends each call as one packet of at most 64 KiB anyway.
REPLACE_CHUNK = 65535
# Put into every HTML banner/footer so a forwarded or resent message never gets a second one.
FOOTER_MARKER = "smtpplus-footer"


def set_tcp_nodelay() -> None:
    """Turn off Nagle's algorithm on this process's connected TCP sockets (libmilter's among them).

    libmilter writes every modification (addheader, chgheader, replacebody) and the final answer
    as separate small packets. Over TCP, Nagle holds the second small write until the first is
    acknowledged, and Postfix delays that ACK: about 40 ms per message (measured
    here: 200 msgs/s over TCP against 430 over a unix socket once every message got a header).
    libmilter does not expose its sockets, so the new connection's descriptor is found in
    /proc/self/fd; this runs once per milter connection, only on an inet socket.
    """
    try:
        descriptors = os.listdir("/proc/self/fd")
    except OSError:
        return
    if len(_nodelay_seen) > 50_000:
        _nodelay_seen.clear()
    for name in descriptors:
        try:
            fd = int(name)
            info = os.fstat(fd)
            if not stat.S_ISSOCK(info.st_mode) or info.st_ino in _nodelay_seen:
                continue
            probe = socket.socket(fileno=os.dup(fd))
        except (ValueError, OSError):
            continue
        _nodelay_seen.add(info.st_ino)  # listening, unix and already-set sockets need no second look
        with probe:
            try:
                if probe.family in (socket.AF_INET, socket.AF_INET6) and probe.type == socket.SOCK_STREAM:
                    if not probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY):
                        probe.getpeername()  # connected sockets only; listening ones raise
                        probe.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                continue


# Socket inodes already switched to TCP_NODELAY (an inode is unique while the socket lives).
_nodelay_seen: set[int] = set()


class ByteBudget:
    """Bounds the memory that concurrent footer injections may hold at once.

    A rewrite maps its spooled input and builds the new body in memory, about twice the message
    size. Twenty 20 MB messages at once would need 800 MB; with this budget they take turns (one
    20 MB rewrite takes about 0.1 s), so the milter's peak stays near the budget. A message larger
    than the whole budget still goes through, alone.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, amount: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self.used == 0 or self.used + amount <= self.limit)
            self.used += amount
        try:
            yield
        finally:
            with self._changed:
                self.used -= amount
                self._changed.notify_all()


INJECTION_BUDGET = ByteBudget(48 * 1024 * 1024)


def size_reply(limit: int) -> Reply:
    return Reply(
        "552", "5.3.4", f"message too big: this relay accepts at most {limit} bytes (limits.max_message_bytes)"
    )


def banner_for(config: Config, user: User) -> Banner | None:
    """The header/footer of the user's list, or None when there is nothing to add."""
    section = config.settings.lists.get(user.list) if user.list else None
    if section is None:
        return None
    banner = Banner(
        header_text=section.header.text if section.header else None,
        header_html=section.header.html if section.header else None,
        footer_text=section.footer.text if section.footer else None,
        footer_html=section.footer.html if section.footer else None,
    )
    return banner if any((banner.header_text, banner.header_html, banner.footer_text, banner.footer_html)) else None


# What we may ask Postfix to do to a message (negotiated once per connection). SETSYMLIST lets
# us name the macros we need (MACROS).
FLAGS = Milter.ADDHDRS | Milter.CHGHDRS | Milter.CHGBODY | Milter.SETSYMLIST

# The macros the decisions depend on, asked for per stage at negotiation. Postfix then sends
# exactly these whatever main.cf's milter_*_macros say, so an operator who trims
# milter_mail_macros for another milter cannot make every session look unauthenticated.
# ({auth_authen}: the SASL login; i: the queue id; {daemon_name}: which Postfix service.)
MACROS: dict[int, str] = {
    Milter.M_ENVFROM: "{auth_authen} i {daemon_name}",
    Milter.M_EOH: "i",
    Milter.M_EOM: "i",
}

MACROS_MISSING_REPLY = Reply(
    "451", "4.3.0", "SMTP+ relay: cannot tell whether this session is authenticated, try again later"
)


class ConfigHolder:
    """The config every new message uses, swapped atomically by a reload, and the alert sender
    that follows it (None: alerts off, e.g. TestCtx tests)."""

    def __init__(self, config: Config, alerts: AlertDispatcher | None = None) -> None:
        self.config = config
        self.alerts = alerts
        self._lock = threading.Lock()

    def reload(self) -> bool:
        """Re-read both files; keep the old config if the new one does not validate."""
        with self._lock:
            try:
                new = load_config(self.config.path)
            except ConfigError as exc:
                metrics.RELOADS.labels(result="failed").inc()
                log.error(
                    "config_reload_failed",
                    config=str(self.config.path),
                    problems=[str(problem) for problem in exc.problems],
                    kept="previous config",
                )
                return False
            self.config = new
            if self.alerts is not None:
                self.alerts.reconfigure(new.settings.alerts)
            metrics.RELOADS.labels(result="ok").inc()
            log.info("config_reloaded", config=str(new.path), users=len(new.directory.users))
            return True


_F = TypeVar("_F", bound=Callable[..., Any])


def _guarded(replying: bool) -> Callable[[_F], _F]:
    """Turn any exception into the configured internal-error answer.

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
                    log.exception("internal_error", callback=func.__name__, queue_id=self.queue_id)
                return self._internal_error() if replying else Milter.CONTINUE

        return wrapper  # type: ignore[return-value]

    return decorate


_active = 0
_active_lock = threading.Lock()


class SmtpPlusMilter(Milter.Base):  # type: ignore[misc]
    holder: ClassVar[ConfigHolder]

    def __init__(self) -> None:
        global _active
        with _active_lock:
            _active += 1
        if not self.holder.config.settings.milter.socket.is_unix:
            set_tcp_nodelay()
        self._closed = False
        # True once Postfix has agreed to send MACROS (negotiate); until then a missing
        # {auth_authen} proves nothing.
        self.macros_requested = False
        self._reset()

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
        return answer

    @staticmethod
    def active_connections() -> int:
        """Connections libmilter has opened and not closed yet (a stop waits for these)."""
        return _active

    def _reset(self) -> None:
        if getattr(self, "spool", None) is not None:
            self._drop_spool()
        self.config: Config | None = None
        self.login: str | None = None
        self.user: User | None = None
        self.queue_id: str | None = None
        self.mail_from = ""
        self.size: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.started = 0.0
        self.reasons: list[str] = []
        self.unauthorized: list[Any] = []
        self.spoofing: list[Spoofing] = []
        self.failure: Exception | None = None
        self.finished = False
        self.priority: PriorityPlan | None = None
        self.received = 0  # header and body bytes as they arrived
        self.oversize = False
        self.banner: Banner | None = None
        self.spool: tempfile.SpooledTemporaryFile[bytes] | None = None
        self.footer: InjectionResult | None = None
        # Set once a refusal is decided for this message (see _internal_error).
        self.refusal: Decision | None = None

    # Steps we never need: Postfix skips them entirely.
    @Milter.nocallback
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        return Milter.CONTINUE

    @Milter.nocallback
    def hello(self, hostname: str) -> int:
        return Milter.CONTINUE

    @Milter.nocallback
    def envrcpt(self, to: str, *params: str) -> int:
        return Milter.CONTINUE

    # No reply per chunk: the size check answers at end of message (or at MAIL FROM with SIZE=).
    @Milter.noreply
    @_guarded(replying=False)
    def body(self, chunk: bytes) -> int:
        if self.config is None or self.oversize:
            return Milter.CONTINUE
        self.received += len(chunk)
        if self.received > self.config.settings.limits.max_message_bytes:
            self.oversize = True
            self._drop_spool()  # never hold more than the limit
        elif self.spool is not None:
            self.spool.write(chunk)
        return Milter.CONTINUE

    @_guarded(replying=True)
    def envfrom(self, mail_from: str, *params: str) -> int:
        self._reset()
        self.started = time.monotonic()
        self.config = config = self.holder.config
        self.mail_from = mail_from
        self.login = self.getsymval("{auth_authen}") or None
        self.queue_id = self.getsymval("i") or None
        for param in params:
            name, _, value = param.partition("=")
            if name.upper() == "SIZE" and value.isdigit():
                self.size = int(value)
        if self.login is None and not self.macros_requested:
            # Without our macro list, "no login" may only mean Postfix was told not to send it.
            return self._refuse(
                Decision(
                    Verdict.TEMPFAIL,
                    MACROS_MISSING_REPLY,
                    reasons=("no {auth_authen}: Postfix did not agree to send the macros this milter needs",),
                )
            )
        daemon_name = self.getsymval("{daemon_name}") or None
        decision = decide_mail_from(config.directory, self.login, mail_from, daemon_name=daemon_name)
        self._note(decision)
        if decision.bypass:
            self._finish(decision)
            return Milter.ACCEPT
        if decision.rejected:
            return self._refuse(decision)
        self.user = config.directory.lookup(self.login or "")
        limit = config.settings.limits.max_message_bytes
        if self.size is not None and self.size > limit:
            self.reasons.append(f"SIZE={self.size} is over limits.max_message_bytes ({limit})")
            return self._refuse(Decision(Verdict.REJECT, size_reply(limit)))
        return Milter.CONTINUE

    # Defined (not @nocallback) on purpose: over TCP, answering DATA avoids a delayed-ACK stall
    # after the last RCPT (Postfix otherwise sends a lone small packet; measured here).
    @_guarded(replying=True)
    def data(self) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    @_guarded(replying=False)
    def header(self, name: str, value: str) -> int:
        self.headers.append((name, value))
        self.received += len(name) + len(value) + 4  # "name: value\r\n"
        return Milter.CONTINUE

    @_guarded(replying=True)
    def eoh(self) -> int:
        config, user = self.config, self.user
        if config is None or user is None:  # MAIL FROM was not seen by us: nothing to judge
            return Milter.ACCEPT
        self.queue_id = self.getsymval("i") or self.queue_id
        self.received += 2  # the empty line that ends the header
        decision = decide_headers(config.directory, user, self.headers)
        self._note(decision)
        if decision.rejected:
            return self._refuse(decision)
        self.priority = plan_priority(self.headers, user_priority=user.priority, queues=config.settings.priority.queues)
        self.reasons.extend(self.priority.reading.problems)
        self.banner = banner_for(config, user)
        if self.banner is not None:
            # Collected only for users whose list adds something; spooled to disk when large.
            self.spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, prefix="smtpplus-body-")
        return Milter.CONTINUE

    @_guarded(replying=True)
    def eom(self) -> int:
        if self.config is None or self.finished:
            return Milter.CONTINUE
        self.queue_id = self.getsymval("i") or self.queue_id
        limit = self.config.settings.limits.max_message_bytes
        if self.oversize or self.received > limit:
            self.reasons.append(f"{self.received} bytes received, over limits.max_message_bytes ({limit})")
            return self._refuse(Decision(Verdict.REJECT, size_reply(limit)))
        if self.priority is not None:
            self._apply(self.priority.edits)
        if self.banner is not None and self.spool is not None:
            self._add_banner(self.banner, self.spool)
        self._finish(Decision(Verdict.ACCEPT, reasons=tuple(self.reasons), unauthorized=tuple(self.unauthorized)))
        return Milter.CONTINUE

    def _add_banner(self, banner: Banner, spool: tempfile.SpooledTemporaryFile[bytes]) -> None:
        spool.seek(0, 2)
        size = spool.tell()
        spool.seek(0)
        with INJECTION_BUDGET.reserve(2 * size):  # the mapped input and the new body
            # The underlying file: a BytesIO while small; once rolled over, a real file that
            # inject() maps instead of reading into memory.
            result = inject(self.headers, spool._file, banner, marker=FOOTER_MARKER)  # type: ignore[arg-type]
            self.footer = result
            if result.status != "added" or result.body is None:
                if result.status != "skipped":
                    self.reasons.append(f"footer not added ({result.status}): {result.reason}; delivered unchanged")
                return
            present = {name.lower() for name, _ in self.headers}
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

    def _apply(self, edits: tuple[HeaderEdit, ...]) -> None:
        for edit in edits:
            if edit.action == "add":
                self.addheader(edit.name, edit.value)
            else:  # an empty value deletes the header (smfi_chgheader)
                self.chgheader(edit.name, edit.index, edit.value if edit.action == "change" else "")

    def abort(self) -> int:
        # RSET, QUIT or a dropped client in the middle of a message: it was never accepted.
        self._drop_spool()
        self._reset()
        return Milter.CONTINUE

    def close(self) -> int:
        global _active
        self._drop_spool()
        if not self._closed:
            self._closed = True
            with _active_lock:
                _active -= 1
        return Milter.CONTINUE

    # --- applying decisions -------------------------------------------------------------

    def _note(self, decision: Decision) -> None:
        self.reasons.extend(decision.reasons)
        self.unauthorized.extend(decision.unauthorized)
        self.spoofing.extend(decision.spoofing)

    def _refuse(self, decision: Decision) -> int:
        """Answer a decided refusal. Nothing that fails from here on may turn it into anything else."""
        self.refusal = decision
        reply = decision.reply or INTERNAL_ERROR_REPLY
        self._set_reply(reply)
        self._finish(Decision(decision.verdict, reply, tuple(self.reasons), tuple(self.unauthorized)))
        return _answer(decision.verdict)

    def _set_reply(self, reply: Reply) -> None:
        # The text is only the explanation: if libmilter will not take it, Postfix sends its own
        # generic text with the same class of answer (5xx stays 5xx), which is what counts.
        try:
            self.setreply(reply.code, reply.xcode, reply.text.replace("%", "%%"))
        except Exception:
            log.exception("reply_text_not_set", queue_id=self.queue_id, reply=str(reply)[:200])

    def _internal_error(self) -> int:
        if self.refusal is not None:  # decided before the failure: a refusal stays a refusal
            self._finish_failed(self.refusal.verdict, self.refusal.reply)
            return _answer(self.refusal.verdict)
        config = self.config or self.holder.config
        if config.settings.milter.on_internal_error == "accept":
            self._finish_failed(Verdict.ACCEPT, None, "internal error: accepted unchanged")
            return Milter.ACCEPT
        self._set_reply(INTERNAL_ERROR_REPLY)
        self._finish_failed(Verdict.TEMPFAIL, INTERNAL_ERROR_REPLY, f"internal error: {self.failure!r}")
        return Milter.TEMPFAIL

    def _finish_failed(self, verdict: Verdict, reply: Reply | None, *extra: str) -> None:
        """Log and count a message whose handling failed, keeping what was found before the
        failure (an unauthorized sender is still counted and alerted). Never raises: the answer
        to Postfix matters more than the log line."""
        try:
            self._finish(Decision(verdict, reply, (*self.reasons, *extra), tuple(self.unauthorized)))
        except Exception:
            log.exception("finish_failed", queue_id=self.queue_id, verdict=verdict.value)

    def _finish(self, decision: Decision) -> None:
        """Log the one ``message`` event and count it. Called once per message."""
        if self.finished:
            return
        self.finished = True
        config = self.config or self.holder.config
        per_user = config.settings.metrics.per_user_labels
        if decision.bypass:
            label = "_unauthenticated" if not self.login else "_unknown"
        elif self.user is None and self.login and config.directory.lookup(self.login) is None:
            label = "_unknown"
        else:
            label = self.user.login if self.user else (self.login or "_unauthenticated")
        label = metrics.user_label(label, per_user)
        elapsed = time.monotonic() - self.started if self.started else 0.0
        metrics.MESSAGES.labels(user=label, result=decision.verdict.value).inc()
        metrics.PROCESSING.observe(elapsed)
        if self.received or self.size is not None:
            metrics.MESSAGE_BYTES.observe(self.received or self.size or 0)
        if self.footer is not None:
            metrics.FOOTER.labels(result=self.footer.status).inc()
        if self.priority is not None and decision.verdict is Verdict.ACCEPT:
            metrics.PRIORITY.labels(effective=str(self.priority.effective)).inc()
            metrics.QUEUE.labels(queue=self.priority.queue).inc()
        mode = config.settings.authorization.mode
        if decision.unauthorized:
            metrics.UNAUTHORIZED.labels(user=label, mode=mode).inc()
            for item in decision.unauthorized:
                log.warning(
                    "unauthorized_sender",
                    queue_id=self.queue_id,
                    user=self.login,
                    field=item.field,
                    sender=item.address,
                    mode=mode,
                    action="rejected" if decision.verdict is Verdict.REJECT else "delivered",
                )
        # Kept by _note from decide_headers (the decision given here may be built later, e.g. at
        # end of message); what it shows never changed the verdict.
        if self.spoofing and config.settings.authorization.display_name_spoofing != "off":
            metrics.SPOOFING.labels(user=label).inc()
            for found in self.spoofing:
                log.warning(
                    "display_name_spoofing",
                    queue_id=self.queue_id,
                    user=self.login,
                    field=found.field,
                    sender=found.address,
                    shown=found.shown,
                    where=found.where,
                    action="rejected" if decision.verdict is Verdict.REJECT else "delivered",
                )
        self._submit_alerts(decision, config)
        log.info(
            "message",
            queue_id=self.queue_id,
            user=self.login,
            senders={
                "envelope_from": safe_text(self.mail_from.strip("<>"), 200),
                "header_from": [safe_text(v.strip(), 200) for k, v in self.headers if k.lower() == "from"],
                "header_sender": [safe_text(v.strip(), 200) for k, v in self.headers if k.lower() == "sender"],
            },
            decision=decision.verdict.value,
            reply=str(decision.reply) if decision.reply else None,
            reasons=list(decision.reasons),
            priority=(
                {
                    "message": plan.message if plan.reading.carried else None,
                    "user": plan.user,
                    "effective": plan.effective,
                }
                if (plan := self.priority) and decision.verdict is Verdict.ACCEPT
                else None
            ),
            queue=self.priority.queue if self.priority and decision.verdict is Verdict.ACCEPT else None,
            footer=({"result": self.footer.status, "reason": self.footer.reason} if self.footer else None),
            size=self.received or self.size,
            ms=round(elapsed * 1000, 2),
        )

    # --- alerts (never block: submit() only queues) ---------------------------------------

    def _submit_alerts(self, decision: Decision, config: Config) -> None:
        alerts = self.holder.alerts
        if alerts is None or not self.login:
            return
        user = config.directory.lookup(self.login)
        login = user.login if user is not None else self.login
        mode = config.settings.authorization.mode
        reply = str(decision.reply) if decision.reply else ""
        action = "rejected" if decision.verdict is Verdict.REJECT else "delivered"
        # One alert per address: in alert mode the same sender is often both envelope and From.
        fields: dict[str, list[str]] = {}
        for item in decision.unauthorized:
            fields.setdefault(item.address, []).append(item.field)
        for address, names in fields.items():
            fields_seen = ",".join(names)
            alerts.submit(Alert(UNAUTHORIZED_SENDER, login, address, fields_seen, mode, action, reply, self.queue_id))
        if self.spoofing and config.settings.authorization.display_name_spoofing == "alert":
            # One alert per real address, like unauthorized senders; every other address it showed.
            spoofed: dict[str, tuple[list[str], list[str]]] = {}
            for found in self.spoofing:
                where, shown = spoofed.setdefault(found.address, ([], []))
                if found.field not in where:
                    where.append(found.field)
                if found.shown not in shown:
                    shown.append(found.shown)
            for address, (where, shown) in spoofed.items():
                alerts.submit(
                    Alert(
                        DISPLAY_NAME_SPOOFING,
                        login,
                        address,
                        ",".join(where),
                        mode,
                        action,
                        reply,
                        self.queue_id,
                        shown=", ".join(shown),
                    )
                )
        if decision.verdict is Verdict.REJECT and user is not None and not user.active:
            sender = safe_text(self.mail_from.strip("<>"), 200)
            alerts.submit(Alert(DISABLED_USER, login, sender, "envelope_from", mode, action, reply, self.queue_id))


def _answer(verdict: Verdict) -> int:
    return Milter.REJECT if verdict is Verdict.REJECT else Milter.TEMPFAIL


def factory_for(holder: ConfigHolder) -> type[SmtpPlusMilter]:
    """A milter class bound to *holder* (pymilter creates one instance per connection)."""
    return type("BoundSmtpPlusMilter", (SmtpPlusMilter,), {"holder": holder})
