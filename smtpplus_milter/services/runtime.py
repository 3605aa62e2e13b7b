"""What a running milter process shares between its connections, built once at start-up.

There is no process state anywhere else: the adapter instances (one per connection) get this
object, tests build their own. It holds the current configuration (swapped atomically by a
reload; every message snapshots it at MAIL FROM), the metrics, the alert dispatcher, the
reporter, the byte budget for body rewrites and the count of open connections.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
from collections.abc import Iterator

from smtpplus_milter.config import Config, ConfigError, load_config
from smtpplus_milter.config.rules import rules_of
from smtpplus_milter.core.session import Rules
from smtpplus_milter.infra.policy_client import RefundSender
from smtpplus_milter.infra.suppression_file import NAME as SNAPSHOT_NAME
from smtpplus_milter.infra.suppression_file import Reader
from smtpplus_milter.observe.alerts import AlertDispatcher
from smtpplus_milter.observe.log import Emit, emit_now, get_logger
from smtpplus_milter.observe.metrics import Metrics
from smtpplus_milter.observe.report import Reporter
from smtpplus_milter.services.tracking import TrackingWriter

log = get_logger()

MIB = 1024 * 1024


def injection_budget(max_message_bytes: int) -> int:
    """Bytes that concurrent body rewrites may hold at once.

    A rewrite holds about twice the message (the mapped input and the new body): the budget is
    one message at the size limit plus a fifth, at least 8 MiB (48 MiB at the default 20 MiB).
    """
    return max(8 * MIB, int(2.4 * max_message_bytes))


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


class ConnectionCount:
    """Connections libmilter has opened and not closed yet (a stop waits for these)."""

    def __init__(self) -> None:
        self._open = 0
        self._lock = threading.Lock()

    def opened(self) -> None:
        with self._lock:
            self._open += 1

    def closed(self) -> None:
        with self._lock:
            self._open -= 1

    @property
    def open(self) -> int:
        return self._open


class TcpNoDelay:
    """Turns off Nagle's algorithm on this process's connected TCP sockets (libmilter's among them).

    libmilter writes every modification (addheader, chgheader, replacebody) and the final answer
    as separate small packets. Over TCP, Nagle holds the second small write until the first is
    acknowledged, and Postfix delays that ACK: about 40 ms per message (measured here: 200 msgs/s
    over TCP against 430 over a unix socket once every message got a header). libmilter does not
    expose its sockets, so a new connection's descriptor is found in /proc/self/fd; this runs once
    per milter connection, only on an inet socket.
    """

    MAX_SEEN = 50_000

    def __init__(self) -> None:
        # Socket inodes already looked at (an inode is unique while the socket lives).
        self._seen: set[int] = set()
        self._lock = threading.Lock()

    def apply(self) -> None:
        try:
            descriptors = os.listdir("/proc/self/fd")
        except OSError:
            return
        with self._lock:
            if len(self._seen) > self.MAX_SEEN:
                self._seen.clear()
            for name in descriptors:
                try:
                    fd = int(name)
                    info = os.fstat(fd)
                    if not stat.S_ISSOCK(info.st_mode) or info.st_ino in self._seen:
                        continue
                    probe = socket.socket(fileno=os.dup(fd))
                except (ValueError, OSError):
                    continue
                self._seen.add(info.st_ino)  # listening, unix and already-set sockets need no second look
                with probe:
                    try:
                        if probe.family in (socket.AF_INET, socket.AF_INET6) and probe.type == socket.SOCK_STREAM:
                            if not probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY):
                                probe.getpeername()  # connected sockets only; listening ones raise
                                probe.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    except OSError:
                        continue


class Runtime:
    """The milter process's shared state; see the module docstring.

    *alerts* None: alerts off (tests). *emit* writes the reporter's log events: structlog in the
    calling thread by default, the background :class:`~smtpplus_milter.observe.log.EventWriter`
    in the daemon. *tracking*: the writer that takes accepted messages' records (None: off).
    """

    def __init__(
        self,
        config: Config,
        *,
        metrics: Metrics | None = None,
        alerts: AlertDispatcher | None = None,
        emit: Emit = emit_now,
        tracking: TrackingWriter | None = None,
        refunds: RefundSender | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        # Where a message refused after the end-of-data policy check is reported (None: no policy daemon).
        self.refunds = refunds
        self.alerts = alerts
        # Where accepted messages' records go (None: tracking off); its node is fixed at start.
        self.tracking = tracking
        self.node = config.tracking.node if config.tracking is not None else ""
        # The suppression list as the follower last wrote it (checked at RCPT; tracking on only).
        self.suppressions: Reader | None = None
        if config.tracking is not None and tracking is not None:
            self.suppressions = Reader(
                config.tracking.spool_dir / SNAPSHOT_NAME,
                on_problem=lambda reason: log.warning("suppression_list_unavailable", reason=reason),
            )
        self.reporter = Reporter(self.metrics, alerts, emit)
        self._current: tuple[Config, Rules] = (config, rules_of(config))
        self.budget = ByteBudget(injection_budget(config.settings.limits.max_message_bytes))
        self.connections = ConnectionCount()
        self.nodelay = TcpNoDelay()
        self._reload_lock = threading.Lock()

    @property
    def config(self) -> Config:
        return self._current[0]

    def snapshot(self) -> tuple[Config, Rules]:
        """The config and rules a new message uses (one read: never a mix of two reloads)."""
        return self._current

    def reload(self) -> bool:
        """Re-read both files; keep the old config if the new one does not validate."""
        with self._reload_lock:
            old = self._current[0]
            try:
                new = load_config(old.path, create_secret=True)
            except ConfigError as exc:
                self.metrics.reloads.labels(result="failed").inc()
                log.error(
                    "config_reload_failed",
                    config=str(old.path),
                    problems=[str(problem) for problem in exc.problems],
                    kept="previous config",
                )
                return False
            self._current = (new, rules_of(new))
            self.budget.limit = injection_budget(new.settings.limits.max_message_bytes)
            if self.alerts is not None:
                self.alerts.reconfigure(new.settings.alerts)
            self.metrics.reloads.labels(result="ok").inc()
            log.info("config_reloaded", config=str(new.path), users=len(new.directory.users))
            return True
