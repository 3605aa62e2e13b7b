"""A private Redis server on loopback: Debian's ``/usr/bin/redis-server`` with our own directory.

Started in the foreground (``daemonize no``) with its whole configuration on the command line:
a free loopback port, ``bind 127.0.0.1``, ``dir`` and the log file in *workdir*, no snapshots
(``save ""``) and no append-only file, so nothing outlives the test but the log. ``stop()`` then
``start()`` brings it back on the same port (tests stop Redis mid-run); every wait is bounded,
and a server that does not stop in time is killed.
"""

from __future__ import annotations

import socket
from pathlib import Path

from lab.harness import LOOPBACK, _ForegroundServer, free_port

REDIS_SERVER = "/usr/bin/redis-server"


class RedisServer(_ForegroundServer):
    """One private redis-server. *password*: ``requirepass`` (the URL then carries it)."""

    NAME = "redis-server"
    START_TIMEOUT = 10.0
    STOP_TIMEOUT = 10.0

    def __init__(self, workdir: Path, port: int | None = None, *, password: str | None = None) -> None:
        self.workdir = Path(workdir)
        self.port = port if port is not None else free_port()
        self.password = password
        self.log_file = self.workdir / "redis.log"
        self._process = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        if self.alive():
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
            "--logfile", str(self.log_file),
        ]  # fmt: skip
        if self.password:
            argv += ["--requirepass", self.password]
        # SIGTERM (stop()) makes Redis shut down without saving, as ``save ""`` says.
        self._launch(argv, self.workdir / "redis.out")

    def _ready(self) -> bool:
        # A raw PING: any answer (+PONG, or -NOAUTH with a password) means it is serving.
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL, like a crash."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(5)
