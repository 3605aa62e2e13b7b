"""A tracking store and config that ``ingest`` can match reports against, and the reports.

One recorded message (``QID`` from node ``relay-1``, to bob@example.net) in a SQLite store in the
test's directory; the return path ``bounce.relay.example`` with the key ``KEY``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smtpplus_milter.core.tokens import make_bounce_token
from smtpplus_milter.infra.store import open_store
from tests.support.builders import message_record, write_config

KEY = bytes(range(32))
QID = "4jdfvM0wYyzJVF1"
NODE = "relay-1"
RETURN_PATH = "bounce.relay.example"
RECIPIENT = "bob@example.net"


def token_address(queue_id: str = QID, key: bytes = KEY) -> str:
    return f"b+{make_bounce_token(NODE, queue_id, key)}@{RETURN_PATH}"


def ingest_config(directory: Path, *, bounces: dict[str, Any] | None = None, store: str | None = None) -> Path:
    """The config file; the store (unless *store* names another) holds the one message."""
    secret = directory / "secret"
    secret.write_bytes(KEY)
    secret.chmod(0o600)
    url = store or f"sqlite:///{directory}/t.db"
    settings = {
        "secret_file": str(secret),
        "tracking": {"store": url, "node": NODE, "spool_dir": str(directory / "spool")},
        "bounces": {"return_path": RETURN_PATH, **(bounces or {})},
    }
    path = write_config(directory, settings=settings)
    if store is None:
        opened = open_store(url)
        opened.migrate()
        opened.record_messages([message_record(QID, recipients=(RECIPIENT,))])
        opened.close()
    return path


def dsn(to: str, recipient: str = RECIPIENT, status: str = "5.1.1") -> bytes:
    """A minimal RFC 3464 report: *recipient* failed with *status*, sent to *to*."""
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\n"
        f"To: {to}\r\nSubject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n"
        "--b1\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.net\r\nArrival-Date: Mon, 30 Nov 2026 12:00:00 +0000\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; 550 {status} <{recipient}>: User unknown\r\n--b1--\r\n"
    ).encode()
