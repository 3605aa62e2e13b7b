"""How many RFC 8058 one-click POSTs per second ``smtpplus-milter web`` answers (issue 16; goal ≥ 500/s).

A real ``web`` process (the console entry point, waitress, SQLite store in a temporary directory
holding --messages tracked messages) and --clients threads, each with one keep-alive HTTP/1.1
connection (http.client), POSTing ``List-Unsubscribe=One-Click`` to a different recipient's URL
each time, so every request is a new unsubscribe written to the store. Prints the rate and the
p50/p99/max latency of a request (sent to answer read). Client and server share the machine.

    .venv/bin/python bench/web.py --requests 6000 --clients 16
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's lab and tests/support

from lab.harness import free_port
from lab.milter_process import WebProcess
from smtpplus_milter.infra.store import open_store
from tests.support.builders import message_record
from tests.support.web import LIST, ONE_CLICK, USER, token, web_config

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def client(port: int, paths: list[str]) -> list[float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies = []
    try:
        for path in paths:
            started = time.perf_counter()
            connection.request("POST", path, body=ONE_CLICK, headers=FORM)
            response = connection.getresponse()
            response.read()
            latencies.append(time.perf_counter() - started)
            if response.status != 200:
                raise RuntimeError(f"{path}: {response.status}")
    finally:
        connection.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--messages", type=int, default=2000, help="tracked messages in the store beforehand")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-web-") as name:
        directory = Path(name)
        port = free_port()
        config = web_config(directory, port)
        recipients = [f"r{number}@example.org" for number in range(args.requests)]
        store = open_store(f"sqlite:///{directory}/t.db")
        store.record_messages(
            [
                message_record(
                    f"Q{number:010d}", user=USER, list=LIST, recipients=(recipients[number % len(recipients)],)
                )
                for number in range(args.messages)
            ]
        )
        store.close()
        paths = [f"/u/{token(recipient)}" for recipient in recipients]
        shares = [paths[index :: args.clients] for index in range(args.clients)]
        with WebProcess(config, port, directory / "web.log"):
            client(port, ["/u/" + token("warm-up@example.org")])
            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
                latencies = [value for part in pool.map(lambda share: client(port, share), shares) for value in part]
            elapsed = time.perf_counter() - started
        latencies.sort()
        p50 = statistics.median(latencies)
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        print(
            f"web one-click POSTs: {len(latencies)} new unsubscribes, {args.clients} keep-alive clients, "
            f"SQLite store with {args.messages} messages: {len(latencies) / elapsed:.0f}/s; latency "
            f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
        )


if __name__ == "__main__":
    main()
