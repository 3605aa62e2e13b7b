"""Hostile HTTP against a real ``smtpplus-milter web``: big bodies, slow and many clients, odd paths.

The endpoint faces the Internet through the operator's proxy (which may be misconfigured), so
these are sent straight to it: each must be refused or answered quickly, and none may record an
unsubscribe or keep other requests from being answered.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.milter_process import WebProcess
from tests.support.web import ONE_CLICK, running_web, token, unsubscribed

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WebProcess, Path]]:
    directory = tmp_path_factory.mktemp("web")
    with running_web(directory) as process:
        yield process, directory


def status_of(port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send *data* as is; everything the server answers before it closes (or *timeout*)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before we finished sending: the answer may still be there
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


@pytest.mark.parametrize(
    "chunked",
    [pytest.param(False, id="content-length"), pytest.param(True, id="chunked")],
)
def test_a_65_kib_body_is_refused(web: tuple[WebProcess, Path], chunked: bool) -> None:
    process, directory = web
    body = b"List-Unsubscribe=One-Click&pad=" + b"x" * (65 * 1024)
    path = f"/u/{token('big@example.net')}"
    if chunked:
        data = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        data += b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:40000], body[40000:])) + b"0\r\n\r\n"
        answer = raw(process.port, data)
    else:
        answer = raw(
            process.port, f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        )
    assert answer.split(b" ", 2)[1] == b"413", answer[:200]
    assert all(entry.address != "big@example.net" for entry in unsubscribed(directory))


def test_a_slow_client_does_not_block_other_requests(web: tuple[WebProcess, Path]) -> None:
    process, _ = web
    slow = []
    for _ in range(20):  # more slowloris connections than the server has worker threads
        sock = socket.create_connection(("127.0.0.1", process.port), timeout=5)
        sock.sendall(f"POST /u/{token()} HTTP/1.1\r\nHost: x\r\nContent-Length: 26\r\n\r\nList-".encode())
        slow.append(sock)
    try:
        started = time.monotonic()
        for _ in range(10):
            assert status_of(process.port, "GET", "/healthz") == 200
        assert time.monotonic() - started < 2.0
    finally:
        for sock in slow:
            sock.close()


def test_huge_headers_are_refused(web: tuple[WebProcess, Path]) -> None:
    process, _ = web
    answer = raw(process.port, f"GET /u/{token()} HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 100_000}\r\n\r\n".encode())
    assert answer.split(b" ", 2)[1] == b"431", answer[:200]  # waitress answers this one in HTTP/1.0
    assert status_of(process.port, "GET", "/healthz") == 200


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/u/../etc/passwd", id="traversal"),
        pytest.param("/u/%2e%2e/%2e%2e/etc/passwd", id="encoded-traversal"),
        pytest.param("/u/" + token()[:-1], id="truncated"),
        pytest.param("/u/" + token() + "%00", id="nul"),
        pytest.param("/u/" + "7" * 1100, id="long-base32"),
        pytest.param("/u/%ff%fe", id="bad-utf8"),
        pytest.param("//u/" + token()[:-1], id="double-slash"),
        pytest.param("/u/" + token()[:-1] + "/../" + token()[-1], id="dot-segments"),
    ],
)
def test_odd_paths_record_nothing(web: tuple[WebProcess, Path], path: str) -> None:
    process, directory = web
    before = unsubscribed(directory)
    status = status_of(process.port, "POST", path, ONE_CLICK, FORM)
    assert status in (400, 404)
    assert unsubscribed(directory) == before


def test_many_concurrent_requests_are_all_answered(web: tuple[WebProcess, Path]) -> None:
    process, directory = web
    addresses = [f"r{number}@example.org" for number in range(200)]

    def one(address: str) -> int:
        return status_of(process.port, "POST", f"/u/{token(address)}", ONE_CLICK, FORM)

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(one, addresses))
    assert statuses == [200] * len(addresses)
    recorded = {entry.address for entry in unsubscribed(directory)}
    assert set(addresses) <= recorded
