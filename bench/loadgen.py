"""A fast SMTP submission load generator: asyncio, raw protocol, one process, no threads.

Used by ``bench/throughput.py`` as a separate process (so its CPU is separable from Postfix's and
the milter's), but runnable on its own::

    echo '{"port": 2525, "login": "shop-frontend", "password": "secret",
           "concurrency": 10, "messages": 1000, "per_session": 1}' | python bench/loadgen.py

It reads one JSON job on stdin and prints one JSON result on stdout. ``concurrency`` sessions run
at once; each connects, says EHLO, logs in with AUTH PLAIN (one round trip), sends
``per_session`` messages (MAIL FROM / RCPT TO / DATA, one command per round trip: no
PIPELINING, like most application mail libraries) and QUITs, until ``messages`` messages have
been submitted. Every reply code is checked; an unexpected one ends that session and counts its
unsent messages as failures (the first few replies are reported). Uses uvloop when it is installed
(``"uvloop": false`` in the job turns it off). There is no TLS: the benchmark
listener allows AUTH in the clear on loopback, so TLS cost stays out of a measurement of milter
overhead.
"""

from __future__ import annotations

import asyncio
import base64
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

REPLY_TIMEOUT = 120.0
BODY_BYTES = 4096


class SmtpError(Exception):
    def __init__(self, stage: str, code: int, text: str) -> None:
        super().__init__(f"{stage}: {code} {text}")
        self.stage = stage
        self.code = code
        self.text = text


class SmtpClientProtocol(asyncio.Protocol):
    """Just enough SMTP client: send bytes, await the next complete (possibly multi-line) reply."""

    def __init__(self) -> None:
        # asyncio's or uvloop's transport (uvloop's is not an asyncio.Transport subclass).
        self.transport: Any = None
        self._buffer = b""
        self._lines: list[bytes] = []
        self._replies: list[tuple[int, str]] = []
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n")
            if end < 0:
                break
            line, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
            self._lines.append(line)
            # "250-..." continues a reply, "250 ..." (or a bare "250") ends it.
            if len(line) < 4 or line[3:4] != b"-":
                code = int(line[:3]) if line[:3].isdigit() else 0
                text = b" | ".join(part[4:] for part in self._lines).decode("utf-8", "replace")
                self._lines = []
                self._replies.append((code, text))
        if self._replies:
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def reply(self) -> tuple[int, str]:
        while not self._replies:
            if self._closed:
                return 0, "connection closed"
            self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.wait_for(self._waiter, REPLY_TIMEOUT)
            self._waiter = None
        return self._replies.pop(0)

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    async def command(self, stage: str, data: bytes, expected: int) -> None:
        self.send(data)
        code, text = await self.reply()
        if code != expected:
            raise SmtpError(stage, code, text)


def make_body(sender: str, recipient: str, size: int = BODY_BYTES) -> tuple[bytes, bytes]:
    """The message as two halves around a per-message Message-ID, already dot-stuffed and ended."""
    head = (
        f"From: {sender}\r\nTo: {recipient}\r\nSubject: smtpplus throughput benchmark\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\nMessage-ID: <"
    ).encode()
    middle = b"@bench.client.test>\r\n\r\n"
    line = b"The quick brown fox jumps over the lazy dog, again and again, for the benchmark.\r\n"
    body = b""
    while len(head) + len(middle) + len(body) + len(line) <= size:
        body += line
    return head, middle + body + b".\r\n"


@dataclass
class Totals:
    ok: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # MAIL FROM .. 250 after the dot, seconds
    auth_latencies: list[float] = field(default_factory=list)

    def fail(self, count: int, why: str) -> None:
        self.failed += count
        if len(self.failures) < 10:
            self.failures.append(why)


async def session(job: dict[str, Any], count: int, serial: list[int], totals: Totals) -> None:
    """One SMTP session that tries to submit *count* messages."""
    loop = asyncio.get_running_loop()
    sent = 0
    try:
        _, protocol = await loop.create_connection(SmtpClientProtocol, job.get("host", "127.0.0.1"), job["port"])
        assert isinstance(protocol, SmtpClientProtocol)
    except OSError as exc:
        totals.fail(count, f"connect: {exc}")
        return
    try:
        code, text = await protocol.reply()
        if code != 220:
            raise SmtpError("banner", code, text)
        await protocol.command("ehlo", b"EHLO bench.client.test\r\n", 250)
        started = time.perf_counter()
        await protocol.command("auth", job["auth_line"], 235)
        totals.auth_latencies.append(time.perf_counter() - started)
        head, tail = job["message"]
        mail = f"MAIL FROM:<{job['sender']}> SIZE={len(head) + len(tail) + 30}\r\n".encode()
        rcpt = f"RCPT TO:<{job['recipient']}>\r\n".encode()
        for _ in range(count):
            serial[0] += 1
            started = time.perf_counter()
            await protocol.command("mail", mail, 250)
            await protocol.command("rcpt", rcpt, 250)
            await protocol.command("data", b"DATA\r\n", 354)
            await protocol.command("dot", b"".join((head, b"%d" % serial[0], tail)), 250)
            totals.latencies.append(time.perf_counter() - started)
            totals.ok += 1
            sent += 1
        await protocol.command("quit", b"QUIT\r\n", 221)
    except SmtpError as exc:
        totals.fail(count - sent, str(exc))
    except (TimeoutError, OSError) as exc:
        totals.fail(count - sent, f"{type(exc).__name__}: {exc}")
    finally:
        if protocol.transport is not None:
            protocol.transport.close()


async def run(job: dict[str, Any]) -> dict[str, Any]:
    messages: int = job["messages"]
    per_session: int = job["per_session"]
    login, password = job["login"], job["password"]
    job["auth_line"] = b"AUTH PLAIN " + base64.b64encode(f"\0{login}\0{password}".encode()) + b"\r\n"
    job["message"] = make_body(job["sender"], job["recipient"], job.get("size", BODY_BYTES))
    # The list of session sizes: the last session may be shorter.
    sessions = [per_session] * (messages // per_session)
    if messages % per_session:
        sessions.append(messages % per_session)
    pending = iter(sessions)
    totals = Totals()
    serial = [job.get("serial_start", 0)]

    async def worker() -> None:
        for count in pending:
            await session(job, count, serial, totals)

    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(job["concurrency"])))
    elapsed = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    latencies = sorted(totals.latencies)
    auth = sorted(totals.auth_latencies)

    def pct(values: list[float], q: float) -> float | None:
        return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else None

    return {
        "ok": totals.ok,
        "failed": totals.failed,
        "failures": totals.failures,
        "sessions": len(sessions),
        "elapsed": elapsed,
        "msgs_per_s": totals.ok / elapsed if elapsed > 0 else 0.0,
        "client_cpu_s": cpu,
        "latency_ms_p50": pct(latencies, 0.5),
        "latency_ms_p95": pct(latencies, 0.95),
        "auth_ms_p50": pct(auth, 0.5),
    }


def main() -> int:
    job = json.loads(sys.stdin.read())
    job.setdefault("sender", "info@yourcompany.com")
    job.setdefault("recipient", "someone@example.org")
    try:  # optional: uvloop takes about 30% off the client's CPU per message
        import uvloop  # type: ignore[import-not-found,unused-ignore]

        use_uvloop = bool(job.get("uvloop", True))
    except ImportError:
        use_uvloop = False
    if use_uvloop:
        result = uvloop.run(run(job))
        result["loop"] = "uvloop"
    else:
        result = asyncio.run(run(job))
        result["loop"] = "asyncio"
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
