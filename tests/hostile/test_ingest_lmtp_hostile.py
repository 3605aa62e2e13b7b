"""What a hostile sender can do to ``ingest --serve`` through the return-path domain, with Postfix's
LMTP client in between: a report far over the size bound is answered 250 with a note (never a
bounce, never a 4xx that Postfix would retry for days) while the server's memory stays bounded, and
a connection that stalls in the middle of DATA does not hold up the reports on other connections."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.milter_process import IngestProcess
from smtpplus_milter.core.reports import MAX_REPORT_BYTES
from tests.support.ingest import dsn, ingest_config, token_address

MIB = 1024 * 1024


@pytest.fixture
def served(tmp_path: Path) -> Iterator[IngestProcess]:
    spec = f"unix:{tmp_path}/ingest.sock"
    config = ingest_config(tmp_path, bounces={"ingest_listen": spec})
    with IngestProcess(config, spec, tmp_path / "ingest.log") as process:
        yield process


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_three_times_the_bound_is_noted_with_250_in_bounded_memory(served: IngestProcess, tmp_path: Path) -> None:
    before = _peak_rss(served.pid)
    line = b"X" * 76 + b"\r\n"
    body = dsn(token_address()) + line * (3 * MAX_REPORT_BYTES // len(line))
    with smtplib.LMTP(str(tmp_path / "ingest.sock")) as client:
        client.ehlo()
        client.mail("<>")
        client.rcpt(token_address())
        code, text = client.data(body)
        assert (code, text) == (250, b"2.6.0 Report over the size bound: noted, not kept")
        # The same connection goes on with the next report.
        client.mail("<>")
        client.rcpt(token_address())
        assert client.data(dsn(token_address())) == (250, b"2.0.0 Report recorded")
    [noted] = served.events("report_quarantined")
    assert "over" in noted["reason"] and Path(noted["kept"]).read_text().startswith(f"over {MAX_REPORT_BYTES}")
    grew = _peak_rss(served.pid) - before
    # aiosmtpd drops what is over the bound: the peak grows by about the bound (as lines), not by 48 MiB.
    assert grew < 2 * MAX_REPORT_BYTES + 8 * MIB, f"peak RSS grew by {grew / MIB:.0f} MiB"


def test_a_stalled_connection_does_not_hold_up_another(served: IngestProcess, tmp_path: Path) -> None:
    stalled = socket.socket(socket.AF_UNIX)
    stalled.connect(str(tmp_path / "ingest.sock"))
    try:
        stalled.settimeout(5)
        for command in (
            b"LHLO evil\r\n",
            b"MAIL FROM:<>\r\n",
            f"RCPT TO:<{token_address()}>\r\n".encode(),
            b"DATA\r\n",
        ):
            stalled.sendall(command)
            time.sleep(0.05)
        stalled.sendall(b"Subject: half a line with no end")
        started = time.monotonic()
        with smtplib.LMTP(str(tmp_path / "ingest.sock")) as client:
            client.ehlo()
            client.mail("<>")
            client.rcpt(token_address())
            assert client.data(dsn(token_address()))[0] == 250
        assert time.monotonic() - started < 5
    finally:
        stalled.close()
    assert served.alive()
