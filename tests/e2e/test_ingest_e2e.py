"""A bounce that comes back later, end to end: the milter gives the message the envelope sender
b+TOKEN@<bounces.return_path>, the recipient's server first accepts it and later sends a DSN to
that address; the lab's real Postfix takes the DSN for the return-path domain and hands it to the
smtpplus-ingest pipe (as postfix-config prints it, run as nobody) or, with bounces.ingest_listen,
to `ingest --serve` over LMTP, and the recipient turns from delivered to bounced. With the store
down, ingest answers 75 (LMTP: 451) and Postfix keeps the DSN until the store is back."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest

from lab.stack import Stack, make_message
from smtpplus_milter.core.tokens import BOUNCE_PREFIX, read_bounce_token
from smtpplus_milter.infra.store import open_store
from tests.support import postgres

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="private Postfix instances need root"),
    pytest.mark.skipif(postgres.available() is not None, reason=str(postgres.available())),
]

RETURN_PATH = "bounce.lab.example"
SENDER = "info@yourcompany.com"


@pytest.fixture(scope="module")
def server() -> Iterator[postgres.Server]:
    with postgres.private_server() as running:
        yield running


def _dsn(to: str, recipient: str) -> bytes:
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\r\n"
        f"To: {to}\r\nSubject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain\r\n\r\nThe mailbox was closed after it accepted your message.\r\n"
        "--b1\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.org\r\nArrival-Date: Tue, 01 Dec 2026 06:00:00 +0000\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: mailbox closed\r\n--b1--\r\n"
    ).encode()


def _state(url: str, queue_id: str, address: str) -> str | None:
    store = open_store(url)
    try:
        store.migrate()  # the follower may not have made the schema yet
        found = store.message(queue_id)
    finally:
        store.close()
    if found is None:
        return None
    return next((r.state for r in found.recipients if r.address == address), None)


def _wait(what: str, condition: Callable[[], bool], stack: Stack, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    postfix = stack.postfix.log_tail(30) if stack.postfix else ""
    raise AssertionError(f"{what}: not within {timeout}s\npostfix:\n{postfix}")


# What Postfix logs for a delivered report: the pipe's own words, or the LMTP server's 250.
SENT = {
    "pipe": r"relay=smtpplus-ingest, .*status=sent \(delivered via smtpplus-ingest service",
    "lmtp": r"smtpplus-ingest.*status=sent \(250 2\.0\.0 Report recorded",
}


@pytest.mark.parametrize("ingest", ["pipe", "lmtp"])
def test_a_late_dsn_reaches_ingest_through_postfix_and_bounces_the_recipient(
    server: postgres.Server, ingest: str
) -> None:
    url = server.create_database(tcp=True)
    with Stack(tracking=url, follower=True, priority_routing=None, return_path=RETURN_PATH, ingest=ingest) as stack:
        assert stack.postfix is not None and stack.milter is not None
        message = make_message(from_=f"Shop <{SENDER}>", subject="will bounce later")
        assert stack.send(message, login="shop-frontend", mail_from=SENDER, rcpt_to=["late@example.org"]).accepted
        [delivered] = stack.sink.wait_for(1, timeout=30)
        local, _, domain = delivered.mail_from.rpartition("@")
        assert domain == RETURN_PATH and local.startswith(BOUNCE_PREFIX)
        secret = (stack.etc / "secret").read_bytes()
        token = read_bounce_token(local[len(BOUNCE_PREFIX) :], secret)
        assert token is not None and token.is_from("lab")
        _wait("delivered in the store", lambda: _state(url, token.queue_id, "late@example.org") == "delivered", stack)

        # The DSN arrives from the internet (port 25, no login) for the return-path domain.
        dsn = _dsn(delivered.mail_from, "late@example.org")
        assert stack.send(dsn, login=None, mail_from="", rcpt_to=[delivered.mail_from]).accepted
        _wait("bounced by the DSN", lambda: _state(url, token.queue_id, "late@example.org") == "bounced", stack)
        stack.postfix.wait_for_log(SENT[ingest])

        # Store down: ingest exits 75, Postfix keeps the DSN; once the store is back a flush delivers it.
        assert stack.send(message, login="shop-frontend", mail_from=SENDER, rcpt_to=["late2@example.org"]).accepted
        [_, second] = stack.sink.wait_for(2, timeout=30)
        token2 = read_bounce_token(second.mail_from.split("@")[0][len(BOUNCE_PREFIX) :], secret)
        assert token2 is not None
        _wait("the second delivered", lambda: _state(url, token2.queue_id, "late2@example.org") == "delivered", stack)
        server.stop()
        try:
            assert stack.send(
                _dsn(second.mail_from, "late2@example.org"), login=None, mail_from="", rcpt_to=[second.mail_from]
            ).accepted
            stack.postfix.wait_for_log(r"smtpplus-ingest.*status=deferred", timeout=40)
        finally:
            server.start()
        stack.postfix.flush()
        _wait("bounced after the retry", lambda: _state(url, token2.queue_id, "late2@example.org") == "bounced", stack)
