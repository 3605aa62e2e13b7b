"""The life of a daemon process, the same for every service this package runs (the milter first).

:meth:`Daemon.run` owns everything around the service itself: it refuses to start when another
process answers on the socket, creates a unix socket's directory, writes (and removes only its
own) pid file, limits malloc arenas, hands a unix socket to group postfix, turns SIGHUP into a
reload and SIGTERM/SIGINT into one stop, waits for the serving thread, drains open connections
and lets the service flush what it queued. The service only says how to serve, stop, reload,
how busy it is and what to flush (:class:`Service`).

Log events (``startup_failed``, ``started``, ``config_warning``, ``socket_permissions``,
``stopping``, ``stopped``, ``stopped_with_error``) and their fields are a contract with
operators and the lab: keep them.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from smtpplus_milter import __version__
from smtpplus_milter.config import Config, ConfigError
from smtpplus_milter.config.values import SocketSpec

# glibc gives every thread that allocates its own malloc arena and keeps what it freed there.
# libmilter runs each connection in a worker thread, so twenty concurrent 20 MB messages left
# about 12 MB per thread behind: 279 MB above idle, against 79 MB with two arenas
# (bench/footer_memory.py, docs/benchmarks.md).
MALLOC_ARENAS = 2
M_ARENA_MAX = -8  # mallopt parameter number in glibc's malloc.h

# How long a stale or busy socket may take to answer the start-up probe.
PROBE_SECONDS = 1.0
# How long the serving thread gets to create its unix socket before we stop waiting for it.
SOCKET_APPEARS_SECONDS = 10.0


class StartupFailed(Exception):
    """The service cannot start; the message is the ``startup_failed`` reason."""


class Service(Protocol):
    """What :class:`Daemon` runs. Every method but :meth:`serve` must return promptly."""

    def serve(self) -> None:
        """Serve until :meth:`stop`; raise when serving fails. Runs in a thread of its own."""

    def stop(self) -> None:
        """Make :meth:`serve` return. Called once, from the main thread's signal handler."""

    def reload(self) -> None:
        """Re-read the configuration. Called in a thread of its own (SIGHUP)."""

    def busy(self) -> int:
        """Connections still open; the drain after a stop waits while this is above 0."""

    def close(self) -> None:
        """After the drain (or a failure): send what the service still queues (alerts)."""

    def details(self) -> Mapping[str, object]:
        """Fields for the ``started`` event after ``version`` and ``socket``."""


def socket_answers(spec: SocketSpec, timeout: float = PROBE_SECONDS) -> bool:
    """True when some process accepts connections on *spec* (a stale unix socket file does not)."""
    try:
        if spec.path is not None:
            if not spec.path.exists():
                return False
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(timeout)
                probe.connect(str(spec.path))
                return True
        assert spec.host is not None and spec.port is not None
        family = socket.AF_INET6 if spec.kind == "inet6" else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.settimeout(timeout)
            probe.connect((spec.host, spec.port))
            return True
    except OSError:
        return False


def reread(load: Callable[[], Config], log: Any) -> Config | None:
    """A daemon's config file read again on SIGHUP, or None after logging why it was not taken
    (``config_reload_failed``; the daemon keeps the config it has)."""
    try:
        return load()
    except ConfigError as exc:
        log.error("config_reload_failed", problems=[str(problem) for problem in exc.problems])
        return None


@dataclass(frozen=True)
class PidFile:
    """The ``--pid-file``: written atomically at start, removed at exit only while it is still ours."""

    path: Path

    def write(self) -> bool:
        """Write our pid; on failure say why on stderr (logging may not be set up) and return False."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            temporary.write_text(f"{os.getpid()}\n", encoding="ascii")
            temporary.replace(self.path)
        except OSError as exc:
            print(f"smtpplus-milter: cannot write the pid file {self.path}: {exc.strerror}", file=sys.stderr)
            return False
        return True

    def remove(self) -> None:
        # Only our own: a newer instance may already have written its pid there.
        try:
            if self.path.read_text(encoding="ascii").strip() == str(os.getpid()):
                self.path.unlink()
        except (OSError, ValueError):
            pass


def limit_malloc_arenas(count: int = MALLOC_ARENAS) -> None:
    """Like MALLOC_ARENA_MAX=2, set before the service starts its threads (no-op off glibc)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_ARENA_MAX, count)
    except (OSError, AttributeError):
        pass


def give_socket_to_group(path: Path, serving: threading.Thread, log: Any, group: str = "postfix") -> None:
    """Make sure Postfix's smtpd (user postfix) may connect to the new unix socket.

    The socket is created 0770 (umask 007). In the shipped layout its directory is setgid group
    postfix, so the group is right already; when it is not (e.g. run as root in another
    directory), hand the socket to group postfix, or say clearly why Postfix will get 451s.
    """
    import grp

    deadline = time.monotonic() + SOCKET_APPEARS_SECONDS
    while not path.exists():
        if not serving.is_alive() or time.monotonic() > deadline:
            return
        time.sleep(0.02)
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        return
    info = path.stat()
    if info.st_gid == gid:
        return
    try:
        os.chown(path, -1, gid)
    except OSError as exc:
        log.warning(
            "socket_permissions",
            socket=str(path),
            mode=oct(info.st_mode & 0o777),
            group=info.st_gid,
            reason=f"cannot give the socket to group {group} ({exc.strerror}): Postfix's smtpd may not be "
            "able to connect; put it in a setgid directory of group postfix (deploy/README-install.md)",
        )


@dataclass(frozen=True)
class Daemon:
    """How one daemon process runs; :meth:`run` does it.

    *socket*: where the service listens (None: it has no socket, e.g. a log follower).
    *drain_seconds*: after a stop, how long open connections may take to finish.
    *warnings*: logged once as ``config_warning`` after the start.
    """

    log: Any
    socket: SocketSpec | None = None
    pid_file: Path | None = None
    drain_seconds: float = 60.0
    warnings: Sequence[str] = ()
    socket_group: str | None = "postfix"
    malloc_arenas: int | None = MALLOC_ARENAS
    # How often the main thread looks at the serving thread and the drain; signals are handled in between.
    poll_seconds: float = field(default=0.5, repr=False)

    def run(self, start: Callable[[], Service]) -> int:
        """Start the service *start* builds (after the socket checks), serve until a signal, stop.

        Returns the exit code: 0 after a clean stop, 1 when it could not start or serving failed.
        *start* raises :class:`StartupFailed` for a reason to log.
        """
        if self.malloc_arenas is not None:
            limit_malloc_arenas(self.malloc_arenas)
        pid_file = PidFile(self.pid_file) if self.pid_file is not None else None
        if pid_file is not None and not pid_file.write():
            return 1
        try:
            return self._run(start)
        finally:
            if pid_file is not None:
                pid_file.remove()

    def _run(self, start: Callable[[], Service]) -> int:
        log, spec = self.log, self.socket
        if spec is not None and socket_answers(spec):
            log.error("startup_failed", reason=f"another process already answers on {spec}; stop it first")
            return 1
        if spec is not None and spec.path is not None:
            spec.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            service = start()
        except StartupFailed as exc:
            log.error("startup_failed", reason=str(exc))
            return 1
        # A unix socket must be usable by Postfix's smtpd (user postfix): group access, nothing
        # for others. Its group is the socket directory's when that directory is setgid
        # (deploy/README-install.md).
        umask = os.umask(0o007)
        handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
        try:
            return self._serve(service)
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            os.umask(umask)

    def _serve(self, service: Service) -> int:
        log, spec = self.log, self.socket
        failure: list[BaseException] = []

        def serve() -> None:
            try:
                service.serve()
            except BaseException as exc:  # reported by the main thread
                failure.append(exc)

        stopping = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if signum == signal.SIGHUP:
                # Reload off the signal handler: it reads files and may take a while.
                threading.Thread(target=service.reload, name="reload", daemon=True).start()
                return
            if not stopping.is_set():
                stopping.set()
                log.info("stopping", signal=signal.Signals(signum).name)
                service.stop()

        # libmilter blocks HUP/TERM/INT in the thread that runs it and waits for them in a thread
        # of its own (where SIGHUP means "stop"). The main thread keeps them unblocked with these
        # handlers, and the kernel delivers a process-directed signal to the main thread first.
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, on_signal)
        thread = threading.Thread(target=serve, name="serve", daemon=True)
        thread.start()
        if spec is not None and spec.path is not None and self.socket_group is not None:
            give_socket_to_group(spec.path, thread, log, self.socket_group)
        for warning in self.warnings:
            log.warning("config_warning", reason=warning)
        where = {"socket": str(spec)} if spec is not None else {}
        log.info("started", version=__version__, **where, **service.details())
        while thread.is_alive():
            thread.join(self.poll_seconds)
        if failure:
            service.close()
            log.error("startup_failed" if not stopping.is_set() else "stopped_with_error", reason=str(failure[0]))
            return 1
        deadline = time.monotonic() + self.drain_seconds
        while service.busy() and time.monotonic() < deadline:
            time.sleep(min(0.1, self.poll_seconds))
        service.close()
        log.info("stopped", unfinished_connections=service.busy())
        return 0
