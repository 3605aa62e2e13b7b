"""``smtpplus-milter policyd`` as its own process: systemd's socket activation (the shipped unit's
way, played by systemd-socket-activate), SIGHUP re-reading the users file, SIGTERM, and kill -9 with
the Redis store (nothing counted is lost or counted twice)."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lab.redis import RedisServer
from smtpplus_milter.core.policy_protocol import encode_request
from tests.support.builders import SHOP_USERS, write_config

pytestmark = pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="needs systemd-socket-activate")


def _ask(path: Path, **attributes: str) -> str:
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(str(path))
        client.sendall(encode_request(attributes))
        reply = b""
        while not reply.endswith(b"\n\n"):
            chunk = client.recv(4096)
            assert chunk, "closed without a reply"
            reply += chunk
    return reply.decode().removeprefix("action=").strip()


def _eom(path: Path, queue_id: str, login: str = "shop-frontend") -> str:
    return _ask(
        path,
        request="smtpd_access_policy",
        protocol_state="END-OF-MESSAGE",
        sasl_username=login,
        sender="orders@yourcompany.com",
        queue_id=queue_id,
        recipient_count="1",
        size="100",
        instance=queue_id,
    )


class Policyd:
    """The daemon under systemd-socket-activate: it makes both sockets, and on the first connection
    runs the daemon in its own place with them as fds 3 and 4 (LISTEN_FDS=2), as systemd does."""

    def __init__(self, directory: Path, config: Path) -> None:
        self.policy, self.refund, self.log = (
            directory / "policy.sock",
            directory / "refund.sock",
            directory / "policyd.log",
        )
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for path in (self.policy, self.refund):
            path.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    "systemd-socket-activate",
                    "-l",
                    str(self.policy),
                    "-l",
                    str(self.refund),
                    sys.executable,
                    "-m",
                    "smtpplus_milter",
                    "policyd",
                    "-c",
                    str(self.config),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 10
        while not self.policy.exists() or not self.refund.exists():
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)

    def events(self, name: str) -> list[dict[str, object]]:
        found = []
        for line in self.log.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == name:
                found.append(event)
        return found

    def wait_for(self, name: str, count: int = 1) -> list[dict[str, object]]:
        deadline = time.monotonic() + 10
        while len(self.events(name)) < count:
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)
        return self.events(name)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 15) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _config(tmp_path: Path, store: str = "memory", users: dict[str, object] | None = None) -> Path:
    settings = {
        # Not bound by the daemon (systemd passes the sockets), but the refund path is what the milter uses.
        "policy": {"listen": f"unix:{tmp_path}/policy.sock", "refund_listen": f"unix:{tmp_path}/refund.sock"},
        "sending_limits": {"messages_per_hour": 3, "store": store},
    }
    return write_config(tmp_path, settings=settings, users=users)


def test_socket_activation_both_sockets_and_a_clean_stop(tmp_path: Path) -> None:
    daemon = Policyd(tmp_path, _config(tmp_path))
    daemon.start()
    try:
        assert _eom(daemon.policy, "Q1") == "DUNNO"  # the first connection starts the daemon
        started = daemon.wait_for("started")[0]
        assert started["listening"] == 2
        assert _ask(daemon.refund, request="smtpplus_refund", sasl_username="shop-frontend", queue_id="Q1") == "OK"
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
        assert daemon.events("stopped")
    finally:
        daemon.kill()


def test_sighup_rereads_the_users_file(tmp_path: Path) -> None:
    users = {**SHOP_USERS, "shop-frontend": {**SHOP_USERS["shop-frontend"], "sending_limits": {"messages_per_hour": 1}}}
    daemon = Policyd(tmp_path, _config(tmp_path, users=users))
    daemon.start()
    try:
        assert _eom(daemon.policy, "Q1") == "DUNNO"
        assert _eom(daemon.policy, "Q2").startswith("450 4.7.1")
        users["shop-frontend"]["sending_limits"] = {"messages_per_hour": 50}  # type: ignore[index]
        (tmp_path / "users.yaml").write_text(yaml.safe_dump(users, sort_keys=False), encoding="utf-8")
        daemon.signal(signal.SIGHUP)
        daemon.wait_for("config_reloaded")
        # The hour already spent is kept in time (GCRA), so the new limit shows in the wait: one
        # message every 72 s at 50 an hour instead of 3,600 s at 1 (docs/limits.md).
        assert _eom(daemon.policy, "Q3").endswith("retry after 72 s")
    finally:
        daemon.kill()


def test_kill_9_with_redis_loses_and_doubles_nothing(tmp_path: Path, redis: RedisServer) -> None:
    daemon = Policyd(tmp_path, _config(tmp_path, store=redis.url))
    daemon.start()
    try:
        assert [_eom(daemon.policy, f"Q{n}") for n in range(2)] == ["DUNNO", "DUNNO"]
        daemon.kill()  # kill -9 (the activator execs the daemon: one process)
        daemon.start()
        assert _eom(daemon.policy, "Q1") == "DUNNO"  # Postfix's retry of Q1: the first answer, not counted again
        assert _eom(daemon.policy, "Q2") == "DUNNO"  # the third message: exactly the limit of 3
        assert _eom(daemon.policy, "Q3").startswith("450 4.7.1")
    finally:
        daemon.kill()
