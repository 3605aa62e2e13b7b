"""How many bounce reports per second ``ingest`` records (issue 14; goal ≥ 200 reports/s).

Two numbers, side by side on the same store (SQLite, in a temporary directory) and the same reports
(RFC 3464 DSNs, one failed recipient each, matched by their b+TOKEN):

* in process: the ingest code itself (read, match, record) called in a loop;
* as Postfix's pipe runs it: one ``python -m smtpplus_milter ingest`` process per report,
  ``--parallel`` at a time (the pipe's process limit);
* as Postfix's LMTP client delivers to ``ingest --serve`` (``bounces.ingest_listen``): ``--parallel``
  connections kept open, one report (MAIL, RCPT, DATA) after another on each, as Postfix's
  connection cache does.

    .venv/bin/python bench/ingest.py --reports 2000 --processes 100 --lmtp 4000 --parallel 4
"""

from __future__ import annotations

import argparse
import concurrent.futures
import smtplib
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's tests/support

from lab.milter_process import IngestProcess
from smtpplus_milter.config import load_config
from smtpplus_milter.core.tokens import make_bounce_token
from smtpplus_milter.infra.store import open_store
from smtpplus_milter.services.ingest import ingest
from tests.support.builders import message_record, write_config

KEY = bytes(range(32))
DOMAIN = "bounce.relay.example"


def dsn(recipient: str) -> bytes:
    return (
        "From: MAILER-DAEMON@mx.example.org\r\nSubject: Undelivered\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nNo.\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.org\r\nArrival-Date: Tue, 01 Dec 2026 06:00:00 +0000\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: unknown\r\n--b--\r\n"
    ).encode()


def prepare(directory: Path, count: int) -> tuple[Path, list[tuple[bytes, str]]]:
    (directory / "secret").write_bytes(KEY)
    (directory / "secret").chmod(0o600)
    settings = {
        "secret_file": "secret",
        "tracking": {"store": f"sqlite:///{directory}/t.db", "node": "relay-1", "spool_dir": str(directory / "s")},
        "bounces": {"return_path": DOMAIN, "ingest_listen": f"unix:{directory}/ingest.sock"},
    }
    config = write_config(directory, settings=settings)
    store = open_store(f"sqlite:///{directory}/t.db")
    store.migrate()
    qids = [f"4jdfvM0wYyzJ{n:06d}" for n in range(count)]
    store.record_messages(message_record(q, recipients=(f"r{n}@example.org",)) for n, q in enumerate(qids))
    store.close()
    reports = [
        (dsn(f"r{n}@example.org"), f"b+{make_bounce_token('relay-1', q, KEY)}@{DOMAIN}") for n, q in enumerate(qids)
    ]
    return config, reports


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=int, default=2000, help="reports recorded in process")
    parser.add_argument("--processes", type=int, default=100, help="reports recorded as one process each")
    parser.add_argument("--lmtp", type=int, default=4000, help="reports delivered to ingest --serve over LMTP")
    parser.add_argument("--parallel", type=int, default=4, help="ingest processes (LMTP connections) at a time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="smtpplus-bench-ingest-") as tmp:
        directory = Path(tmp)
        config_path, reports = prepare(directory, args.reports + args.processes + args.lmtp)
        config = load_config(config_path)
        store = open_store(f"sqlite:///{directory}/t.db")
        started = time.perf_counter()
        for raw, recipient in reports[: args.reports]:
            result = ingest(raw, recipient, config, store, datetime.now(UTC))
            assert result.status == "recorded", result
        inside = time.perf_counter() - started
        store.close()

        def one(item: tuple[bytes, str]) -> int:
            raw, recipient = item
            command = [sys.executable, "-m", "smtpplus_milter", "ingest", "-c", str(config_path)]
            done = subprocess.run([*command, "--recipient", recipient], input=raw, capture_output=True, check=False)
            return done.returncode

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
            codes = list(pool.map(one, reports[args.reports : args.reports + args.processes]))
        outside = time.perf_counter() - started
        assert codes == [0] * args.processes, codes

        served = reports[args.reports + args.processes :]

        def connection(share: list[tuple[bytes, str]]) -> int:
            recorded = 0
            with smtplib.LMTP(str(directory / "ingest.sock")) as client:
                client.ehlo()
                for raw, recipient in share:
                    client.mail("<>")
                    client.rcpt(recipient)
                    code, text = client.data(raw)
                    assert (code, text) == (250, b"2.0.0 Report recorded"), (code, text)
                    recorded += 1
            return recorded

        with IngestProcess(config_path, f"unix:{directory}/ingest.sock", directory / "ingest.log"):
            shares = [served[n :: args.parallel] for n in range(args.parallel)]
            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
                recorded = sum(pool.map(connection, shares))
            lmtp = time.perf_counter() - started
        assert recorded == args.lmtp, recorded
    print(f"in process:      {args.reports} reports in {inside:.2f} s = {args.reports / inside:,.0f} reports/s")
    print(
        f"one process each: {args.processes} reports in {outside:.2f} s = {args.processes / outside:,.1f} reports/s"
        f" ({args.parallel} at a time)"
    )
    print(
        f"ingest --serve:   {args.lmtp} reports in {lmtp:.2f} s = {args.lmtp / lmtp:,.0f} reports/s"
        f" over LMTP ({args.parallel} connections)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
