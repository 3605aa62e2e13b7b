"""The policy daemon over real sockets (services/policyd.py): Postfix's conversation replayed byte
for byte, one connection reused for many requests, limits, idempotent END-OF-MESSAGE, refunds,
store errors, bounds on connections and idle time, stop."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.harness import free_port
from smtpplus_milter.config import load_config
from smtpplus_milter.core.limits import Limits, Message, Verdict
from smtpplus_milter.core.policy_protocol import encode_request
from smtpplus_milter.infra.limit_store import LimitStoreError, MemoryLimitStore
from smtpplus_milter.services.policyd import PolicyService, bind
from tests.support.builders import write_config

NOW = 1_796_118_890.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class BrokenStore:
    def admit(self, key: str, limits: Limits, message: Message, token: str, now: float) -> Verdict:
        raise LimitStoreError("redis://127.0.0.1:1/0: connection refused")

    def refund(self, key: str, token: str, now: float) -> bool:
        raise LimitStoreError("redis://127.0.0.1:1/0: connection refused")


def start(
    tmp_path: Path, settings: dict[str, Any] | None = None, store: Any = None
) -> tuple[PolicyService, int, Clock]:
    port = free_port()
    main = {
        "policy": {"listen": f"inet:127.0.0.1:{port}", "idle_timeout_seconds": 2, "max_connections": 4},
        "sending_limits": {"messages_per_hour": 3, "recipients_per_message": 2},
        **(settings or {}),
    }
    config = load_config(write_config(tmp_path, settings=main))
    clock = Clock()
    service = PolicyService(
        config,
        listeners=[bind(config.policy.listen)],
        store=store if store is not None else MemoryLimitStore(),
        clock=clock,
        emit=lambda level, event, fields: None,
    )
    threading.Thread(target=service.serve, daemon=True).start()
    return service, port, clock


@pytest.fixture
def policyd(tmp_path: Path) -> Iterator[tuple[PolicyService, int, Clock]]:
    service, port, clock = start(tmp_path)
    yield service, port, clock
    service.stop()


class Postfix:
    """One smtpd's policy connection: writes requests as Postfix does, reads one reply each."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buffer = b""

    def ask(self, **attributes: str) -> str:
        self.sock.sendall(encode_request(attributes))
        while b"\n\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        reply, _, self.buffer = self.buffer.partition(b"\n\n")
        assert reply.startswith(b"action=")
        return reply[len("action=") :].decode()

    def close(self) -> None:
        self.sock.close()


def rcpt(client: Postfix, recipient: str, instance: str = "i1", sender: str = "orders@yourcompany.com") -> str:
    return client.ask(
        request="smtpd_access_policy",
        protocol_state="RCPT",
        sasl_username="shop-frontend",
        sender=sender,
        recipient=recipient,
        recipient_count="0",
        instance=instance,
    )


def eom(client: Postfix, queue_id: str, instance: str = "i1", recipients: int = 1, size: int = 500) -> str:
    return client.ask(
        request="smtpd_access_policy",
        protocol_state="END-OF-MESSAGE",
        sasl_username="shop-frontend",
        sender="orders@yourcompany.com",
        queue_id=queue_id,
        recipient_count=str(recipients),
        size=str(size),
        instance=instance,
    )


def test_one_connection_carries_many_messages(policyd: tuple[PolicyService, int, Clock]) -> None:
    service, port, clock = policyd
    client = Postfix(port)
    answers = []
    for n in range(4):
        answers.append(rcpt(client, "a@example.org", instance=f"i{n}"))
        answers.append(eom(client, f"Q{n}", instance=f"i{n}"))
    client.close()
    assert answers[:6] == ["DUNNO"] * 6
    assert answers[6] == "DUNNO"  # RCPT of the 4th message
    assert answers[7].startswith("450 4.7.1 sending limit messages_per_hour reached for SMTP+ user shop-frontend")
    limited = service.policy_metrics.limited.labels(user="shop-frontend", limit="messages_per_hour")
    assert limited._value.get() == 1
    # After the window's interval (3600 s / 3) one more goes through.
    clock.now += 1200
    assert eom(Postfix(port), "Q9") == "DUNNO"


def test_recipients_per_message_at_rcpt_and_the_milters_refusals(policyd: tuple[PolicyService, int, Clock]) -> None:
    _service, port, _clock = policyd
    client = Postfix(port)
    assert [rcpt(client, f"r{n}@example.org") for n in range(3)] == ["DUNNO", "DUNNO", "452 4.5.3 Too many recipients"]
    refused = rcpt(client, "r@example.org", instance="i2", sender="ceo@bank.example")
    assert refused.startswith("550 5.7.1")
    other = client.ask(
        request="smtpd_access_policy", protocol_state="MAIL", sasl_username="shop-frontend", instance="i3"
    )
    assert other == "DUNNO"
    assert client.ask(request="junk_request") == "DUNNO"


def test_a_repeated_end_of_message_counts_once(policyd: tuple[PolicyService, int, Clock]) -> None:
    service, port, _clock = policyd
    # Postfix retries on a new connection after a timeout: the same queue id, twice.
    assert eom(Postfix(port), "QSAME") == "DUNNO"
    assert eom(Postfix(port), "QSAME") == "DUNNO"
    store = service.store
    assert isinstance(store, MemoryLimitStore)
    assert store.usage("shop-frontend").recipients == 1


def test_a_refund_gives_the_place_back_once(policyd: tuple[PolicyService, int, Clock]) -> None:
    service, port, _clock = policyd
    client = Postfix(port)
    assert [eom(client, f"Q{n}", instance=f"i{n}") for n in range(3)] == ["DUNNO"] * 3
    refund = {"request": "smtpplus_refund", "sasl_username": "Shop-Frontend", "queue_id": "Q1"}
    assert client.ask(**refund) == "OK"
    assert client.ask(**refund) == "DUNNO"  # once
    assert eom(client, "Q4", instance="i4") == "DUNNO"
    assert eom(client, "Q5", instance="i5").startswith("450 4.7.1")
    assert service.policy_metrics.refunds.labels(result="refunded")._value.get() == 1


@pytest.mark.parametrize(
    ("on_store_error", "expected"),
    [
        pytest.param("tempfail", "451 4.3.0", id="tempfail"),
        pytest.param("allow", "DUNNO", id="allow"),
    ],
)
def test_store_errors(tmp_path: Path, on_store_error: str, expected: str) -> None:
    settings = {"sending_limits": {"on_store_error": on_store_error}}
    service, port, _clock = start(tmp_path, settings, store=BrokenStore())
    try:
        client = Postfix(port)
        assert rcpt(client, "a@example.org") == "DUNNO"  # RCPT needs no store
        assert eom(client, "Q1").startswith(expected)
        assert service.policy_metrics.store_errors.labels(action=on_store_error)._value.get() == 1
    finally:
        service.stop()


def test_bounds_connections_idle_time_and_garbage(policyd: tuple[PolicyService, int, Clock]) -> None:
    service, port, _clock = policyd
    clients = [Postfix(port) for _ in range(4)]
    for client in clients:
        assert rcpt(client, "a@example.org") == "DUNNO"
    extra = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert extra.recv(100) == b""  # the fifth is closed at once
    assert service.policy_metrics.refused_connections._value.get() == 1
    for client in clients:
        client.close()
    # A peer that sends something that is not the protocol is closed without a reply.
    deadline = time.monotonic() + 5
    while service.busy() and time.monotonic() < deadline:
        time.sleep(0.02)
    bad = socket.create_connection(("127.0.0.1", port), timeout=5)
    bad.sendall(b"\x00garbage\n\n")
    assert bad.recv(100) == b""
    # One that says nothing is closed after policy.idle_timeout_seconds (2 s here).
    idle = socket.create_connection(("127.0.0.1", port), timeout=10)
    started = time.monotonic()
    assert idle.recv(100) == b""
    assert 1.5 < time.monotonic() - started < 5


def test_stop_closes_idle_connections_and_answers_nobody_new(tmp_path: Path) -> None:
    service, port, _clock = start(tmp_path)
    client = Postfix(port)
    assert rcpt(client, "a@example.org") == "DUNNO"
    service.stop()
    assert client.sock.recv(100) == b""
    deadline = time.monotonic() + 5
    while service.busy() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert service.busy() == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1)


def test_a_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "policy.sock"
    config = load_config(write_config(tmp_path, settings={"policy": {"listen": f"unix:{path}"}}))
    service = PolicyService(config, store=MemoryLimitStore(), emit=lambda level, event, fields: None)
    threading.Thread(target=service.serve, daemon=True).start()
    try:
        deadline = time.monotonic() + 5
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
            client.sendall(encode_request({"request": "smtpd_access_policy", "protocol_state": "RCPT"}))
            assert client.recv(100) == b"action=DUNNO\n\n"
    finally:
        service.stop()


class RecordingSink:
    name = "recording"

    def __init__(self) -> None:
        self.alerts: list[Any] = []

    def send(self, alert: Any) -> None:
        self.alerts.append(alert)


def test_a_limit_reached_alerts_once_per_user_and_limit(tmp_path: Path) -> None:
    from smtpplus_milter.observe.alerts import AlertDispatcher

    sink = RecordingSink()
    alerts = AlertDispatcher([sink], dedup_seconds=300)
    port = free_port()
    main = {
        "policy": {"listen": f"inet:127.0.0.1:{port}"},
        "sending_limits": {"messages_per_hour": 1, "recipients_per_message": 1},
    }
    config = load_config(write_config(tmp_path, settings=main))
    service = PolicyService(
        config,
        listeners=[bind(config.policy.listen)],
        store=MemoryLimitStore(),
        alerts=alerts,
        emit=lambda level, event, fields: None,
    )
    threading.Thread(target=service.serve, daemon=True).start()
    try:
        client = Postfix(port)
        assert eom(client, "Q1", instance="a") == "DUNNO"
        for n in range(3):
            assert eom(client, f"Q{n + 2}", instance=f"b{n}").startswith("450 4.7.1")
        assert rcpt(client, "x@example.org", instance="c") == "DUNNO"
        assert rcpt(client, "y@example.org", instance="c") == "452 4.5.3 Too many recipients"
        deadline = time.monotonic() + 5
        while len(sink.alerts) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        assert sorted((a.alertname, a.user, a.sender) for a in sink.alerts) == [
            ("SMTPPlusSendingLimitReached", "shop-frontend", "messages_per_hour"),
            ("SMTPPlusSendingLimitReached", "shop-frontend", "recipients_per_message"),
        ]
        [hourly] = [a for a in sink.alerts if a.sender == "messages_per_hour"]
        assert hourly.summary.startswith(
            "SMTP+ user shop-frontend reached sending limit messages_per_hour: 450 4.7.1 sending limit"
        )
    finally:
        service.stop()
        service.close()
