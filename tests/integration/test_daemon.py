"""The shared daemon lifecycle, with real sockets, files and signals (no libmilter)."""

from __future__ import annotations

import grp
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from smtpplus_milter.config import SocketSpec
from smtpplus_milter.daemon import Daemon, PidFile, Service, StartupFailed, socket_answers


class RecordingLog:
    """Stands in for the structlog logger: keeps (level, event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []
        self.started = threading.Event()

    def _record(self, level: str) -> Callable[..., None]:
        def record(event: str, **fields: Any) -> None:
            self.lines.append((level, event, fields))
            if event == "started":
                self.started.set()

        return record

    def __getattr__(self, level: str) -> Callable[..., None]:
        return self._record(level)

    def events(self) -> list[str]:
        return [event for _, event, _ in self.lines]

    def fields(self, event: str) -> dict[str, Any]:
        return next(fields for _, name, fields in self.lines if name == event)


class FakeService:
    """Serves until stopped; counts every callback the daemon makes."""

    def __init__(self, *, busy: int = 0, fail: BaseException | None = None, socket_path: Path | None = None) -> None:
        self.serving = threading.Event()
        self.stopped = threading.Event()
        self.release = threading.Event()  # serve() returns after a stop only once this is set
        self.release.set()
        self.reloaded = threading.Event()
        self.calls: list[str] = []
        self.open = busy
        self.fail = fail
        self.socket_path = socket_path

    def serve(self) -> None:
        listener = None
        if self.socket_path is not None:  # like libmilter: the service creates its own socket
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(self.socket_path))
            listener.listen()
        self.serving.set()
        try:
            if self.fail is not None:
                raise self.fail
            self.stopped.wait(30)
            self.release.wait(30)
        finally:
            if listener is not None:
                listener.close()

    def stop(self) -> None:
        self.calls.append("stop")
        self.stopped.set()

    def reload(self) -> None:
        self.calls.append("reload")
        self.reloaded.set()

    def busy(self) -> int:
        return self.open

    def close(self) -> None:
        self.calls.append("close")

    def details(self) -> Mapping[str, object]:
        return {"config": "/etc/x.yaml", "users": 3}


def _daemon(log: RecordingLog, **kwargs: Any) -> Daemon:
    return Daemon(log=log, poll_seconds=0.02, malloc_arenas=None, **kwargs)


def _in_background(action: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    return thread


def _signal_when(
    ready: threading.Event, *signums: int, between: Callable[[], None] = lambda: None
) -> Callable[[], None]:
    def send() -> None:
        assert ready.wait(10)
        for signum in signums:
            os.kill(os.getpid(), signum)
            between()

    return send


# --- pid file ---------------------------------------------------------------------------------


def test_pid_file_is_ours_while_we_run_and_then_gone(tmp_path: Path) -> None:
    pid_file = PidFile(tmp_path / "run" / "smtpplus.pid")
    assert pid_file.write()
    assert pid_file.path.read_text() == f"{os.getpid()}\n"
    assert [item.name for item in pid_file.path.parent.iterdir()] == ["smtpplus.pid"]  # no temporary left
    pid_file.remove()
    assert not pid_file.path.exists()


@pytest.mark.parametrize("content", ["999999999\n", "not a pid\n", ""])
def test_pid_file_of_another_instance_is_left_alone(tmp_path: Path, content: str) -> None:
    pid_file = PidFile(tmp_path / "smtpplus.pid")
    assert pid_file.write()
    pid_file.path.write_text(content)  # a newer instance took over the pid file
    pid_file.remove()
    assert pid_file.path.read_text() == content


def test_unwritable_pid_file_refuses_the_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    log = RecordingLog()
    started: list[bool] = []

    def start() -> Service:
        started.append(True)
        return FakeService()

    assert _daemon(log, pid_file=tmp_path / "file" / "smtpplus.pid").run(start) == 1
    assert "cannot write the pid file" in capsys.readouterr().err
    assert not started and log.lines == []


# --- is another process on the socket? ---------------------------------------------------------


def test_unix_socket_probe(tmp_path: Path) -> None:
    path = tmp_path / "milter.sock"
    spec = SocketSpec.parse(f"unix:{path}")
    assert not socket_answers(spec)  # no file
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen()
        assert socket_answers(spec)
    assert path.exists() and not socket_answers(spec)  # a stale file left by a crash


@pytest.mark.parametrize(
    ("kind", "family", "host"), [("inet", socket.AF_INET, "127.0.0.1"), ("inet6", socket.AF_INET6, "::1")]
)
def test_inet_socket_probe(kind: str, family: socket.AddressFamily, host: str) -> None:
    try:
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.bind((host, 0))
    except OSError:
        pytest.skip(f"no {host} here")
    port = listener.getsockname()[1]
    spec = SocketSpec.parse(f"{kind}:{port}@{f'[{host}]' if ':' in host else host}")
    with listener:
        assert not socket_answers(spec)  # bound, not listening: nobody answers
        listener.listen()
        assert socket_answers(spec)
    assert not socket_answers(spec)


def test_refuses_to_start_when_another_process_answers(tmp_path: Path) -> None:
    path = tmp_path / "milter.sock"
    log = RecordingLog()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen()
        code = _daemon(log, socket=SocketSpec.parse(f"unix:{path}")).run(FakeService)
    assert code == 1
    assert log.events() == ["startup_failed"]
    assert log.fields("startup_failed")["reason"] == f"another process already answers on unix:{path}; stop it first"


def test_startup_failure_of_the_service_is_logged(tmp_path: Path) -> None:
    log = RecordingLog()

    def start() -> Service:
        raise StartupFailed("cannot serve metrics on 127.0.0.1:9464: Address already in use")

    pid_file = tmp_path / "smtpplus.pid"
    assert _daemon(log, pid_file=pid_file).run(start) == 1
    assert log.lines == [
        ("error", "startup_failed", {"reason": "cannot serve metrics on 127.0.0.1:9464: Address already in use"})
    ]
    assert not pid_file.exists()


# --- running, signals, drain --------------------------------------------------------------------


@pytest.fixture
def restored() -> Iterator[None]:
    """The daemon must give back the signal handlers and umask it changed."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    umask = os.umask(0o022)
    os.umask(umask)
    yield
    assert {signum: signal.getsignal(signum) for signum in handlers} == handlers
    assert os.umask(umask) == umask


def test_hup_reloads_and_term_stops_once(tmp_path: Path, restored: None) -> None:
    service = FakeService()
    log = RecordingLog()
    pid_file = tmp_path / "smtpplus.pid"
    socket_path = tmp_path / "sub" / "milter.sock"

    def hup_then_term() -> None:
        assert log.started.wait(10)
        assert pid_file.read_text() == f"{os.getpid()}\n"
        os.kill(os.getpid(), signal.SIGHUP)
        assert service.reloaded.wait(10)
        service.release.clear()  # both stop signals arrive while the service still serves
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        assert service.stopped.wait(10)
        time.sleep(0.1)
        service.release.set()

    sender = _in_background(hup_then_term)
    daemon = _daemon(
        log, socket=SocketSpec.parse(f"unix:{socket_path}"), pid_file=pid_file, warnings=("careful",), socket_group=None
    )
    assert daemon.run(lambda: service) == 0
    sender.join(10)
    assert socket_path.parent.is_dir()  # the socket's directory is made before the service starts
    assert service.calls == ["reload", "stop", "close"]  # one stop for two signals
    assert log.events() == ["config_warning", "started", "stopping", "stopped"]
    assert log.fields("config_warning") == {"reason": "careful"}
    assert log.fields("started") == {
        "version": log.fields("started")["version"],
        "socket": f"unix:{socket_path}",
        "config": "/etc/x.yaml",
        "users": 3,
    }
    assert log.fields("stopping")["signal"] in ("SIGTERM", "SIGINT")
    assert log.fields("stopped") == {"unfinished_connections": 0}
    assert not pid_file.exists()


@pytest.mark.parametrize(("still_open", "at_least"), [(0, 0.0), (2, 0.3)])
def test_drain_waits_for_open_connections_up_to_the_timeout(restored: None, still_open: int, at_least: float) -> None:
    service = FakeService(busy=still_open)
    log = RecordingLog()
    sender = _in_background(_signal_when(log.started, signal.SIGTERM))
    started = time.monotonic()
    assert _daemon(log, drain_seconds=0.3).run(lambda: service) == 0
    took = time.monotonic() - started
    sender.join(10)
    assert at_least <= took < 5
    assert log.fields("stopped") == {"unfinished_connections": still_open}
    assert service.calls == ["stop", "close"]


def test_connections_that_finish_end_the_drain_early(restored: None) -> None:
    service = FakeService(busy=1)
    log = RecordingLog()

    def finish() -> None:
        time.sleep(0.2)
        service.open = 0

    sender = _in_background(_signal_when(log.started, signal.SIGTERM, between=finish))
    started = time.monotonic()
    assert _daemon(log, drain_seconds=30).run(lambda: service) == 0
    sender.join(10)
    assert time.monotonic() - started < 5
    assert log.fields("stopped") == {"unfinished_connections": 0}


def test_serving_that_fails_by_itself_is_a_failed_start(restored: None) -> None:
    service = FakeService(fail=OSError("cannot bind the socket"))
    log = RecordingLog()
    assert _daemon(log).run(lambda: service) == 1
    assert service.calls == ["close"]
    assert log.events()[-1] == "startup_failed"
    assert log.fields("startup_failed") == {"reason": "cannot bind the socket"}


def test_serving_that_fails_while_stopping_is_a_stop_with_error(restored: None) -> None:
    log = RecordingLog()

    class FailsAfterStop(FakeService):
        def serve(self) -> None:
            self.serving.set()
            assert self.stopped.wait(10)
            raise RuntimeError("libmilter said no")

    service = FailsAfterStop()
    sender = _in_background(_signal_when(log.started, signal.SIGINT))
    assert _daemon(log).run(lambda: service) == 1
    sender.join(10)
    assert service.calls == ["stop", "close"]
    assert log.events()[-2:] == ["stopping", "stopped_with_error"]
    assert log.fields("stopped_with_error") == {"reason": "libmilter said no"}


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a socket to another group needs root")
def test_unix_socket_goes_to_the_socket_group_with_group_access_only(tmp_path: Path, restored: None) -> None:
    group = next(name for name in ("postfix", "daemon", "nogroup") if _group_exists(name))
    path = tmp_path / "milter.sock"
    service = FakeService(socket_path=path)
    seen: list[os.stat_result] = []

    def look_then_stop() -> None:
        assert service.serving.wait(10)
        deadline = time.monotonic() + 10
        while path.stat().st_gid != grp.getgrnam(group).gr_gid and time.monotonic() < deadline:
            time.sleep(0.02)
        seen.append(path.stat())
        os.kill(os.getpid(), signal.SIGTERM)

    sender = _in_background(look_then_stop)
    assert (
        _daemon(RecordingLog(), socket=SocketSpec.parse(f"unix:{path}"), socket_group=group).run(lambda: service) == 0
    )
    sender.join(10)
    [info] = seen
    assert info.st_gid == grp.getgrnam(group).gr_gid
    assert info.st_mode & 0o777 == 0o770  # umask 007 while serving


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True
