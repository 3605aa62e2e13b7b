"""Urgent mail under a backlog: routing, and preemption, side by side in one run.

Each set-up is a real private Postfix + Dovecot + smtpplus-milter (lab.Stack). The latency of a
priority-1 message runs from the client's 250 after DATA to the moment its next hop answered 250
(the sink's timestamp).

``--compare routing`` (the first question: do the priority transports get urgent mail out first?)

* routing ON: the priority transports as ``postfix-config`` writes them; the default and low
  next hops are slow sinks, the high next hop a normal one;
* routing OFF: no milter_header_checks, so everything leaves through the default transport.

``--compare preempt`` (issue 17: does pausing bulk help where routing cannot?), each scenario with
``smtpplus-milter preempt`` on (``pause: [low]``) and off, every queue's transport delivering to ONE
slow relay host:

* ``backlog``: ``qmgr_message_active_limit = 200`` and a low backlog 10 times that: new mail waits
  in Postfix's incoming queue until the queue manager has room, behind the backlog;
* ``relayhost``: the default active limit, and a relay host that serves 2 connections at a time
  (the low transport's own concurrency), which the backlog's cached connections keep.

Each scenario also runs once without any backlog (``floor``): what the urgent messages cost on that
set-up by themselves (20 messages at 0.2 s on 2 connections are 2 s of the relay host's time).

Bulk throughput is backlog messages per second from the first submission to the last bulk arrival.

    python bench/urgent_backlog.py --compare preempt [--backlog 2000] [--urgent 20] [--slow 0.05]
    python bench/urgent_backlog.py --compare routing [--backlog 2000] [--urgent 20] [--slow 1.0]
"""

from __future__ import annotations

import argparse
import smtplib
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The lab is a folder of this repository, not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab.stack import Stack, client_tls, make_message

BULK = ("newsletter", "news@news.yourcompany.com")  # priority 5: the low queue
SHOP = ("shop-frontend", "info@yourcompany.com")  # priority 3: normal


@dataclass
class Outcome:
    label: str
    latencies: list[float]
    backlog_seconds: float
    bulk_per_second: float | None = None

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _submit_many(stack: Stack, count: int, *, low_only: bool, sessions: int = 8) -> None:
    """The backlog: low messages (newsletter), or half normal and half low; many per session."""
    assert stack.postfix is not None
    port = stack.postfix.submission_port
    failures: list[str] = []

    def worker(offset: int) -> None:
        login, sender = BULK if low_only or offset % 2 else SHOP
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


def _subject(data: bytes) -> str:
    return data.split(b"\r\nSubject: ", 1)[1].split(b"\r\n", 1)[0].decode()


def _measure(stack: Stack, label: str, backlog: int, urgent: int, timeout: float, *, low_only: bool) -> Outcome:
    started = time.time()
    _submit_many(stack, backlog, low_only=low_only)
    backlog_seconds = time.time() - started
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
                subject = _subject(item.data)
                if subject in submitted and subject not in arrived:
                    arrived[subject] = item.received_at
        time.sleep(0.1)
    latencies = [arrived[subject] - submitted[subject] for subject in submitted]
    return Outcome(label, latencies, backlog_seconds)


def _bulk_rate(stack: Stack, backlog: int, started: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        bulk = [m for m in stack.sink.messages if _subject(m.data).startswith("backlog")]
        if len(bulk) >= backlog:
            return backlog / (max(m.received_at for m in bulk) - started)
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(bulk)} of {backlog} backlog messages arrived in {timeout}s")
        time.sleep(0.5)


def run_routing(routing: bool, backlog: int, urgent: int, slow: float, timeout: float) -> Outcome:
    label = "routing on " if routing else "routing off"
    # in_flow_delay stays 0 (the harness default) so the backlog is queued as fast as it comes.
    with Stack(priority_routing="sinks" if routing else None, slow_seconds=slow) as stack:
        return _measure(stack, label, backlog, urgent, timeout, low_only=False)


SCENARIOS: dict[str, dict[str, Any]] = {
    "backlog": {"postfix_main_cf": {"qmgr_message_active_limit": "200"}},
    "relayhost": {"sink_sessions": 2},
}


def run_preempt(scenario: str, preempt: bool, backlog: int, urgent: int, slow: float, timeout: float) -> Outcome:
    label = f"{scenario:<9} {'on' if preempt else 'off'}" if backlog else f"{scenario:<9} floor"
    options = dict(SCENARIOS[scenario])
    if preempt:
        options["preempt"] = {"resume_after_seconds": 5}
    with Stack(priority_routing="relayhost", slow_seconds=slow, **options) as stack:
        started = time.time()
        outcome = _measure(stack, label, backlog, urgent, timeout, low_only=True)
        if backlog:
            outcome.bulk_per_second = _bulk_rate(stack, backlog, started, timeout)
        return outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", choices=("routing", "preempt"), default="routing")
    parser.add_argument("--backlog", type=int, default=2000, help="backlog messages queued first (default 2000)")
    parser.add_argument("--urgent", type=int, default=20, help="priority-1 messages sent after it (default 20)")
    parser.add_argument("--slow", type=float, default=None, help="seconds the slow next hop takes per message")
    parser.add_argument("--scenarios", default="backlog,relayhost", help="preempt: which scenarios (comma list)")
    parser.add_argument("--timeout", type=float, default=900, help="give up waiting after this many seconds")
    args = parser.parse_args()
    if args.compare == "routing":
        slow = 1.0 if args.slow is None else args.slow
        outcomes = [run_routing(routing, args.backlog, args.urgent, slow, args.timeout) for routing in (True, False)]
    else:
        slow = 0.05 if args.slow is None else args.slow
        outcomes = []
        floors = []
        for scenario in args.scenarios.split(","):
            for preempt in (True, False):
                outcomes.append(run_preempt(scenario, preempt, args.backlog, args.urgent, slow, args.timeout))
            # The floor: the same urgent messages on the same set-up without any backlog.
            floors.append(run_preempt(scenario, False, 0, args.urgent, slow, args.timeout))
    print(f"backlog {args.backlog}, {args.urgent} priority-1 messages, slow next hop {slow}s/msg")
    print(f"{'set-up':<14} {'backlog submit s':>16} {'p50 s':>8} {'p95 s':>8} {'max s':>8} {'bulk msg/s':>10}")
    for outcome in outcomes:
        rate = f"{outcome.bulk_per_second:>10.1f}" if outcome.bulk_per_second is not None else f"{'-':>10}"
        print(
            f"{outcome.label:<14} {outcome.backlog_seconds:>16.1f} {statistics.median(outcome.latencies):>8.3f} "
            f"{outcome.percentile(0.95):>8.3f} {max(outcome.latencies):>8.3f} {rate}"
        )
    if args.compare == "preempt":
        for floor in floors:
            print(
                f"{floor.label:<14} {'-':>16} {statistics.median(floor.latencies):>8.3f} "
                f"{floor.percentile(0.95):>8.3f} {max(floor.latencies):>8.3f} {'-':>10}"
            )
    for on, off in zip(outcomes[::2], outcomes[1::2], strict=True):
        ratio = on.percentile(0.95) / off.percentile(0.95)
        line = f"{on.label.split()[0]}: p95 on/off {ratio:.5f}"
        if on.bulk_per_second is not None and off.bulk_per_second is not None:
            line += f", bulk throughput on/off {on.bulk_per_second / off.bulk_per_second:.3f}"
        print(line)
    if args.compare == "routing":
        print("goal: p95 ratio routing on/off <= 0.1, and p95 with routing < 5 s")
    else:
        print("goal: urgent p95 with preemption <= 2 s and <= 1/20 of without; bulk throughput >= 0.95x of without")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
