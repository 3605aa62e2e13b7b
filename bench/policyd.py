"""How fast ``smtpplus-milter policyd`` answers Postfix (issue 18; goals: >= 10,000 requests/s on one
core with ``store: memory``, >= 5,000/s with ``store: redis://``; <= 1 Redis command per message at
END-OF-MESSAGE and none at RCPT).

    .venv/bin/python bench/policyd.py [--quick] [--requests N] [--repeat R] [--json FILE]
    .venv/bin/python bench/policyd.py --profile 20000 [--store redis]   # cProfile, in process
    .venv/bin/python bench/policyd.py --micro 5000    # microseconds of each part of a request

Two daemons run side by side, each its own process started exactly as an operator would
(``python -m smtpplus_milter policyd -c CONFIG``) and pinned with ``taskset -c 0``: one with
``sending_limits.store: memory``, one with a private ``redis-server`` on loopback (lab/redis.py).
Both listen on a unix socket in a temporary directory. The load generator is this process, pinned
to core 1 (so is redis-server, which it starts: the daemon's core is its own).

The load replays what Postfix 3.7's smtpd sends: K connections kept open (K smtpd processes), and on
each, message after message, one ``protocol_state=RCPT`` request per recipient then one
``END-OF-MESSAGE`` request, with the 30 attributes Postfix 3.7 writes (TLS and client certificate
details included), a new queue id and ``instance`` per message, 20 users in turn. One request at a
time per connection, as Postfix does. The limits are far above what the run sends: every answer
must be ``DUNNO`` (anything else fails the run), so this is the cost of judging and counting, not
of refusing.

Rounds: {memory, redis} x K in {1, 8, 32} x {1, 10} recipients, interleaved (every shape of one
repeat back to back, the order rotated each repeat), so drift and other load on the machine hit
every side alike; the table shows the median of the repeats and the spread (min-max). CPU comes
from /proc/PID/stat (user+system, all threads): the daemon's and redis-server's seconds per 1,000
requests. Latency is the client's, send to complete reply.

Redis commands per message: after the rounds, ``MONITOR`` watches N messages of 10 recipients on one
connection: round trips (a client's commands) per stage, and the commands the Lua script runs inside.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # lab/ and tests/support/

import redis

from lab.redis import RedisServer
from smtpplus_milter.core.policy_protocol import MAX_REQUEST_BYTES, PolicyRequest
from tests.support.builders import write_config

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
USERS = tuple(f"app{n:02d}" for n in range(20))
DAEMON_CPU = "0"
CLIENT_CPU = 1
HUGE = 10**12  # every limit: nothing is refused
START_TIMEOUT = 20.0


# --- Postfix's requests ------------------------------------------------------------------------

# The attributes Postfix 3.7's smtpd sends (smtpd_check.c, check_policy_service), in its order,
# for an authenticated submission over TLS with a client certificate.
_REQUEST = (
    "request=smtpd_access_policy\n"
    "protocol_state={state}\n"
    "protocol_name=ESMTP\n"
    "helo_name=app-server-{user}.internal.example\n"
    "queue_id={queue_id}\n"
    "sender=orders@yourcompany.com\n"
    "recipient={recipient}\n"
    "recipient_count={count}\n"
    "client_address=10.20.30.{host}\n"
    "client_name=app-server-{user}.internal.example\n"
    "reverse_client_name=app-server-{user}.internal.example\n"
    "instance={instance}\n"
    "sasl_method=PLAIN\n"
    "sasl_username={user}\n"
    "sasl_sender=\n"
    "size={size}\n"
    "ccert_subject=app-server-{user}.internal.example\n"
    "ccert_issuer=Internal CA\n"
    "ccert_fingerprint=5D:0F:2B:6A:C1:3E:77:90:AB:CD:EF:01:23:45:67:89\n"
    "ccert_pubkey_fingerprint=A1:B2:C3:D4:E5:F6:07:18:29:3A:4B:5C:6D:7E:8F:90\n"
    "encryption_protocol=TLSv1.3\n"
    "encryption_cipher=TLS_AES_256_GCM_SHA384\n"
    "encryption_keysize=256\n"
    "etrn_domain=\n"
    "stress=\n"
    "client_port={port}\n"
    "policy_context=submission\n"
    "server_address=10.20.30.1\n"
    "server_port=587\n"
    "compatibility_level=3.6\n"
    "\n"
)
SIZE = 4321


def message(number: int, recipients: int, salt: str) -> list[bytes]:
    """Postfix's requests for one message: one per recipient at RCPT, then END-OF-MESSAGE."""
    user = USERS[number % len(USERS)]
    queue_id = f"4h{salt}{number:09X}"
    fields = {
        "user": user,
        "queue_id": queue_id,
        "instance": f"{salt}.{number:x}.1.0",
        "host": str(number % 250 + 2),
        "port": str(number % 50000 + 10000),
    }
    requests = [
        _REQUEST.format(
            state="RCPT", recipient=f"customer{number}-{n}@example.org", count="0", size=str(SIZE), **fields
        ).encode()
        for n in range(recipients)
    ]
    requests.append(
        _REQUEST.format(state="END-OF-MESSAGE", recipient="", count=str(recipients), size=str(SIZE), **fields).encode()
    )
    return requests


# --- the load ----------------------------------------------------------------------------------


class Connection:
    """One smtpd's policy connection: one request in flight; the latencies of its replies."""

    def __init__(self, path: str, messages: range, recipients: int, salt: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.messages = iter(messages)
        self.recipients = recipients
        self.salt = salt
        self.queue: list[bytes] = []
        self.buffer = b""
        self.sent = 0.0
        self.latencies: list[float] = []
        self.refused: list[bytes] = []

    def next(self) -> bool:
        """Send the next request; False when this connection has sent all its messages."""
        if not self.queue:
            number = next(self.messages, None)
            if number is None:
                return False
            self.queue = message(number, self.recipients, self.salt)
            self.queue.reverse()
        request = self.queue.pop()
        self.sent = time.perf_counter()
        self.sock.sendall(request)
        return True

    def readable(self) -> bool | None:
        """Read what came; True: a reply was complete and the next request sent, False: all done, None: partial."""
        chunk = self.sock.recv(4096)
        if not chunk:
            raise ConnectionError("the daemon closed a policy connection")
        self.buffer += chunk
        if not self.buffer.endswith(b"\n\n"):
            return None
        self.latencies.append(time.perf_counter() - self.sent)
        if self.buffer != b"action=DUNNO\n\n":
            self.refused.append(self.buffer)
        self.buffer = b""
        return self.next()


def drive(path: str, connections: int, messages: int, recipients: int, salt: str) -> dict[str, Any]:
    """*messages* messages over *connections* connections kept open; wall time, latencies, refusals."""
    shares = [range(n, messages, connections) for n in range(connections)]
    clients = [Connection(path, share, recipients, f"{salt}{n:02X}") for n, share in enumerate(shares)]
    selector = selectors.DefaultSelector()
    for client in clients:
        selector.register(client.sock, selectors.EVENT_READ, client)
    started = time.perf_counter()
    active = sum(client.next() for client in clients)
    while active:
        for key, _ in selector.select():
            client = key.data
            if client.readable() is False:
                selector.unregister(client.sock)
                active -= 1
    wall = time.perf_counter() - started
    for client in clients:
        client.sock.close()
    selector.close()
    latencies = sorted(latency for client in clients for latency in client.latencies)
    return {
        "wall_s": wall,
        "requests": len(latencies),
        "messages": messages,
        "refused": [reply.decode(errors="replace") for client in clients for reply in client.refused][:3],
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


# --- the processes -----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process *pid*, all its threads (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def write_daemon_config(directory: Path, store: str) -> tuple[Path, str]:
    directory.mkdir(parents=True, exist_ok=True)
    path = str(directory / "policy.sock")
    settings = {
        "policy": {"listen": f"unix:{path}", "refund_listen": None, "max_connections": 200},
        "sending_limits": {
            "messages_per_hour": HUGE,
            "recipients_per_message": 1000,
            "recipients_per_day": HUGE,
            "bytes_per_day": HUGE,
            "store": store,
        },
    }
    users = {user: {"authorized_domains": "yourcompany.com"} for user in USERS}
    return write_config(directory, settings=settings, users=users), path


class Daemon:
    """``smtpplus-milter policyd -c CONFIG`` pinned to core 0; ready when its socket accepts."""

    def __init__(self, directory: Path, store: str) -> None:
        self.config, self.path = write_daemon_config(directory, store)
        self.log = directory / "policyd.log"
        command = ["taskset", "-c", DAEMON_CPU, sys.executable, "-m", "smtpplus_milter", "policyd"]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*command, "-c", str(self.config)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"policyd did not listen on {self.path}:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.connect(self.path)
                return True
        except OSError:
            return False

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


# --- Redis commands per stage ------------------------------------------------------------------


def redis_per_stage(path: str, url: str, messages: int, recipients: int) -> dict[str, Any]:
    """Redis commands sent while the daemon answered the RCPT requests, and the END-OF-MESSAGE one.

    Read with ``MONITOR``, which tells a client's command (a network round trip) from one the Lua
    script runs inside the server (``INFO commandstats`` counts both alike); ``ECHO`` marks the stages.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)

    def ask(request: bytes) -> None:
        sock.sendall(request)
        reply = b""
        while not reply.endswith(b"\n\n"):
            reply += sock.recv(4096)
        assert reply == b"action=DUNNO\n\n", reply

    for request in message(0, recipients, "W"):  # warm: the script loaded, the connection pooled
        ask(request)
    marker = redis.Redis.from_url(url)
    seen: list[tuple[str, str]] = []
    ready = threading.Event()

    def watch() -> None:
        with redis.Redis.from_url(url).monitor() as monitor:  # type: ignore[no-untyped-call]
            ready.set()
            for command in monitor.listen():
                seen.append((command["client_type"], command["command"]))
                if command["command"] == "ECHO smtpplus-bench-end":
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    ready.wait(5)
    time.sleep(0.2)
    for number in range(1, messages + 1):
        *rcpts, eom = message(number, recipients, "S")
        marker.echo("smtpplus-bench-rcpt")
        for request in rcpts:
            ask(request)
        marker.echo("smtpplus-bench-eom")
        ask(eom)
    marker.echo("smtpplus-bench-end")
    watcher.join(30)
    marker.close()
    sock.close()
    stages: dict[str, dict[str, dict[str, int]]] = {
        stage: {"round_trips": {}, "inside_script": {}} for stage in ("rcpt", "end_of_message")
    }
    stage = ""
    for client_type, command in seen:
        if command.startswith("ECHO smtpplus-bench-"):
            stage = {"rcpt": "rcpt", "eom": "end_of_message"}.get(command.rpartition("-")[2], "")
            continue
        if stage:
            kind = "inside_script" if client_type == "lua" else "round_trips"
            name = command.split(" ", 1)[0].lower()
            stages[stage][kind][name] = stages[stage][kind].get(name, 0) + 1
    return {
        stage: {
            kind: {"per_message": sum(found.values()) / messages, "commands": found} for kind, found in kinds.items()
        }
        for stage, kinds in stages.items()
    }


# --- profile -----------------------------------------------------------------------------------


def profile(requests: int, recipients: int, store_name: str, top: int) -> int:
    """cProfile of the daemon's connection thread, in this process, one connection (K = 1)."""
    from smtpplus_milter.config import load_config
    from smtpplus_milter.services.policyd import PolicyService, bind

    with tempfile.TemporaryDirectory(prefix="smtpplus-bench-policyd-") as tmp:
        server = RedisServer(Path(tmp) / "redis") if store_name == "redis" else None
        if server is not None:
            server.start()
        try:
            config_path, path = write_daemon_config(Path(tmp) / "d", server.url if server else "memory")
            config = load_config(config_path)
            service = PolicyService(config, listeners=[bind(config.policy.listen)], emit=lambda *_: None)
            profiles: list[cProfile.Profile] = []
            original: Callable[..., None] = PolicyService._serve_connection

            def profiled(self: PolicyService, connection: socket.socket) -> None:
                profiler = cProfile.Profile()
                profiles.append(profiler)
                profiler.runcall(original, self, connection)

            PolicyService._serve_connection = profiled  # type: ignore[method-assign]
            threading.Thread(target=service.serve, daemon=True).start()
            while not os.path.exists(path):
                time.sleep(0.01)
            result = drive(path, 1, requests // (recipients + 1), recipients, "P")
            service.stop()
            time.sleep(0.2)
            service.close()
        finally:
            if server is not None:
                server.stop()
    out = io.StringIO()
    stats = pstats.Stats(*profiles, stream=out)
    print(f"{result['requests']} requests in {result['wall_s']:.2f} s under cProfile (store {store_name})")
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    print(out.getvalue())
    return 0


# --- where a request's time goes, without sockets ---------------------------------------------

# A sketch of a faster decoder for the report (not the product's code): a request that arrives
# whole in one chunk, as Postfix writes it, is checked by ONE regular expression (the same rules:
# names of 1-64 printable ASCII characters without "=", no NUL, at most 500 lines), decoded once
# and split, instead of one partition, fullmatch and two decodes per line.
_BLOCK = re.compile(rb"(?:[!-<>-~]{1,64}=[^\n\0]*\n){1,500}\n")
_DIGITS = re.compile(r"[0-9]{1,20}")


def block_decode(chunk: bytes) -> PolicyRequest:
    if len(chunk) > MAX_REQUEST_BYTES or not _BLOCK.fullmatch(chunk):
        raise ValueError("not one well-formed request: take the line-by-line path for the error")
    lines = chunk[:-2].decode("utf-8", "surrogateescape").split("\n")
    attributes = dict(line.split("=", 1) for line in lines)
    for name in ("size", "recipient_count"):
        value = attributes.get(name)
        if value and not _DIGITS.fullmatch(value):
            raise ValueError(f"{name} is not a number")
    repeated = frozenset() if len(attributes) == len(lines) else frozenset(_repeats(lines))
    return PolicyRequest(MappingProxyType(attributes), repeated)


def _repeats(lines: list[str]) -> set[str]:
    names = [line.partition("=")[0] for line in lines]
    return {name for name in names if names.count(name) > 1}


def micro(count: int) -> int:
    """Microseconds per request of each part of the daemon's work, in this process (one core)."""
    from smtpplus_milter.config import load_config
    from smtpplus_milter.core.policy import Conversation
    from smtpplus_milter.core.policy_protocol import PolicyDecoder, encode_reply
    from smtpplus_milter.infra.limit_store import MemoryLimitStore
    from smtpplus_milter.services.policyd import PolicyService

    rcpt, eom = message(1, 1, "M")
    decoder = PolicyDecoder()
    assert block_decode(rcpt) == decoder.feed(rcpt)[0] and block_decode(eom) == decoder.feed(eom)[0]

    def best(function: Callable[[], object], number: int = count) -> float:
        return min(timeit.repeat(function, number=number, repeat=5)) / number * 1e6

    print(
        f"PolicyDecoder.feed, one request of {len(rcpt)} bytes, 30 attributes: "
        f"{best(lambda: decoder.feed(rcpt)):.1f} us"
    )
    print(
        f"the same, one regular expression for the whole request (block_decode): "
        f"{best(lambda: block_decode(rcpt)):.1f} us"
    )
    print(f"encode_reply('DUNNO'): {best(lambda: encode_reply('DUNNO')):.1f} us")
    with tempfile.TemporaryDirectory(prefix="smtpplus-bench-policyd-") as tmp:
        config = load_config(write_daemon_config(Path(tmp), "memory")[0])
        service = PolicyService(config, listeners=[], store=MemoryLimitStore(), emit=lambda *_: None)
        messages = iter([[decoder.feed(raw)[0] for raw in message(n, 1, "N")] for n in range(count * 5)])

        def answer() -> None:
            conversation = Conversation(service.judgements)
            for request in next(messages):
                service.answer(conversation, request)

        print(f"PolicyService.answer, RCPT + END-OF-MESSAGE (memory store), per request: {best(answer) / 2:.1f} us")
        requests = service.policy_metrics.requests
        seconds = service.policy_metrics.seconds

        def metrics() -> None:
            requests.labels(stage="rcpt", result="accepted").inc()
            seconds.labels(stage="rcpt").observe(0.0001)

        child, histogram = requests.labels(stage="rcpt", result="accepted"), seconds.labels(stage="rcpt")

        def cached() -> None:
            child.inc()
            histogram.observe(0.0001)

        print(
            f"  of which the two metrics (labels() each time): {best(metrics):.1f} us; "
            f"children kept: {best(cached):.1f} us"
        )
        service.close()
    return 0


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer, smaller rounds (< 60 s)")
    parser.add_argument("--requests", type=int, default=None, help="requests per round (default 30000, quick 3000)")
    parser.add_argument("--repeat", type=int, default=None, help="repeats of every round (default 3, quick 1)")
    parser.add_argument("--concurrency", default="1,8,32", help="connections (smtpd processes), comma-separated")
    parser.add_argument("--recipients", default="1,10", help="recipients per message, comma-separated")
    parser.add_argument("--stores", default="memory,redis", help="memory, redis or both")
    parser.add_argument("--stage-messages", type=int, default=None, help="messages for the Redis count (200, quick 20)")
    parser.add_argument("--json", type=Path, help="also write every round's figures to this file")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="only profile N requests in process")
    parser.add_argument("--micro", type=int, default=0, metavar="N", help="only time each part of a request, N times")
    parser.add_argument("--store", default="memory", choices=("memory", "redis"), help="the store --profile uses")
    parser.add_argument(
        "--paced", default="", metavar="MS,...", help="only the daemon's CPU per request with these pauses (ms)"
    )
    args = parser.parse_args(argv)
    args.requests = args.requests or (3000 if args.quick else 30000)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.stage_messages = args.stage_messages or (20 if args.quick else 200)
    return args


def spread(values: list[float], spec: str) -> str:
    median = statistics.median(values)
    if len(values) == 1:
        return format(median, spec)
    return f"{median:{spec}} ({min(values):{spec}}-{max(values):{spec}})"


def paced(gaps_ms: list[float], connections: int = 10, messages: int = 300) -> int:
    """The daemon's CPU per request when requests come slowly (Postfix's pace, not a flood):
    *connections* threads, each one message (RCPT + END-OF-MESSAGE) then a pause of each gap."""
    os.sched_setaffinity(0, {CLIENT_CPU})
    with tempfile.TemporaryDirectory(prefix="smtpplus-bench-policyd-") as tmp:
        daemon = Daemon(Path(tmp) / "memory", "memory")
        try:
            drive(daemon.path, 8, 200, 1, "WARM")
            for gap in gaps_ms:
                answered = [0] * connections

                def one(k: int, gap: float = gap, answered: list[int] = answered) -> None:
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                        client.connect(daemon.path)
                        for n in range(messages):
                            for raw in message(k * 1_000_000 + n, 1, f"P{gap:g}"):
                                client.sendall(raw)
                                client.recv(4096)
                                answered[k] += 1
                            time.sleep(gap / 1000)

                cpu = cpu_seconds(daemon.pid)
                threads = [threading.Thread(target=one, args=(k,)) for k in range(connections)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                used = cpu_seconds(daemon.pid) - cpu
                print(
                    f"{connections} connections, a message then {gap:g} ms: daemon CPU "
                    f"{used / sum(answered) * 1e6:.0f} us per request ({sum(answered)} requests)"
                )
        finally:
            daemon.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.micro:
        return micro(args.micro)
    if args.paced:
        return paced([float(gap) for gap in args.paced.split(",")])
    if args.profile:
        return profile(args.profile, int(args.recipients.split(",")[0]), args.store, 25)
    os.sched_setaffinity(0, {CLIENT_CPU})  # the load generator, and the redis-server it starts
    stores = args.stores.split(",")
    shapes = [
        (store, int(k), int(r))
        for k in args.concurrency.split(",")
        for r in args.recipients.split(",")
        for store in stores
    ]
    rounds: dict[tuple[str, int, int], list[dict[str, Any]]] = {shape: [] for shape in shapes}
    with tempfile.TemporaryDirectory(prefix="smtpplus-bench-policyd-") as tmp:
        server = RedisServer(Path(tmp) / "redis") if "redis" in stores else None
        daemons: dict[str, Daemon] = {}
        try:
            if server is not None:
                server.start()
            for store in stores:
                url = server.url if store == "redis" and server is not None else "memory"
                daemons[store] = Daemon(Path(tmp) / store, url)
            for daemon in daemons.values():  # warm: imports done, threads made, the script loaded
                drive(daemon.path, 8, 200, 1, "WARM")
            redis_pid = server._process.pid if server is not None and server._process is not None else None
            for repeat in range(args.repeat):
                order = shapes[repeat % len(shapes) :] + shapes[: repeat % len(shapes)]
                for store, k, r in order:
                    daemon = daemons[store]
                    messages = max(k, args.requests // (r + 1))
                    cpu = cpu_seconds(daemon.pid)
                    redis_cpu = cpu_seconds(redis_pid) if store == "redis" and redis_pid else 0.0
                    result = drive(daemon.path, k, messages, r, f"{store[0]}{repeat}{k}{r}")
                    result["daemon_cpu_s"] = cpu_seconds(daemon.pid) - cpu
                    if store == "redis" and redis_pid:
                        result["redis_cpu_s"] = cpu_seconds(redis_pid) - redis_cpu
                    if result["refused"]:
                        print(f"FAILED: {store} K={k} r={r}: refused {result['refused']}", file=sys.stderr)
                        return 1
                    rounds[(store, k, r)].append(result)
                    print(
                        f"  repeat {repeat + 1} {store:6} K={k:2} rcpt={r:2}: "
                        f"{result['requests'] / result['wall_s']:,.0f} req/s",
                        file=sys.stderr,
                    )
            stage = None
            if server is not None and "redis" in daemons:
                stage = redis_per_stage(daemons["redis"].path, server.url, args.stage_messages, 10)
        finally:
            for daemon in daemons.values():
                daemon.stop()
            if server is not None:
                server.stop()
    print(
        f"policyd on core {DAEMON_CPU}, load generator and redis-server on core {CLIENT_CPU}; "
        f"{args.requests} requests per round, median of {args.repeat} (min-max)\n"
    )
    print(
        "| store | K | rcpt/msg | requests/s | messages/s | daemon CPU s / 1,000 req | redis CPU s / 1,000 req "
        "| p50 ms | p99 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for store, k, r in sorted(shapes, key=lambda s: (stores.index(s[0]), s[1], s[2])):
        done = rounds[(store, k, r)]
        rps = [d["requests"] / d["wall_s"] for d in done]
        mps = [d["messages"] / d["wall_s"] for d in done]
        per_k = [d["daemon_cpu_s"] * 1000 / d["requests"] for d in done]
        redis_k = spread([d["redis_cpu_s"] * 1000 / d["requests"] for d in done], ".3f") if store == "redis" else "-"
        print(
            f"| {store} | {k} | {r} | {spread(rps, ',.0f')} | {spread(mps, ',.0f')} | {spread(per_k, '.3f')} "
            f"| {redis_k} | {spread([d['p50_ms'] for d in done], '.2f')} "
            f"| {spread([d['p99_ms'] for d in done], '.2f')} |"
        )
    if stage is not None:
        print(f"\nRedis commands per message ({args.stage_messages} messages of 10 recipients, one connection):")
        for name, kinds in stage.items():
            trips, inside = kinds["round_trips"], kinds["inside_script"]
            print(
                f"  {name}: {trips['per_message']:.2f} round trips per message {trips['commands']}; "
                f"inside the script: {inside['per_message']:.2f} {inside['commands']}"
            )
    if args.json:
        args.json.write_text(
            json.dumps({"rounds": {f"{s}/{k}/{r}": v for (s, k, r), v in rounds.items()}, "redis": stage}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
