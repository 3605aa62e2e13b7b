"""The typed config values: HOST:PORT and the milter socket are parsed once, and consumers use them as parsed.

The consumers that listen or ask on loopback: tests/integration/test_value_consumers.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpplus_milter.admin.postfix import milter_address
from smtpplus_milter.config import HostPort, SocketSpec

HOSTPORT_GOOD = [
    pytest.param("127.0.0.1:9464", "127.0.0.1", 9464, "127.0.0.1:9464", id="v4"),
    pytest.param("localhost:25", "localhost", 25, "localhost:25", id="name"),
    pytest.param("[::1]:53", "::1", 53, "[::1]:53", id="v6-brackets"),
    pytest.param("[2001:db8::7]:65535", "2001:db8::7", 65535, "[2001:db8::7]:65535", id="v6-top-port"),
    pytest.param("relay.example:1", "relay.example", 1, "relay.example:1", id="port-1"),
]


@pytest.mark.parametrize(("text", "host", "port", "shown"), HOSTPORT_GOOD)
def test_host_port_parses(text: str, host: str, port: int, shown: str) -> None:
    value = HostPort.parse(text)
    assert (value.host, value.port, str(value)) == (host, port, shown)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("127.0.0.1:0", id="port-0"),
        pytest.param("127.0.0.1:65536", id="port-65536"),
        pytest.param("127.0.0.1:123456", id="port-six-digits"),
        pytest.param(":25", id="missing-host"),
        pytest.param("127.0.0.1", id="missing-port"),
        pytest.param("127.0.0.1:", id="empty-port"),
        pytest.param("::1:53", id="v6-without-brackets"),
        pytest.param("[::1:53", id="unclosed-bracket"),
        pytest.param("relay example:25", id="space"),
        pytest.param("127.0.0.1:25\n", id="trailing-newline"),
        pytest.param("", id="empty"),
    ],
)
def test_host_port_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not HOST:PORT \(e\.g\. 127\.0\.0\.1:9464\)"):
        HostPort.parse(text)


SOCKET_GOOD = [
    pytest.param("unix:/run/smtpplus/milter.sock", "unix", Path("/run/smtpplus/milter.sock"), None, None, id="unix"),
    pytest.param("local:/run/milter.sock", "local", Path("/run/milter.sock"), None, None, id="local"),
    pytest.param("inet:8891@127.0.0.1", "inet", None, "127.0.0.1", 8891, id="inet"),
    pytest.param("inet:8891@localhost", "inet", None, "localhost", 8891, id="inet-name"),
    pytest.param("inet6:8891@[::1]", "inet6", None, "::1", 8891, id="inet6-brackets"),
    pytest.param("inet6:8891@::1", "inet6", None, "::1", 8891, id="inet6-plain"),
    pytest.param("inet:65535@127.0.0.1", "inet", None, "127.0.0.1", 65535, id="top-port"),
]


@pytest.mark.parametrize(("text", "kind", "path", "host", "port"), SOCKET_GOOD)
def test_socket_spec_parses(text: str, kind: str, path: Path | None, host: str | None, port: int | None) -> None:
    spec = SocketSpec.parse(text)
    assert (spec.kind, spec.path, spec.host, spec.port) == (kind, path, host, port)
    assert spec.is_unix is (path is not None)
    assert str(spec) == text  # what libmilter is given: the text as written


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("inet:8891", "has no host, so the milter would listen on every interface", id="inet-no-host"),
        pytest.param("inet6:8891", "name it, e.g. inet6:8891@127.0.0.1", id="inet6-no-host"),
        pytest.param("inet:0@127.0.0.1", "is not a milter socket", id="port-0"),
        pytest.param("inet:65536@127.0.0.1", "is not a milter socket", id="port-65536"),
        pytest.param("inet:8891@", "is not a milter socket", id="empty-host"),
        pytest.param("unix:relative.sock", "use unix:/ABSOLUTE/PATH", id="relative-path"),
        pytest.param("/tmp/milter.sock", "use unix:/ABSOLUTE/PATH or inet:PORT@127.0.0.1", id="no-kind"),
        pytest.param("tcp:8891@127.0.0.1", "is not a milter socket", id="unknown-kind"),
        pytest.param("inet:port@127.0.0.1", "is not a milter socket", id="port-not-a-number"),
    ],
)
def test_socket_spec_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        SocketSpec.parse(text)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize(
    ("text", "exposed"),
    [
        pytest.param("unix:/run/milter.sock", None, id="unix"),
        pytest.param("inet:8891@127.0.0.1", None, id="loopback"),
        pytest.param("inet:8891@127.0.0.2", None, id="loopback-net"),
        pytest.param("inet:8891@localhost", None, id="localhost"),
        pytest.param("inet6:8891@[::1]", None, id="v6-loopback"),
        pytest.param("inet:8891@0.0.0.0", "0.0.0.0", id="any"),
        pytest.param("inet6:8891@[2001:db8::1]", "[2001:db8::1]", id="v6-as-written"),
        pytest.param("inet:8891@milter.example", "milter.example", id="name"),
    ],
)
def test_exposed_host(text: str, exposed: str | None) -> None:
    assert SocketSpec.parse(text).exposed_host == exposed


@pytest.mark.parametrize(
    ("text", "postfix"),
    [
        pytest.param("unix:/var/spool/postfix/smtpplus/milter.sock", "unix:/var/spool/postfix/smtpplus/milter.sock"),
        pytest.param("local:/run/milter.sock", "unix:/run/milter.sock"),
        pytest.param("inet:8891@127.0.0.1", "inet:127.0.0.1:8891"),
        pytest.param("inet6:8891@[::1]", "inet:[::1]:8891"),
    ],
)
def test_milter_address_is_what_smtpd_milters_names(text: str, postfix: str) -> None:
    assert milter_address(SocketSpec.parse(text)) == postfix
