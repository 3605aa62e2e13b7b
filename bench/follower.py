"""Lines per second of the log follower's whole loop: read, split, filter, parse, write to SQLite.

Generates a realistic Postfix log file (default 1,000,000 lines): each message has smtpd's
``client=`` line (one in three with a ``sasl_username``: the tracked ones, whose records are put in
the store first, as the milter would), cleanup's ``message-id``, qmgr's ``from=... (queue active)``,
one to three delivery lines (sent mostly, some deferred then sent, some bounced), qmgr's
``removed``, and around them smtpd's connect/disconnect lines. Then runs
:class:`~smtpplus_milter.services.follower.Follower` over it to the end, on one core, against a
SQLite store in a temporary directory, and prints lines/s (wall and CPU) and what was recorded.

    .venv/bin/python bench/follower.py
    .venv/bin/python bench/follower.py --lines 200000
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smtpplus_milter.core.tracking import MessageRecord
from smtpplus_milter.infra.store import open_store
from smtpplus_milter.observe.metrics import FollowerMetrics
from smtpplus_milter.services.follower import Follower

NODE = "relay-1"
START = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYbcdfghjklmnpqrstvwxy"  # long queue ids: no vowels, no 'z'


def queue_id(rnd: random.Random) -> str:
    return "".join(rnd.choice(_ALPHABET) for _ in range(10)) + "z" + "".join(rnd.choice(_ALPHABET) for _ in range(4))


def make_log(path: Path, lines: int, seed: int = 13) -> list[MessageRecord]:
    """Write the log; return the records of the tracked (authenticated) messages."""
    rnd = random.Random(seed)
    tracked: list[MessageRecord] = []
    written = 0
    second = 0
    with path.open("w", encoding="utf-8") as out:
        while written < lines:
            second += 1
            at = START + timedelta(seconds=second)
            stamp = at.isoformat()
            qid = queue_id(rnd)
            pid = rnd.randrange(1000, 99999)
            ip = f"198.51.100.{second % 250}"
            authenticated = rnd.random() < 1 / 3
            rcpts = [f"user{second}-{n}@example{n}.org" for n in range(rnd.choice((1, 1, 2, 3)))]
            block = [f"{stamp} relay postfix/submission/smtpd[{pid}]: connect from client.example.com[{ip}]"]
            if authenticated:
                block.append(
                    f"{stamp} relay postfix/submission/smtpd[{pid}]: {qid}: client=client.example.com[{ip}],"
                    f" sasl_method=PLAIN, sasl_username=shop-frontend"
                )
                tracked.append(
                    MessageRecord(
                        node=NODE,
                        queue_id=qid,
                        user="shop-frontend",
                        list="shop",
                        envelope_from="info@yourcompany.com",
                        header_from="info@yourcompany.com",
                        subject="Order",
                        message_id=f"<{second}@yourcompany.com>",
                        size=4021,
                        priority=3,
                        queue="normal",
                        accepted_at=at,
                        recipients=tuple(rcpts),
                    )
                )
            else:
                block.append(f"{stamp} relay postfix/smtpd[{pid}]: {qid}: client=client.example.com[{ip}]")
            block.append(f"{stamp} relay postfix/cleanup[901]: {qid}: message-id=<{second}@yourcompany.com>")
            block.append(
                f"{stamp} relay postfix/qmgr[900]: {qid}: from=<info@yourcompany.com>, size=4021,"
                f" nrcpt={len(rcpts)} (queue active)"
            )
            block.append(f"{stamp} relay postfix/submission/smtpd[{pid}]: disconnect from client.example.com[{ip}]")
            for rcpt in rcpts:
                kind = rnd.random()
                if kind < 0.1:
                    block.append(_delivery(stamp, qid, rcpt, "deferred"))
                block.append(_delivery(stamp, qid, rcpt, "bounced" if 0.1 <= kind < 0.15 else "sent"))
            block.append(f"{stamp} relay postfix/qmgr[900]: {qid}: removed")
            out.write("\n".join(block) + "\n")
            written += len(block)
    return tracked


def _delivery(stamp: str, qid: str, rcpt: str, status: str) -> str:
    dsn, reply = {
        "sent": ("2.0.0", "250 2.0.0 OK 1733054400 d9443c01a7336-2167; gsmtp"),
        "deferred": (
            "4.7.1",
            "host mx.example.net[192.0.2.7] said: 451 4.7.1 Greylisted (in reply to RCPT TO command)",
        ),
        "bounced": ("5.1.1", "host mx.example.org[203.0.113.5] said: 550 5.1.1 User unknown (in reply to RCPT TO)"),
    }[status]
    return (
        f"{stamp} relay postfix/smtp[3000]: {qid}: to=<{rcpt}>, relay=mx.example.org[203.0.113.5]:25,"
        f" delay=0.42, delays=0.01/0/0.2/0.21, dsn={dsn}, status={status} ({reply})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "postfix.log"
        tracked = make_log(log, args.lines)
        url = f"sqlite:///{tmp}/t.db"
        store = open_store(url)
        store.migrate()
        for start in range(0, len(tracked), 1000):
            store.record_messages(tracked[start : start + 1000])
        follower = Follower(url, NODE, log, FollowerMetrics(), poll=0.0)
        wall, cpu = time.perf_counter(), time.process_time()
        while follower.step():
            pass
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        follower.close()
        rows = next(store.stats())
        store.close()
        size = log.stat().st_size
    lines = args.lines
    print(f"{lines:,} lines ({size / 1e6:.0f} MB), {len(tracked):,} tracked messages")
    print(f"wall {wall:.2f} s: {lines / wall:,.0f} lines/s; CPU {cpu:.2f} s: {lines / cpu:,.0f} lines/s")
    print(
        f"recipients {rows['recipients']:,}: delivered {rows['delivered']:,}, bounced {rows['bounced']:,},"
        f" deferred {rows['deferred']:,}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
