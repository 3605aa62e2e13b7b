"""Unsubscribing end to end through the lab's real Postfix, wired as ``postfix-config`` prints it.

A newsletter (a list with ``unsubscribe``, ``mailto: true`` and a ``list_id``) to three recipients
leaves as three copies (the fanout filter), each with its own List-Unsubscribe link and mailto:
address, List-Unsubscribe-Post and List-Id, signed by a real OpenDKIM after the split whose key a
private dnsmasq publishes; the signature covers both unsubscribe headers. One recipient's one-click
POST (as a receiver sends it, RFC 8058 body) to ``smtpplus-milter web`` → 200; a replay changes
nothing; that recipient's next newsletter is refused at RCPT while the other two still receive it,
and the shop's transactional mail to the same address still goes. Another recipient unsubscribes by
mail: the mailto: address through Postfix to the ``smtpplus-ingest`` pipe.
"""

from __future__ import annotations

import copy
import email
import http.client
import os
import time
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pytest
import yaml

from lab.harness import DnsServer, free_port
from lab.milter_process import WebProcess
from lab.stack import DEPLOY, Stack, make_message
from smtpplus_milter.core.tokens import read_unsubscribe_token
from smtpplus_milter.infra.store import open_store
from tests.support import postgres

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="private Postfix instances need root"),
    pytest.mark.skipif(postgres.available() is not None, reason=str(postgres.available())),
]

RETURN_PATH = "bounce.lab.example"
NEWS_FROM = "news@news.yourcompany.com"
READERS = ["r1@example.org", "r2@example.org", "r3@example.org"]
ONE_CLICK = "List-Unsubscribe=One-Click"


@pytest.fixture(scope="module")
def server() -> Iterator[postgres.Server]:
    with postgres.private_server() as running:
        yield running


def _users() -> dict[str, Any]:
    users = yaml.safe_load((DEPLOY / "users.yaml").read_text(encoding="utf-8"))
    users = copy.deepcopy(users)
    users["newsletter"]["list"] = "news"
    return dict(users)


def _wait(what: str, condition: Any, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.3)


def _header(message: Message, name: str) -> str:
    value = message[name]
    assert value is not None, f"no {name}"
    return " ".join(str(value).split())


def test_a_newsletter_unsubscribed_by_one_click_and_by_mail(server: postgres.Server, tmp_path: Path) -> None:
    import dkim

    url = server.create_database(tcp=True)
    web_port = free_port()
    settings = {
        "lists": {
            "news": {
                "list_id": "news.yourcompany.com",
                "unsubscribe": {"url": f"http://127.0.0.1:{web_port}/u", "mailto": True},
            }
        },
        "web": {"listen": f"127.0.0.1:{web_port}"},
    }
    with Stack(
        settings=settings,
        users=_users(),
        tracking=url,
        follower=True,
        fanout=True,
        return_path=RETURN_PATH,
        dkim_domain="news.yourcompany.com",
        dkim_after_milter=True,
        dkim_bits=1024,
    ) as stack:
        assert stack.postfix is not None and stack.dkim is not None
        key = (stack.etc / "secret").read_bytes()
        dns_server = DnsServer(tmp_path / "dns", txt=[stack.dkim.txt_record()], local=("yourcompany.com",))
        dns_server.start()
        web = WebProcess(stack.config_path, web_port, stack.workdir / "web.log")
        web.start()
        try:

            def txt(name: bytes, timeout: int = 5) -> bytes:
                query = dns.message.make_query(name.decode(), dns.rdatatype.TXT)
                answer = dns.query.udp(query, "127.0.0.1", port=dns_server.port, timeout=timeout)
                return b"".join(b"".join(item.strings) for rrset in answer.answer for item in rrset)

            news = make_message(from_=f"News <{NEWS_FROM}>", to="undisclosed-recipients:;", subject="Issue 1")
            assert stack.send(news, login="newsletter", mail_from=NEWS_FROM, rcpt_to=READERS).accepted
            copies = {m.rcpt_tos[0]: m for m in stack.sink.wait_for(3, timeout=60)}
            assert sorted(copies) == READERS  # one copy each
            links: dict[str, str] = {}
            mailtos: dict[str, str] = {}
            for reader, received in copies.items():
                parsed = email.message_from_bytes(received.data)
                assert _header(parsed, "List-Unsubscribe-Post") == ONE_CLICK
                assert _header(parsed, "List-Id") == "<news.yourcompany.com>"
                link, mailto = _header(parsed, "List-Unsubscribe").split(", ")
                token = link.removeprefix(f"<http://127.0.0.1:{web_port}/u/").removesuffix(">")
                found = read_unsubscribe_token(token, key)
                assert found is not None and (found.user, found.list, found.recipient) == ("newsletter", "news", reader)
                links[reader] = link[1:-1]
                mailtos[reader] = mailto.removeprefix("<mailto:").removesuffix(">")
                assert mailtos[reader].endswith(f"@{RETURN_PATH}") and len(mailtos[reader].split("@")[0]) <= 64
                # Signed after the split, over this copy's own unsubscribe headers.
                [signature] = parsed.get_all("DKIM-Signature") or [None]
                assert signature is not None
                tags = dict(part.strip().split("=", 1) for part in "".join(signature.split()).split(";") if part)
                signed = {name.lower() for name in tags["h"].split(":")}
                assert {"list-unsubscribe", "list-unsubscribe-post", "list-id"} <= signed, signature
                assert dkim.verify(received.data, dnsfunc=txt), reader
            assert len(set(links.values())) == 3 and len(set(mailtos.values())) == 3

            # r1: the receiver's one-click POST, twice (a retry): 200 both times, one suppression.
            path = links["r1@example.org"].removeprefix(f"http://127.0.0.1:{web_port}")
            for _ in range(2):
                connection = http.client.HTTPConnection("127.0.0.1", web_port, timeout=10)
                headers = {"Content-Type": "application/x-www-form-urlencoded"}
                connection.request("POST", path, body=ONE_CLICK, headers=headers)
                response = connection.getresponse()
                assert (response.status, response.getheader("Location")) == (200, None)
                response.read()
                connection.close()

            def suppressed() -> dict[str, tuple[str, str]]:
                store = open_store(url)
                try:
                    return {e.address: (e.scope, e.created_by) for e in store.suppressions(scope="list:news")}
                finally:
                    store.close()

            assert suppressed() == {"r1@example.org": ("list:news", "web")}

            # The milter sees it once the follower has written the snapshot (every few seconds).
            snapshot = Path(stack.settings["tracking"]["spool_dir"]) / "suppressions.tsv"
            _wait("r1 in the milter's snapshot", lambda: snapshot.exists() and "r1@example.org" in snapshot.read_text())
            again = make_message(from_=f"News <{NEWS_FROM}>", to="undisclosed-recipients:;", subject="Issue 2")
            sent = stack.send(again, login="newsletter", mail_from=NEWS_FROM, rcpt_to=READERS)
            assert sent.accepted and list(sent.refused) == ["r1@example.org"], sent
            code, reply = sent.refused["r1@example.org"]
            assert code == 550 and "5.7.1 <r1@example.org>: recipient suppressed (unsubscribe since" in reply
            later = stack.sink.wait_for(5, timeout=60)[3:]
            assert sorted(m.rcpt_tos[0] for m in later) == ["r2@example.org", "r3@example.org"]

            # The shop's transactional mail (another list, no unsubscribe) to r1 still goes.
            order = make_message(from_="Shop <info@yourcompany.com>", to="r1@example.org", subject="Your order")
            assert stack.send(
                order, login="shop-frontend", mail_from="info@yourcompany.com", rcpt_to=["r1@example.org"]
            ).accepted
            [receipt] = stack.sink.wait_for(6, timeout=60)[5:]
            assert receipt.rcpt_tos == ["r1@example.org"]
            assert email.message_from_bytes(receipt.data)["List-Unsubscribe"] is None

            # r2 unsubscribes by mail: the mailto: address comes in on port 25 and goes to ingest.
            request = make_message(from_="r2@example.org", to=mailtos["r2@example.org"], subject="unsubscribe")
            assert stack.send(
                request, login=None, mail_from="r2@example.org", rcpt_to=[mailtos["r2@example.org"]]
            ).accepted
            _wait("r2 unsubscribed by mail", lambda: "r2@example.org" in suppressed())
            assert suppressed()["r2@example.org"] == ("list:news", "ingest")
        finally:
            web.stop()
            dns_server.stop()
