"""Lines per second for reading Postfix's log: split + peek + parse of the wanted lines, one core.

Generates a log in memory (default 1,000,000 lines: 30% delivery lines, half of them for queue
ids the caller tracks; the rest other Postfix lines — qmgr, cleanup, smtpd, bounce — and lines of
other programs), then feeds it in 64 KiB chunks to ``LineSplitter`` and each line to
``parse_line`` with the tracked queue ids as ``wanted``, and prints the rate.

    .venv/bin/python bench/log_parse.py
    .venv/bin/python bench/log_parse.py --lines 200000 --chunk 4096
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smtpplus_milter.core.lines import LineSplitter
from smtpplus_milter.core.postfix_log import Delivery, parse_line

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def make_log(lines: int, seed: int = 13) -> tuple[bytes, frozenset[str]]:
    rnd = random.Random(seed)
    known = [f"{rnd.getrandbits(44):011X}" for _ in range(5000)]
    unknown = [f"{rnd.getrandbits(44):011X}" for _ in range(5000)]
    out: list[str] = []
    for i in range(lines):
        stamp = f"Dec 01 {i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d} relay"
        r = rnd.random()
        if r < 0.30:
            qid = rnd.choice(known if rnd.random() < 0.5 else unknown)
            status = rnd.choice(("sent", "sent", "sent", "deferred", "bounced"))
            reply = {
                "sent": "250 2.0.0 OK 1733054400 d9443c01a7336-2167; gsmtp",
                "deferred": "host mx.example.net[192.0.2.7] said: 451 4.7.1 Greylisted, try again later"
                " (in reply to RCPT TO command)",
                "bounced": "host mx.example.org[203.0.113.5] said: 550 5.1.1 <u@example.org>: User unknown"
                " (in reply to RCPT TO command)",
            }[status]
            out.append(
                f"{stamp} postfix/smtp[{rnd.randrange(1000, 99999)}]: {qid}: to=<user{i}@example.org>,"
                f" relay=mx.example.org[203.0.113.5]:25, delay=0.{rnd.randrange(10, 99)},"
                f" delays=0.01/0/0.2/0.3, dsn={'2.0.0' if status == 'sent' else '5.1.1'}, status={status} ({reply})"
            )
        elif r < 0.50:
            qid = rnd.choice(known + unknown)
            out.append(f"{stamp} postfix/qmgr[900]: {qid}: from=<news@example.com>, size=4021, nrcpt=3 (queue active)")
        elif r < 0.60:
            out.append(f"{stamp} postfix/qmgr[900]: {rnd.choice(unknown)}: removed")
        elif r < 0.70:
            out.append(f"{stamp} postfix/cleanup[901]: {rnd.choice(unknown)}: message-id=<{i}@example.com>")
        elif r < 0.85:
            out.append(f"{stamp} postfix/submission/smtpd[902]: connect from client.example.com[198.51.100.{i % 250}]")
        else:
            out.append(f"{stamp} dovecot[77]: auth: passwd-file(user{i},198.51.100.9): unknown user")
    return ("\n".join(out) + "\n").encode(), frozenset(known)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=64 * 1024)
    args = parser.parse_args()
    data, wanted = make_log(args.lines)
    splitter = LineSplitter()
    deliveries = events = 0
    start = time.perf_counter()
    for i in range(0, len(data), args.chunk):
        for line in splitter.feed(data[i : i + args.chunk]):
            for event in parse_line(line.text, now=NOW, wanted=wanted):
                events += 1
                deliveries += isinstance(event, Delivery)
    elapsed = time.perf_counter() - start
    print(
        f"{args.lines:,} lines ({len(data) / 1e6:.0f} MB) in {elapsed:.2f} s: {args.lines / elapsed:,.0f} lines/s;"
        f" {events:,} events for wanted queue ids, {deliveries:,} of them deliveries"
    )


if __name__ == "__main__":
    main()
