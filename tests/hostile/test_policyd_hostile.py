"""A hostile or broken peer of the policy daemon (services/policyd.py) over real sockets: it cannot
stall other connections, cannot make the daemon hold more than its bounds, and a refusal the daemon
decided stays that refusal whatever else fails."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.harness import free_port
from smtpplus_milter.config import load_config
from smtpplus_milter.core.limits import Limits, Message, Verdict
from smtpplus_milter.core.policy_protocol import MAX_REQUEST_BYTES, encode_request
from smtpplus_milter.infra.limit_store import LimitStoreError, MemoryLimitStore
from smtpplus_milter.services.policyd import PolicyService, bind
from tests.support.builders import write_config

RCPT = {
    "request": "smtpd_access_policy",
    "protocol_state": "RCPT",
    "sasl_username": "shop-frontend",
    "sender": "orders@yourcompany.com",
    "recipient": "a@example.org",
    "instance": "i1",
}


class SlowStore:
    """A store whose every answer takes *delay* seconds (a Redis far away), then fails."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def admit(self, key: str, limits: Limits, message: Message, token: str, now: float) -> Verdict:
        time.sleep(self.delay)
        raise LimitStoreError("timed out")

    def refund(self, key: str, token: str, now: float) -> bool:
        return False


def _start(tmp_path: Path, store: object | None = None, max_connections: int = 50) -> tuple[PolicyService, int]:
    port = free_port()
    settings = {
        "policy": {"listen": f"inet:127.0.0.1:{port}", "idle_timeout_seconds": 30, "max_connections": max_connections}
    }
    config = load_config(write_config(tmp_path, settings=settings))
    service = PolicyService(
        config,
        listeners=[bind(config.policy.listen)],
        store=store or MemoryLimitStore(),  # type: ignore[arg-type]
        emit=lambda level, event, fields: None,
    )
    threading.Thread(target=service.serve, daemon=True).start()
    return service, port


@pytest.fixture
def policyd(tmp_path: Path) -> Iterator[tuple[PolicyService, int]]:
    service, port = _start(tmp_path)
    yield service, port
    service.stop()


def _ask(port: int, attributes: dict[str, str], timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as client:
        client.sendall(encode_request(attributes))
        reply = b""
        while not reply.endswith(b"\n\n"):
            chunk = client.recv(4096)
            if not chunk:
                break
            reply += chunk
        return reply


def _timed_ask(port: int) -> float:
    started = time.monotonic()
    assert _ask(port, RCPT) == b"action=DUNNO\n\n"
    return time.monotonic() - started


def test_idle_and_trickling_peers_do_not_stall_others(policyd: tuple[PolicyService, int]) -> None:
    _service, port = policyd
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    trickle = socket.create_connection(("127.0.0.1", port))
    trickle.sendall(b"request=smtpd_access_policy\nprotocol_st")  # and then nothing
    try:
        assert max(_timed_ask(port) for _ in range(20)) < 0.5
    finally:
        for peer in [*idle, trickle]:
            peer.close()


def test_an_oversized_request_closes_only_its_connection(policyd: tuple[PolicyService, int]) -> None:
    service, port = policyd
    flood = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        payload = b"x=" + b"a" * (MAX_REQUEST_BYTES + 10) + b"\n"
        try:
            flood.sendall(payload)
        except OSError:
            pass  # closed under us: that is the point
        assert flood.recv(100) == b""  # closed without a reply
    finally:
        flood.close()
    assert _timed_ask(port) < 0.5
    assert service.policy_metrics.protocol_errors._value.get() == 1


def test_many_pipelined_requests_are_answered_in_order(policyd: tuple[PolicyService, int]) -> None:
    _service, port = policyd
    count = 2000
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        sender = threading.Thread(
            target=client.sendall,
            args=(b"".join(encode_request({**RCPT, "recipient": f"r{n}@x.example"}) for n in range(count)),),
        )
        sender.start()
        replies = b""
        while replies.count(b"\n\n") < count:
            chunk = client.recv(65536)
            assert chunk, "closed early"
            replies += chunk
        sender.join()
    answers = replies.split(b"\n\n")[:count]
    # recipients_per_message (100 by default): the first 100 of the one message pass, the rest 452.
    assert answers[:100] == [b"action=DUNNO"] * 100
    assert set(answers[100:]) == {b"action=452 4.5.3 Too many recipients"}


def test_a_slow_store_delays_only_its_own_connection(tmp_path: Path) -> None:
    service, port = _start(tmp_path, store=SlowStore(2.0))
    try:
        eom = {**RCPT, "protocol_state": "END-OF-MESSAGE", "queue_id": "Q1", "size": "10", "recipient_count": "1"}
        waiting = threading.Thread(target=_ask, args=(port, eom))
        waiting.start()
        time.sleep(0.2)
        assert _timed_ask(port) < 0.5  # RCPT of another smtpd goes on meanwhile
        waiting.join()
    finally:
        service.stop()


def test_a_refusal_stays_a_refusal_when_the_store_is_down(tmp_path: Path) -> None:
    service, port = _start(tmp_path, store=SlowStore(0.0))
    try:
        refused = {**RCPT, "sender": "ceo@bank.example"}
        assert _ask(port, refused).startswith(b"action=550 5.7.1")
        eom = {**refused, "protocol_state": "END-OF-MESSAGE", "queue_id": "Q1", "size": "10", "recipient_count": "1"}
        # Never counted, never the store's 451: the sender is not authorized, whatever the store says.
        assert _ask(port, eom).startswith(b"action=550 5.7.1")
    finally:
        service.stop()


def test_connection_flood_is_bounded(tmp_path: Path) -> None:
    service, port = _start(tmp_path, max_connections=5)
    peers = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
    try:
        deadline = time.monotonic() + 5
        while service.busy() < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        extra = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(50)]
        for peer in extra:
            assert peer.recv(10) == b""
            peer.close()
        assert service.busy() == 5
        assert service.policy_metrics.refused_connections._value.get() == 50
    finally:
        for peer in peers:
            peer.close()
        service.stop()


def test_a_peer_that_never_reads_its_replies_is_dropped_after_the_idle_bound(tmp_path: Path) -> None:
    # A unix socket: its buffers do not grow (loopback TCP's would hold every answer of this test).
    path = tmp_path / "policy.sock"
    settings = {"policy": {"listen": f"unix:{path}", "idle_timeout_seconds": 1}}
    config = load_config(write_config(tmp_path, settings=settings))
    service = PolicyService(
        config, listeners=[bind(config.policy.listen)], store=MemoryLimitStore(), emit=lambda level, event, fields: None
    )
    threading.Thread(target=service.serve, daemon=True).start()
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    peer.connect(str(path))
    request = encode_request({"request": "smtpd_access_policy", "protocol_state": "CONNECT"})

    def flood() -> None:
        try:
            peer.sendall(request * 100_000)  # the answers pile up unread until the daemon gives up
        except OSError:
            pass

    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    try:
        deadline = time.monotonic() + 30
        while service.busy() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        while service.busy() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert service.busy() == 0, "the daemon still serves a peer that reads nothing"
        answered = service.policy_metrics.request_counts["other", "dunno"]._value.get()
        assert answered < 100_000  # it gave up before answering everything
    finally:
        peer.close()
        service.stop()
