"""``smtpplus-milter policyd``: the door Postfix's ``check_policy_service`` knocks on (docs/limits.md).

The decisions are the core's (:mod:`smtpplus_milter.core.policy`, which drives the milter's own
:class:`~smtpplus_milter.core.session.MessageSession`); the counts live in a
:class:`~smtpplus_milter.infra.limit_store.LimitStore` (in this process, or Redis for several
relay hosts). This module owns the sockets, the threads, the store calls, the metrics, the log and
the alerts.

**Connections.** Postfix's smtpd opens one connection per smtpd process and keeps it for many
requests (up to ``smtpd_policy_service_max_ttl``), one request at a time; so one thread per
connection, blocking reads, is the simple and sufficient shape. Bounds: at most
``policy.max_connections`` at once (one more is closed at once: that smtpd logs it and answers
``smtpd_policy_service_default_action``, 451); a request is at most 64 KiB (the codec's bound;
a longer one closes the connection); a connection with no request for
``policy.idle_timeout_seconds`` is closed. A connection waiting for a slow store delays only
its own smtpd: the store's calls are bounded by its timeout (1 s).

**Sockets.** ``policy.listen`` (``unix:/PATH`` or ``inet:HOST:PORT``) is bound here, unless
systemd hands the daemon its sockets (socket activation, ``LISTEN_FDS``): the shipped unit does,
because the default path lies in Postfix's ``private/`` directory, which only user postfix may
write to. Every socket serves the same requests.

**Counting, and taking back.** END-OF-MESSAGE counts the message (idempotent per queue id).
Postfix asks the end-of-data policy BEFORE the milters see the message, so a message the milter
then refuses (From: not authorized, too large, an internal error) was counted although it was
not sent: the milter then sends ``request=smtpplus_refund`` with the login and the queue id, and
the count is taken back once (:meth:`~smtpplus_milter.infra.limit_store.LimitStore.refund`). The
other direction needs nothing: a message refused here never reaches the milter's end of message
(Postfix aborts it), so the milter counts nothing for it.

**Reload.** SIGHUP re-reads the config and the users file (users, senders, limits apply to the
next message); a new ``policy.listen`` or ``sending_limits.store`` needs a restart (logged).
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from smtpplus_milter.config import Config, SocketSpec, load_config
from smtpplus_milter.config.rules import rules_of
from smtpplus_milter.core.policy import (
    DUNNO,
    Admission,
    Answer,
    Conversation,
    Judgements,
    limited,
    other,
    store_failed,
)
from smtpplus_milter.core.policy_protocol import PolicyDecoder, PolicyProtocolError, PolicyRequest, encode_reply
from smtpplus_milter.core.session import Rules
from smtpplus_milter.core.users import normalize_login
from smtpplus_milter.daemon import reread
from smtpplus_milter.infra.limit_store import LimitStore, LimitStoreError
from smtpplus_milter.infra.limit_store_redis import open_limit_store
from smtpplus_milter.infra.suppression_file import NAME as SNAPSHOT_NAME
from smtpplus_milter.infra.suppression_file import Reader
from smtpplus_milter.observe.alerts import LIMIT_STORE, SENDING_LIMIT, Alert, AlertDispatcher
from smtpplus_milter.observe.log import Emit, EventWriter, get_logger
from smtpplus_milter.observe.metrics import Metrics, PolicyMetrics
from smtpplus_milter.observe.report import Reporter

log = get_logger()

# The request type the milter sends to take a count back (Postfix's own is smtpd_access_policy).
REFUND = "smtpplus_refund"
POSTFIX_REQUEST = "smtpd_access_policy"
RECV_BYTES = 65536
# How long stop() lets a request in progress finish before the daemon's drain gives up on it.
ALERTS_DRAIN_SECONDS = 5.0
LISTEN_BACKLOG = 512
# systemd's socket activation: the first passed descriptor (sd_listen_fds(3)).
SD_LISTEN_FDS_START = 3


def inherited_sockets(environ: Mapping[str, str] | None = None) -> list[socket.socket]:
    """The listening sockets systemd passed (``LISTEN_FDS`` for this very process), or none."""
    environ = os.environ if environ is None else environ
    if environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    found = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        found.append(socket.socket(fileno=fd))
    # Not for our children (we have none, but a library might): systemd's own advice.
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    return found


def bind(spec: SocketSpec) -> socket.socket:
    """A listening socket on *spec*; a stale unix socket file (nobody answers: checked before) is replaced."""
    if spec.path is not None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            spec.path.parent.mkdir(parents=True, exist_ok=True)
            spec.path.unlink(missing_ok=True)
            listener.bind(str(spec.path))
        except OSError:
            listener.close()
            raise
    else:
        assert spec.host is not None and spec.port is not None
        family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((spec.host, spec.port))
        except OSError:
            listener.close()
            raise
    listener.listen(LISTEN_BACKLOG)
    return listener


class PolicyService:
    """The daemon as a :class:`~smtpplus_milter.daemon.Service`: sockets, one thread per connection, answers.

    *listeners*: sockets already listening (systemd's, or a test's); None binds ``policy.listen``
    when :meth:`serve` starts. *store*: the counts (None: what ``sending_limits.store`` names).
    *clock*: wall-clock seconds (the in-process store's clock; Redis uses its own).
    """

    def __init__(
        self,
        config: Config,
        *,
        listeners: list[socket.socket] | None = None,
        store: LimitStore | None = None,
        alerts: AlertDispatcher | None = None,
        clock: Callable[[], float] = time.time,
        emit: Emit | None = None,
    ) -> None:
        self.metrics = Metrics()
        self.policy_metrics = PolicyMetrics(self.metrics.registry)
        self.alerts = alerts
        # The message log lines of refusals are written by a thread of their own (tests pass *emit*).
        self.writer: EventWriter | None = None
        if emit is None:
            self.writer = EventWriter()
            emit = self.writer.emit
        self.reporter = Reporter(self.metrics, alerts, emit)
        self.clock = clock
        self.store = store if store is not None else open_limit_store(config.sending_limits.store)
        self._current: tuple[Config, Rules] = (config, rules_of(config))
        self.suppressions: Reader | None = None
        if config.tracking is not None:
            self.suppressions = Reader(
                config.tracking.spool_dir / SNAPSHOT_NAME,
                on_problem=lambda reason: log.warning("suppression_list_unavailable", reason=reason),
            )
        self.listeners = listeners
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._reload_lock = threading.Lock()
        # MAIL FROM judgements that let messages go on, shared by the connections (core/policy.py).
        self.judgements = Judgements()

    # --- the Service protocol -------------------------------------------------------------

    def serve(self) -> None:
        if self.listeners is None:
            policy = self._current[0].policy
            self.listeners = [bind(policy.listen)]
            if policy.refund_listen is not None and policy.refund_listen != policy.listen:
                try:
                    self.listeners.append(bind(policy.refund_listen))
                except OSError:
                    self.listeners[0].close()
                    raise
        threads = []
        for listener in self.listeners:
            thread = threading.Thread(target=self._accept, args=(listener,), name="policy-accept", daemon=True)
            thread.start()
            threads.append(thread)
        self._stopping.wait()
        for thread in threads:
            thread.join(5.0)

    def stop(self) -> None:
        self._stopping.set()
        for listener in self.listeners or []:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        # Idle connections end now (their reads return); a request in progress still gets its answer.
        with self._lock:
            for connection in self._open:
                try:
                    connection.shutdown(socket.SHUT_RD)
                except OSError:
                    pass

    def reload(self) -> None:
        with self._reload_lock:
            old = self._current[0]
            new = reread(lambda: load_config(old.path, create_secret=True), log)
            if new is None:  # logged; the daemon keeps the config it has
                self.metrics.reloads.labels(result="failed").inc()
                return
            for what, before, after in (
                ("policy.listen", old.policy.listen, new.policy.listen),
                ("sending_limits.store", old.sending_limits.store, new.sending_limits.store),
            ):
                if before != after:
                    log.warning("restart_needed", setting=what, reason=f"{what} changed: it applies after a restart")
            self._current = (new, rules_of(new))
            if self.alerts is not None:
                self.alerts.reconfigure(new.settings.alerts)
            self.metrics.reloads.labels(result="ok").inc()
            log.info("config_reloaded", config=str(new.path), users=len(new.directory.users))

    def busy(self) -> int:
        with self._lock:
            return len(self._open)

    def close(self) -> None:
        if self.alerts is not None:
            self.alerts.stop(ALERTS_DRAIN_SECONDS)
        if self.writer is not None:
            self.writer.stop()
        closer = getattr(self.store, "close", None)
        if closer is not None:
            closer()

    def details(self) -> Mapping[str, Any]:
        config = self._current[0]
        store = config.sending_limits.store
        return {
            "config": str(config.path),
            "users": len(config.directory.users),
            "listening": len(self.listeners or []) or 1,
            "store": "memory" if store == "memory" else "redis",
            "on_store_error": config.sending_limits.on_store_error,
            "metrics": str(config.policy.metrics_listen) if config.policy.metrics_listen is not None else None,
            "alert_sinks": self.alerts.sink_names if self.alerts is not None else [],
        }

    # --- connections ----------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                connection, _peer = listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.05)  # EMFILE and the like: do not spin
                continue
            max_connections = self._current[0].policy.max_connections
            with self._lock:
                full = len(self._open) >= max_connections
                if not full:
                    self._open.add(connection)
            if full:
                self.policy_metrics.refused_connections.inc()
                log.warning(
                    "policy_connection_refused", reason=f"{max_connections} connections open (policy.max_connections)"
                )
                connection.close()
                continue
            self.policy_metrics.connections.inc()
            threading.Thread(target=self._serve_connection, args=(connection,), name="policy-conn", daemon=True).start()

    def _serve_connection(self, connection: socket.socket) -> None:
        decoder = PolicyDecoder()
        conversation = Conversation(self.judgements)
        try:
            # The idle bound as the kernel's receive and send timeouts on a blocking socket: a
            # Python timeout would add a poll() before every recv and send (bench/policyd.py).
            # A silent peer's recv, or a peer that never reads its replies, then fails with EAGAIN.
            idle = struct.pack("ll", self._current[0].policy.idle_timeout_seconds, 0)
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, idle)
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, idle)
            while not self._stopping.is_set():
                try:
                    chunk = connection.recv(RECV_BYTES)
                except (TimeoutError, OSError):
                    return
                if not chunk:
                    return
                try:
                    requests = decoder.feed(chunk)
                except PolicyProtocolError as exc:
                    # Answer what was complete before the breach, then close without a reply.
                    self._answer_all(connection, conversation, exc.requests)
                    self.policy_metrics.protocol_errors.inc()
                    log.warning("policy_protocol_error", reason=str(exc))
                    return
                if not self._answer_all(connection, conversation, requests):
                    return
        finally:
            with self._lock:
                self._open.discard(connection)
            self.policy_metrics.connections.dec()
            connection.close()

    def _answer_all(
        self, connection: socket.socket, conversation: Conversation, requests: Sequence[PolicyRequest]
    ) -> bool:
        for request in requests:
            try:
                action = self.answer(conversation, request)
            except Exception:
                # Close without a reply: Postfix retries on a new connection, then applies its
                # default action (451). Never an answer we did not decide.
                log.exception("policy_request_failed", state=request.state)
                return False
            try:
                connection.sendall(encode_reply(action))
            except OSError:
                return False
        return True

    # --- one request ----------------------------------------------------------------------

    def answer(self, conversation: Conversation, request: PolicyRequest) -> str:
        """The action for *request* on the connection whose state is *conversation*."""
        started = time.perf_counter()
        config, rules = self._current
        kind = request.request
        if kind == REFUND:
            return self._refund(request)
        if kind != POSTFIX_REQUEST:
            answer = other(request)
        elif request.state == "RCPT":
            index = self.suppressions.current().index if self.suppressions is not None else None
            answer = conversation.recipient(
                rules,
                request,
                config.limits_for,
                index,
                drop_suppressed=config.suppression.action == "drop",
            )
        elif request.state == "END-OF-MESSAGE":
            result = conversation.end_of_message(rules, request, config.limits_for)
            answer = self._admit(config, result, request) if isinstance(result, Admission) else result
        else:
            answer = other(request)
        self._record(answer, request, rules)
        self.policy_metrics.stage_seconds[answer.stage].observe(time.perf_counter() - started)
        return answer.action

    def _admit(self, config: Config, admission: Admission, request: PolicyRequest) -> Answer:
        try:
            verdict = self.store.admit(
                admission.key, admission.limits, admission.message, admission.token, self.clock()
            )
        except LimitStoreError as exc:
            action = config.sending_limits.on_store_error
            self.policy_metrics.store_errors.labels(action=action).inc()
            log.error("limit_store_error", reason=str(exc), on_store_error=action, queue_id=request.queue_id)
            if self.alerts is not None:
                self.alerts.submit(Alert(LIMIT_STORE, "", "", "store", "", action, str(exc)[:200], request.queue_id))
            return store_failed(admission, action)
        return limited(admission, verdict)

    def _refund(self, request: PolicyRequest) -> str:
        login, queue_id = request.sasl_username, request.queue_id
        if not login or not queue_id:
            return DUNNO
        try:
            done = self.store.refund(normalize_login(login), queue_id, self.clock())
        except LimitStoreError as exc:
            self.policy_metrics.refunds.labels(result="failed").inc()
            log.error("limit_refund_failed", reason=str(exc), queue_id=queue_id, user=login)
            return DUNNO
        self.policy_metrics.refunds.labels(result="refunded" if done else "unknown").inc()
        if done:
            log.info("limit_refunded", user=normalize_login(login), queue_id=queue_id)
        return "OK" if done else DUNNO

    def _record(self, answer: Answer, request: PolicyRequest, rules: Rules) -> None:
        metrics = self.policy_metrics
        metrics.request_counts[answer.stage, answer.result].inc()
        user = answer.login or ""
        label = user if rules.per_user_labels else "all"
        if answer.outcome is not None:
            self.reporter.report(answer.outcome, 0.0)
        if answer.result == "suppressed" and answer.suppressed is not None:
            self.metrics.suppressed.labels(user=user, reason=answer.suppressed.reason).inc()
            log.info("policy_refused", stage=answer.stage, result=answer.result, user=user, reply=answer.action)
        elif answer.result in ("limited", "too_many_recipients") and answer.limit is not None:
            metrics.limited.labels(user=label, limit=answer.limit).inc()
            log.warning(
                "sending_limit_reached",
                user=user,
                limit=answer.limit,
                stage=answer.stage,
                reply=answer.action,
                queue_id=request.queue_id,
            )
            if self.alerts is not None:
                self.alerts.submit(
                    Alert(
                        SENDING_LIMIT, user, answer.limit, answer.limit, "", "refused", answer.action, request.queue_id
                    )
                )
