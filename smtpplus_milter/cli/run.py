"""``smtpplus-milter run``: the milter daemon in the foreground."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from smtpplus_milter import __version__
from smtpplus_milter.cli.common import load_or_report
from smtpplus_milter.config import Config, SocketSpec

# On SIGTERM, queued alerts get this long to go out before the process exits.
ALERTS_DRAIN_SECONDS = 5.0


def _socket_in_use(spec: SocketSpec) -> bool:
    """True when another process already answers on the milter socket we are about to take."""
    try:
        if spec.path is not None:
            if not spec.path.exists():
                return False
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(1)
                probe.connect(str(spec.path))
                return True
        assert spec.host is not None and spec.port is not None
        family = socket.AF_INET6 if spec.kind == "inet6" else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.settimeout(1)
            probe.connect((spec.host, spec.port))
            return True
    except OSError:
        return False


def _write_pid_file(path: Path) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(f"{os.getpid()}\n", encoding="ascii")
        temporary.replace(path)
    except OSError as exc:
        print(f"smtpplus-milter: cannot write the pid file {path}: {exc.strerror}", file=sys.stderr)
        return False
    return True


def _remove_pid_file(path: Path) -> None:
    # Only our own: a newer instance may already have written its pid there.
    try:
        if path.read_text(encoding="ascii").strip() == str(os.getpid()):
            path.unlink()
    except (OSError, ValueError):
        pass


# glibc gives every thread that allocates its own malloc arena and keeps what it freed there.
# libmilter runs each connection in a worker thread, so twenty concurrent 20 MB messages left
# about 12 MB per thread behind: 279 MB above idle, against 79 MB with two arenas
# (bench/footer_memory.py, docs/benchmarks.md).
MALLOC_ARENAS = 2
M_ARENA_MAX = -8  # mallopt parameter number in glibc's malloc.h


def _limit_malloc_arenas(count: int = MALLOC_ARENAS) -> None:
    """Like MALLOC_ARENA_MAX=2, set before libmilter starts its threads (no-op off glibc)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_ARENA_MAX, count)
    except (OSError, AttributeError):
        pass


def _give_socket_to_postfix(path: Path, thread: threading.Thread, log: Any) -> None:
    """Make sure Postfix's smtpd (user postfix) may connect to the new unix socket.

    The socket is created 0770 (umask 007). In the shipped layout its directory is setgid group
    postfix, so the group is right already; when it is not (e.g. run as root in another
    directory), hand the socket to group postfix, or say clearly why Postfix will get 451s.
    """
    import grp

    deadline = time.monotonic() + 10
    while not path.exists():
        if not thread.is_alive() or time.monotonic() > deadline:
            return
        time.sleep(0.02)
    try:
        postfix_gid = grp.getgrnam("postfix").gr_gid
    except KeyError:
        return
    info = path.stat()
    if info.st_gid == postfix_gid:
        return
    try:
        os.chown(path, -1, postfix_gid)
    except OSError as exc:
        log.warning(
            "socket_permissions",
            socket=str(path),
            mode=oct(info.st_mode & 0o777),
            group=info.st_gid,
            reason=f"cannot give the socket to group postfix ({exc.strerror}): Postfix's smtpd may not be "
            "able to connect; put it in a setgid directory of group postfix (deploy/README-install.md)",
        )


def main(path: Path, pid_file: Path | None = None) -> int:
    config = load_or_report(path)
    if config is None:
        return 1
    _limit_malloc_arenas()
    if pid_file is not None and not _write_pid_file(pid_file):
        return 1
    try:
        return _run(config)
    finally:
        if pid_file is not None:
            _remove_pid_file(pid_file)


def _run(config: Config) -> int:
    # Imported here so check-config works without libmilter loaded.
    import Milter

    from smtpplus_milter.observe import log as logsetup
    from smtpplus_milter.observe import metrics
    from smtpplus_milter.observe.alerts import AlertDispatcher
    from smtpplus_milter.services.milter import FLAGS, ConfigHolder, factory_for

    logsetup.configure(cache=True)
    log = logsetup.get_logger()
    settings = config.settings
    spec = settings.milter.socket
    if _socket_in_use(spec):
        log.error("startup_failed", reason=f"another process already answers on {spec}; stop it first")
        return 1
    if spec.path is not None:
        spec.path.parent.mkdir(parents=True, exist_ok=True)
    if settings.metrics.listen:
        try:
            metrics.serve(settings.metrics.listen)
        except OSError as exc:
            log.error("startup_failed", reason=f"cannot serve metrics on {settings.metrics.listen}: {exc.strerror}")
            return 1

    # Alerts go out from threads of their own; the mail path only queues them.
    alerts = AlertDispatcher.from_config(settings.alerts)
    holder = ConfigHolder(config, alerts)
    milter_class = factory_for(holder)
    Milter.factory = milter_class
    Milter.set_flags(FLAGS)
    # The socket must be usable by Postfix's smtpd (user postfix): group access, nothing for others.
    # Its group is the socket directory's when that directory is setgid (deploy/README-install.md).
    os.umask(0o007)

    failure: list[BaseException] = []

    def serve() -> None:
        try:
            Milter.runmilter("smtpplus", str(spec), settings.milter.timeout)
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)

    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            # Reload off the signal handler: it reads files and may take a while.
            threading.Thread(target=holder.reload, name="reload", daemon=True).start()
            return
        if not stopping.is_set():
            stopping.set()
            log.info("stopping", signal=signal.Signals(signum).name)
            import milter as libmilter

            libmilter.stop()

    # libmilter blocks HUP/TERM/INT in the thread that runs it and waits for them in a thread
    # of its own (where SIGHUP means "stop"). The main thread keeps them unblocked with these
    # handlers, and the kernel delivers a process-directed signal to the main thread first.
    for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    thread = threading.Thread(target=serve, name="libmilter", daemon=True)
    thread.start()
    if spec.path is not None:
        _give_socket_to_postfix(spec.path, thread, log)
    for warning in config.warnings:
        log.warning("config_warning", reason=warning)
    log.info(
        "started",
        version=__version__,
        socket=str(spec),
        config=str(config.path),
        users=len(config.directory.users),
        metrics=str(settings.metrics.listen) if settings.metrics.listen else None,
        alert_sinks=alerts.sink_names,
    )
    while thread.is_alive():
        thread.join(0.5)
    if failure:
        alerts.stop(ALERTS_DRAIN_SECONDS)
        log.error("startup_failed" if not stopping.is_set() else "stopped_with_error", reason=str(failure[0]))
        return 1
    deadline = time.monotonic() + settings.milter.timeout
    while milter_class.active_connections() and time.monotonic() < deadline:
        time.sleep(0.1)
    alerts.stop(ALERTS_DRAIN_SECONDS)
    log.info("stopped", unfinished_connections=milter_class.active_connections())
    return 0
