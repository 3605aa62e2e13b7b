"""A private PostgreSQL server for the tracking store tests: Debian's binaries, our own data directory.

``initdb`` into a temporary directory as the ``postgres`` system user (the server refuses to run as
root), ``pg_ctl start`` listening on a unix socket in that directory and a free loopback port, and
``pg_ctl stop`` plus removal of the directory afterwards, also when the test fails. A system cluster
(``pg_createcluster``, /var/lib/postgresql) is never touched.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lab.harness import free_port

BIN = Path("/usr/lib/postgresql/15/bin")
USER = "postgres"


def available() -> str | None:
    """Why a private server cannot be started here, or None if it can."""
    if not (BIN / "initdb").exists():
        return f"{BIN}/initdb is missing: install Debian's postgresql package (deploy/bootstrap.sh does)"
    if os.geteuid() != 0:
        return "starting the server as the postgres user needs root (runuser)"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return f"no {USER} system user (Debian's postgresql package creates it)"
    return None


@dataclass(frozen=True)
class Server:
    socket_dir: Path
    port: int
    data: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@/{database}?host={self.socket_dir}&port={self.port}"

    def tcp_url(self, database: str = "postgres") -> str:
        """The same over TCP on 127.0.0.1: for a client running as a user that cannot enter the
        socket directory (e.g. Postfix's pipe running ingest as nobody)."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, *, tcp: bool = False) -> str:
        """A new empty database's URL (one per test keeps tests apart without a new server)."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
        return self.tcp_url(name) if tcp else self.url(name)

    def stop(self) -> None:
        """Stop the server (immediately, like a crash), for tests of a store that went away."""
        _pg_ctl(self.data, "-m", "immediate", "-w", "stop")

    def start(self) -> None:
        """Start it again on the same port and socket (after :meth:`stop`)."""
        done = _start(self.data, self.socket_dir, self.port)
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {done.stdout}{done.stderr}")


def _as_postgres(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", USER, "--", *argv], capture_output=True, text=True, timeout=120)


def _pg_ctl(data: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return _as_postgres(f"{BIN}/pg_ctl", "-D", str(data), *argv)


def _start(data: Path, socket_dir: Path, port: int) -> subprocess.CompletedProcess[str]:
    options = f"-k {socket_dir} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off"
    return _pg_ctl(data, "-l", str(socket_dir / "server.log"), "-o", options, "-w", "start")


@contextlib.contextmanager
def private_server() -> Iterator[Server]:
    base = Path(tempfile.mkdtemp(prefix="smtpplus-pg-"))
    data = base / "data"
    started = False
    try:
        shutil.chown(base, USER, USER)
        done = _as_postgres(f"{BIN}/initdb", "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync")
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")
        for _ in range(5):
            # A free port can be taken before the server binds it: try another.
            port = free_port()
            done = _start(data, base, port)
            if done.returncode == 0:
                started = True
                break
        if not started:
            log = (base / "server.log").read_text(errors="replace") if (base / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {done.stdout}{done.stderr}\n{log[-2000:]}")
        yield Server(base, port, data)
    finally:
        if started:
            _pg_ctl(data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)
