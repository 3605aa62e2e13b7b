"""Per-recipient copies (issue 15): how fast the filter makes them, and what they cost the relay.

Two parts in one run:

1. **The filter alone**: a real ``smtpplus-milter fanout`` process, its re-injection target an
   in-process SMTP sink that answers like Postfix's smtpd (``queued as ID``), and ``--connections``
   LMTP connections delivering tagged messages one recipient at a time, as Postfix's LMTP client
   does: copies per second (goal ≥ 300).
2. **Through the lab's real Postfix**: one message to ``--recipients`` BCC recipients (user
   ceo-outlook, list staff, priority 1), ``--rounds`` times, in two stacks side by side: the list
   with ``bcc_in_to`` (split by the filter, each copy re-injected) and without it (Postfix
   delivers the same recipients in one transaction). Seconds from the client's 250 to the last
   recipient at the sink, and the relay's CPU per recipient: the whole machine's busy CPU time
   (/proc/stat) during the round minus this process's own (the sinks and the client run here).

    .venv/bin/python bench/fanout.py --copies 3000 --connections 8 --recipients 100 --rounds 3
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import resource
import smtplib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's lab and tests/support

from lab.stack import Stack, make_message
from tests.support.fanout import Filter, message
from tests.support.reinject_sink import ReinjectSink

SENDER = "ceo@yourcompany.com"
TICKS = os.sysconf("SC_CLK_TCK")


def _busy_seconds() -> float:
    """CPU time the whole machine spent busy so far (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / TICKS


def _own_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _process_seconds(pid: int) -> float:
    """CPU time of one process so far (user + system)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def filter_alone(copies: int, connections: int) -> float:
    with tempfile.TemporaryDirectory(prefix="smtpplus-bench-fanout-") as tmp, ReinjectSink() as sink:
        running = Filter(Path(tmp), sink)
        with running.process:
            jobs = [(f"4jdfvM0wYyzJ{n // 100:06d}", f"r{n}@example.org") for n in range(copies)]

            def connection(share: list[tuple[str, str]]) -> int:
                done = 0
                with smtplib.LMTP(str(running.socket), timeout=60) as client:
                    client.ehlo()
                    for queue_id, recipient in share:
                        client.mail(SENDER)
                        client.rcpt(recipient)
                        code, text = client.data(message(queue_id))
                        assert code == 250 and b"queued as" in text, (code, text)
                        done += 1
                return done

            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(connections) as pool:
                made = sum(pool.map(connection, [jobs[n::connections] for n in range(connections)]))
            seconds = time.perf_counter() - started
        assert made == copies and len(sink.messages) == copies, (made, len(sink.messages))
    return copies / seconds


def through_postfix(split: bool, recipients: int, rounds: int) -> tuple[list[float], list[float], list[float]]:
    """(seconds per round, relay CPU seconds per recipient, the filter's share of it) per round."""
    settings = {"lists": {"staff": {"bcc_in_to": split}}}
    addresses = [f"r{n:03d}@example.net" for n in range(recipients)]
    times: list[float] = []
    cpu: list[float] = []
    filter_cpu: list[float] = []
    with Stack(settings=settings, priority_routing="sinks", fanout=split) as stack:
        assert stack.high_sink is not None
        for number in range(rounds):
            time.sleep(1.0)  # let the previous round's processes settle
            busy, own = _busy_seconds(), _own_seconds()
            filtered = _process_seconds(stack.fanout.pid) if stack.fanout else 0.0
            body = make_message(from_=f"CEO <{SENDER}>", to="undisclosed-recipients:;", subject=f"round {number}")
            started = time.time()
            assert stack.send(body, login="ceo-outlook", mail_from=SENDER, rcpt_to=addresses).accepted
            # Unsplit, Postfix delivers 50 recipients per transaction (smtp_destination_recipient_limit):
            # count recipients, not messages.
            wanted, deadline = recipients * (number + 1), time.monotonic() + 300
            while sum(len(m.rcpt_tos) for m in stack.high_sink.messages) < wanted:
                assert time.monotonic() < deadline, "the recipients did not all arrive within 300 s"
                time.sleep(0.01)
            times.append(max(m.received_at for m in stack.high_sink.messages) - started)
            cpu.append(((_busy_seconds() - busy) - (_own_seconds() - own)) / recipients)
            filter_cpu.append(((_process_seconds(stack.fanout.pid) - filtered) if stack.fanout else 0.0) / recipients)
    return times, cpu, filter_cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=3000, help="copies the filter alone makes")
    parser.add_argument("--connections", type=int, default=8, help="LMTP connections to the filter")
    parser.add_argument("--recipients", type=int, default=100, help="BCC recipients of the message via Postfix")
    parser.add_argument("--rounds", type=int, default=3, help="messages per set-up via Postfix")
    args = parser.parse_args()
    rate = filter_alone(args.copies, args.connections)
    print(f"filter alone: {args.copies} copies over {args.connections} LMTP connections: {rate:,.0f} copies/s")
    split_times, split_cpu, filter_cpu = through_postfix(True, args.recipients, args.rounds)
    plain_times, plain_cpu, _ = through_postfix(False, args.recipients, args.rounds)
    median = statistics.median
    print(f"via Postfix, one message to {args.recipients} BCC recipients, median of {args.rounds}:")
    print(
        f"  split (bcc_in_to):   {median(split_times):6.2f} s to the last copy, "
        f"relay CPU {median(split_cpu) * 1000:6.2f} ms per recipient "
        f"(of which the filter {median(filter_cpu) * 1000:.2f} ms)"
    )
    print(
        f"  unsplit:             {median(plain_times):6.2f} s to the last recipient, "
        f"relay CPU {median(plain_cpu) * 1000:6.2f} ms per recipient"
    )
    print(
        f"  ratio split/unsplit: time {median(split_times) / median(plain_times):.1f}x, "
        f"CPU {median(split_cpu) / median(plain_cpu):.1f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
