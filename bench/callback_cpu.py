"""CPU per message spent in the milter's callbacks: this tree against another revision, one run.

    python bench/callback_cpu.py --baseline REV [--messages N] [--rounds R]

What a change costs on the mail path, without Postfix's noise: each round drives N messages
through ``SmtpPlusMilter`` with pymilter's ``TestCtx`` (negotiate, MAIL FROM, RCPT, DATA, five
headers with ``X-Priority: 1``, end of headers, a 80-byte body, end of message; the example
user ``shop-frontend`` sending as an authorized address; no footer), in a child process whose
``sys.path`` starts with one source tree, and reports ``time.thread_time()`` per message.
The session is ``tests/support/milterctx.Session`` of each tree, so REV must have that module.
Rounds alternate between the trees (``git archive REV`` unpacked into a temporary directory), so
drift on a shared machine hits both alike; the table shows each side's best round and median,
and the ratio of medians. TestCtx itself costs a good part of the total, so the difference, not
the ratio, is the change's own cost per message; the real milter adds pymilter's C layer and
the socket round trips (bench/throughput.py).
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Runs inside the child, with the tree to measure first on sys.path.
CHILD = r"""
import logging, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import Milter, structlog
from tests.support.builders import config_with
from tests.support.milterctx import Session
from smtpplus_milter.services.runtime import Runtime
import smtpplus_milter.services.milter as loaded
assert loaded.__file__.startswith(sys.argv[1]), loaded.__file__
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
count = int(sys.argv[2])
headers = [("From", "Shop <info@yourcompany.com>"), ("To", "someone@example.org"), ("Subject", "Order 1001"),
           ("Message-ID", "<1@client.test>"), ("X-Priority", "1 (Highest)")]
with tempfile.TemporaryDirectory() as directory:
    holder = Runtime(config_with(Path(directory), settings={"lists": {"shop": {}}}))
    for warm in range(200):
        session = Session(holder, "shop-frontend")
        session.message("info@yourcompany.com", headers, b"Hello.\r\n" * 10)
        session.close()
    start = time.thread_time()
    for index in range(count):
        session = Session(holder, "shop-frontend")
        stage, answer = session.message("info@yourcompany.com", headers, b"Hello.\r\n" * 10)
        assert answer == Milter.CONTINUE, (stage, answer)
        session.close()
    print((time.thread_time() - start) / count * 1e6)
"""


def _round(tree: Path, messages: int) -> float:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tree), str(messages)],
        capture_output=True,
        text=True,
        cwd=tree,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"round in {tree} failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--baseline", required=True, help="git revision to compare with (the commit before a change)")
    parser.add_argument("--messages", type=int, default=2000, help="messages per round (default 2000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per side (default 5)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="smtpplus-baseline-") as directory:
        baseline = Path(directory)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.baseline], capture_output=True, check=True, timeout=120
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(baseline, filter="data")
        results: dict[str, list[float]] = {"baseline": [], "current": []}
        for index in range(args.rounds):
            order = [("baseline", baseline), ("current", REPO)]
            for name, tree in order if index % 2 == 0 else reversed(order):
                results[name].append(_round(tree, args.messages))
                print(f"  round {index + 1} {name:8} {results[name][-1]:7.1f} us/msg", flush=True)
    base, current = statistics.median(results["baseline"]), statistics.median(results["current"])
    print()
    print("| tree | best us/msg | median us/msg |\n|---|---:|---:|")
    print(f"| {args.baseline} (baseline) | {min(results['baseline']):.0f} | {base:.0f} |")
    print(f"| this tree | {min(results['current']):.0f} | {current:.0f} |")
    print(f"\ndifference of medians: {current - base:+.0f} us/msg ({current / base:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
