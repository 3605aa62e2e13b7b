"""A real ``smtpplus-milter fanout`` process in a test's directory, with its re-injection sink,
and the tagged message the tests deliver to it (as the milter tags it: ``X-SMTPPlus-Fanout``
after ``X-SMTPPlus-Queue``)."""

from __future__ import annotations

import smtplib
import sqlite3
import urllib.request
from pathlib import Path
from typing import Any

from lab.harness import free_port
from lab.milter_process import FanoutProcess
from tests.support.builders import write_config
from tests.support.reinject_sink import ReinjectSink

SENDER = "news@shop.example"
NAMED = "alice@example.net"


def message(queue_id: str = "4jdfvM0wYyzJVF1", mode: str = "bcc", extra: bytes = b"") -> bytes:
    return (
        b"Received: from client by relay\r\n"
        b"X-SMTPPlus-Queue: normal\r\n"
        b"X-SMTPPlus-Fanout: " + f"{queue_id} {mode}".encode() + b"\r\n"
        b"From: Shop <news@shop.example>\r\n"
        b"To: Alice <alice@example.net>\r\n"
        b"Bcc: bob@example.org, carol@example.org\r\n" + extra + b"Subject: offers\r\n"
        b"\r\n"
        b"Hello.\r\n"
    )


class Filter:
    """The running filter, its sink, and what a test needs to talk to them."""

    def __init__(self, tmp_path: Path, sink: ReinjectSink, settings: dict[str, Any] | None = None) -> None:
        """*settings*: more top-level keys of the config file (e.g. lists with unsubscribe)."""
        self.sink = sink
        self.socket = tmp_path / "fanout.sock"
        self.journal = tmp_path / "fanout.db"
        self.metrics_port = free_port()
        config = write_config(
            tmp_path,
            settings={
                "fanout": {
                    "listen": f"unix:{self.socket}",
                    "reinject": f"127.0.0.1:{sink.port}",
                    "metrics_listen": f"127.0.0.1:{self.metrics_port}",
                    "journal": str(self.journal),
                },
                **(settings or {}),
            },
        )
        self.process = FanoutProcess(config, f"unix:{self.socket}", tmp_path / "fanout.log")

    def deliver(self, raw: bytes, recipient: str, sender: str = SENDER) -> tuple[int, bytes]:
        """One delivery as Postfix's LMTP client makes it: the reply after DATA (or at RCPT)."""
        with smtplib.LMTP(str(self.socket), timeout=30) as client:
            client.ehlo_or_helo_if_needed()
            client.mail(sender)
            code, text = client.rcpt(recipient)
            if code != 250:
                return code, text
            return client.data(raw)

    def journaled(self) -> list[tuple[str, str, str | None]]:
        with sqlite3.connect(self.journal) as db:
            return db.execute("SELECT queue_id, recipient, new_queue_id FROM copies ORDER BY recipient").fetchall()

    def copies(self, result: str) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        wanted = f'smtpplus_fanout_copies_total{{result="{result}"}} '
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(wanted))
