"""Urgent mail under a backlog: does priority routing get priority-1 mail out first?

One run, two set-ups, each a real private Postfix + Dovecot + smtpplus-milter (lab.Stack):

* routing ON: the priority transports as ``postfix-config`` writes them; the default and low
  next hops are slow sinks, the high next hop a normal one;
* routing OFF: no milter_header_checks, so everything leaves through the default transport to
  the same slow sink.

In each, a backlog of normal and low messages is submitted first, then priority-1 messages
(user ceo-outlook, priority 1). The latency of a priority-1 message is from the client's 250
after DATA to the moment its next hop answered 250 (the sink's timestamp).

    python bench/urgent_backlog.py [--backlog 2000] [--urgent 20] [--slow 1.0]
"""

from __future__ import annotations

import argparse
import smtplib
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# The lab is a folder of this repository, not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab.stack import Stack, client_tls, make_message


@dataclass
class Outcome:
    label: str
    latencies: list[float]
    backlog_seconds: float

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@contextmanager
def _stack(routing: bool, slow: float) -> Iterator[Stack]:
    # in_flow_delay stays 0 (the harness default) so the backlog is queued as fast as it comes.
    with Stack(priority_routing="sinks" if routing else None, slow_seconds=slow) as stack:
        yield stack


def _submit_many(stack: Stack, count: int, sessions: int = 8) -> None:
    """The backlog: half normal (shop-frontend), half low (newsletter), many messages per session."""
    assert stack.postfix is not None
    port = stack.postfix.submission_port
    failures: list[str] = []

    def worker(offset: int) -> None:
        login, sender = (
            ("newsletter", "news@news.yourcompany.com") if offset % 2 else ("shop-frontend", "info@yourcompany.com")
        )
        body = "backlog line\r\n" * 200
        with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
            client.starttls(context=client_tls())
            client.login(login, stack.passwords[login])
            for index in range(offset, count, sessions):
                message = make_message(from_=sender, subject=f"backlog {index}", body=body)
                try:
                    client.sendmail(sender, ["someone@example.org"], message)
                except smtplib.SMTPException as exc:
                    failures.append(f"{login}: {exc}")

    threads = [threading.Thread(target=worker, args=(offset,)) for offset in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"{len(failures)} backlog submissions failed, e.g. {failures[0]}")


def run(routing: bool, backlog: int, urgent: int, slow: float, timeout: float) -> Outcome:
    label = "routing on " if routing else "routing off"
    with _stack(routing, slow) as stack:
        started = time.monotonic()
        _submit_many(stack, backlog)
        backlog_seconds = time.monotonic() - started
        submitted: dict[str, float] = {}
        for index in range(urgent):
            subject = f"urgent {index}"
            result = stack.send(
                make_message(from_="ceo@yourcompany.com", subject=subject),
                login="ceo-outlook",
                mail_from="ceo@yourcompany.com",
            )
            if not result.accepted:
                raise SystemExit(f"urgent submission failed: {result}")
            submitted[subject] = time.time()
        sinks = [sink for sink in (stack.sink, stack.high_sink, stack.low_sink) if sink is not None]
        arrived: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while len(arrived) < urgent:
            if time.monotonic() > deadline:
                raise SystemExit(f"{label}: only {len(arrived)} of {urgent} urgent messages arrived in {timeout}s")
            for sink in sinks:
                for item in sink.messages:
                    for subject in submitted:
                        if subject not in arrived and f"Subject: {subject}\r\n".encode() in item.data:
                            arrived[subject] = item.received_at
            time.sleep(0.1)
        latencies = [arrived[subject] - submitted[subject] for subject in submitted]
        return Outcome(label, latencies, backlog_seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backlog", type=int, default=2000, help="normal+low messages queued first (default 2000)")
    parser.add_argument("--urgent", type=int, default=20, help="priority-1 messages sent after it (default 20)")
    parser.add_argument("--slow", type=float, default=1.0, help="seconds the slow sinks take per message (1.0)")
    parser.add_argument("--timeout", type=float, default=900, help="give up waiting after this many seconds")
    args = parser.parse_args()
    outcomes = [run(routing, args.backlog, args.urgent, args.slow, args.timeout) for routing in (True, False)]
    print(f"backlog {args.backlog} (normal+low), {args.urgent} priority-1 messages, slow next hop {args.slow}s/msg")
    print(f"{'set-up':<12} {'backlog submit s':>16} {'p50 s':>8} {'p95 s':>8} {'max s':>8}")
    for outcome in outcomes:
        print(
            f"{outcome.label:<12} {outcome.backlog_seconds:>16.1f} {statistics.median(outcome.latencies):>8.3f} "
            f"{outcome.percentile(0.95):>8.3f} {max(outcome.latencies):>8.3f}"
        )
    on, off = outcomes
    ratio = on.percentile(0.95) / off.percentile(0.95)
    print(f"p95 ratio routing on / off: {ratio:.5f} (goal <= 0.1, and p95 with routing < 5 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
