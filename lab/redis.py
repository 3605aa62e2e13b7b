"""A private Redis server on loopback: Debian's ``/usr/bin/redis-server`` with our own directory.

Started in the foreground (``daemonize no``) with its whole configuration on the command line:
a free loopback port, ``bind 127.0.0.1``, ``dir`` and the log file in *workdir*, no snapshots
(``save ""``) and no append-only file, so nothing outlives the test but the log. ``stop()`` then
``start()`` brings it back on the same port (tests stop Redis mid-run); every wait is bounded,
and a server that does not stop in time is killed.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from lab.harness import LOOPBACK, LabError, free_port

REDIS_SERVER = "/usr/bin/redis-server"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


class RedisServer:
    """One private redis-server. *password*: ``requirepass`` (the URL then carries it)."""

    def __init__(self, workdir: Path, port: int | None = None, *, password: str | None = None) -> None:
        self.workdir = Path(workdir)
        self.port = port if port is not None else free_port()
        self.password = password
        self.logfile = self.workdir / "redis.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        if self._process is not None:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", str(self.logfile),
        ]  # fmt: skip
        if self.password:
            argv += ["--requirepass", self.password]
        self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                code = self._process.poll()
                self.kill()
                raise LabError(
                    f"redis-server on {LOOPBACK}:{self.port} did not answer PING within {START_TIMEOUT}s"
                    f" (exit status {code}); log tail:\n{self._log_tail()}"
                )
            time.sleep(0.02)

    def _answers(self) -> bool:
        # A raw PING: any answer (+PONG, or -NOAUTH with a password) means it is serving.
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def _log_tail(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM (Redis then shuts down without saving, as ``save ""`` says) and wait; kill if it hangs."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def kill(self) -> None:
        """SIGKILL, like a crash."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
