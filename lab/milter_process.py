"""Run ``smtpplus-milter run`` (and ``follow``) as child processes for the lab, tests and benchmarks.

The daemons run exactly as in production (the console entry point, their own process, their own
socket or port); these classes only start one, wait until it answers, read its JSON log and stop
it with the same signals systemd uses.
"""

from __future__ import annotations

import grp
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from smtpplus_milter.config import SocketSpec
from smtpplus_milter.daemon import socket_answers


def prepare_socket_dir(directory: Path) -> None:
    """Make *directory* like the production /var/spool/postfix/smtpplus: setgid, group postfix.

    The socket the milter creates there gets group postfix and mode 0770 (the milter's umask),
    so Postfix's smtpd, running as user postfix, can connect and nobody else can.
    """
    directory.mkdir(parents=True, exist_ok=True)
    os.chown(directory, -1, grp.getgrnam("postfix").gr_gid)
    directory.chmod(0o2770)


class DaemonProcess:
    """One ``smtpplus-milter COMMAND -c CONFIG`` child process; ready once :meth:`answers` is true."""

    command = "run"
    name = "smtpplus-milter"

    def __init__(self, config_path: Path, log_file: Path, *, extra_args: tuple[str, ...] = ()) -> None:
        self.config_path = config_path
        self.log_file = log_file
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def answers(self) -> bool:
        raise NotImplementedError

    def where(self) -> str:
        """What :meth:`answers` tries, for error messages."""
        raise NotImplementedError

    def start(self, timeout: float = 20.0) -> None:
        # Restarting straight after a stop can fail while the old process still drains.
        deadline = time.monotonic() + timeout
        while self.answers() and time.monotonic() < deadline:
            time.sleep(0.1)
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "smtpplus_milter", self.command, "-c", str(self.config_path), *self.extra_args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.answers():
                return
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"{self.name} did not answer on {self.where()} within {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> int | None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return process.returncode if process else None
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(5)

    def kill(self) -> None:
        """Stop hard, as a crash would."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(5)

    def reload(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- its log ------------------------------------------------------------------------

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        result = []
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return []
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and (name is None or entry.get("event") == name):
                result.append(entry)
        return result

    def wait_for_event(
        self, name: str, predicate: Callable[[dict[str, Any]], bool] = lambda e: True, timeout: float = 10.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for entry in self.events(name):
                if predicate(entry):
                    return entry
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {name!r} event matched within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)


class MilterProcess(DaemonProcess):
    """``smtpplus-milter run``: ready when its milter socket accepts a connection."""

    def __init__(
        self, config_path: Path, socket_spec: str, log_file: Path, *, extra_args: tuple[str, ...] = ()
    ) -> None:
        super().__init__(config_path, log_file, extra_args=extra_args)
        self.socket_spec = socket_spec

    def answers(self) -> bool:
        return socket_answers(SocketSpec.parse(self.socket_spec), timeout=0.5)

    def where(self) -> str:
        return self.socket_spec


class FollowerProcess(DaemonProcess):
    """``smtpplus-milter follow``: ready when its metrics endpoint answers."""

    command = "follow"
    name = "smtpplus-milter follow"

    def __init__(
        self, config_path: Path, metrics_port: int, log_file: Path, *, extra_args: tuple[str, ...] = ()
    ) -> None:
        super().__init__(config_path, log_file, extra_args=extra_args)
        self.metrics_port = metrics_port

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as response:
            return str(response.read().decode())

    def answers(self) -> bool:
        try:
            self.metrics_text()
        except OSError:
            return False
        return True

    def where(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


class PreemptProcess(FollowerProcess):
    """``smtpplus-milter preempt``: ready when its metrics endpoint (priority.preempt.metrics_listen) answers."""

    command = "preempt"
    name = "smtpplus-milter preempt"


class PolicydProcess(MilterProcess):
    """``smtpplus-milter policyd``: ready when its policy socket (policy.listen) accepts."""

    command = "policyd"
    name = "smtpplus-milter policyd"


class IngestProcess(MilterProcess):
    """``smtpplus-milter ingest --serve``: ready when its LMTP socket (bounces.ingest_listen) accepts."""

    command = "ingest"
    name = "smtpplus-milter ingest --serve"

    def __init__(
        self, config_path: Path, socket_spec: str, log_file: Path, *, extra_args: tuple[str, ...] = ()
    ) -> None:
        super().__init__(config_path, socket_spec, log_file, extra_args=("--serve", *extra_args))


class FanoutProcess(MilterProcess):
    """``smtpplus-milter fanout``: ready when its LMTP socket (fanout.listen) accepts."""

    command = "fanout"
    name = "smtpplus-milter fanout"


class WebProcess(DaemonProcess):
    """``smtpplus-milter web``: ready when ``GET /healthz`` on web.listen answers 200."""

    command = "web"
    name = "smtpplus-milter web"

    def __init__(
        self,
        config_path: Path,
        port: int,
        log_file: Path,
        *,
        metrics_port: int | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        super().__init__(config_path, log_file, extra_args=extra_args)
        self.port = port
        self.metrics_port = metrics_port  # web.metrics_listen's port, if the config sets one

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/healthz", timeout=1) as response:
                return int(response.status) == 200
        except OSError:
            return False

    def where(self) -> str:
        return f"{self.base_url}/healthz"
