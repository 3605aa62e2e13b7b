"""The typed config values as their consumers use them, against real loopback servers: the metrics
endpoint listens on the parsed HOST:PORT, the DNS resolver asks the parsed server. The parsing
itself is tested in tests/unit/test_values.py."""

from __future__ import annotations

import socket
import threading
import urllib.request
from collections.abc import Iterator

import pytest

from smtpplus_milter.config import HostPort


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_metrics_serve_listens_on_the_host_port() -> None:
    from smtpplus_milter.observe.metrics import Metrics, serve_metrics

    listen = HostPort("127.0.0.1", _free_port())
    serve_metrics(listen, Metrics().registry)
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as response:
        assert b"smtpplus_build_info" in response.read()


@pytest.fixture
def dns_server() -> Iterator[tuple[HostPort, list[str]]]:
    """A one-record DNS server on loopback UDP; yields its address and the names it was asked."""
    import dns.message
    import dns.rrset

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(0.2)
    asked: list[str] = []
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            try:
                data, peer = server.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(data)
            asked.append(query.question[0].name.to_text())
            response = dns.message.make_response(query)
            response.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "TXT", '"smtpplus-test"'))
            server.sendto(response.to_wire(), peer)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield HostPort("127.0.0.1", server.getsockname()[1]), asked
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_resolver_asks_the_configured_host_and_port(dns_server: tuple[HostPort, list[str]]) -> None:
    from smtpplus_milter.infra.dns import Resolver

    address, asked = dns_server
    resolver = Resolver(address, timeout=3)
    assert resolver.txt("_smtpplus.example.org") == ["smtpplus-test"]
    assert asked == ["_smtpplus.example.org."]
    assert resolver.address == str(address)
