"""``smtpplus-milter fanout`` as a real process with a list that has unsubscribe: a message tagged
``each <list> <user>`` delivered (as Postfix's LMTP client does) once per recipient gives each
copy its own List-Unsubscribe, whose token read_unsubscribe_token accepts for that recipient only."""

from __future__ import annotations

from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path

import pytest

from smtpplus_milter.core.tokens import read_unsubscribe_token
from smtpplus_milter.core.unsubscribe import ONE_CLICK
from tests.support.fanout import Filter
from tests.support.reinject_sink import ReinjectSink

KEY = b"f" * 32
URL = "https://relay.example/u"
RECIPIENTS = ("alice@example.net", "bob@example.org", "carol@example.org")
RAW = (
    b"X-SMTPPlus-Queue: normal\r\n"
    b"From: Shop <news@shop.example>\r\nTo: Alice <alice@example.net>\r\n"
    b"List-Id: <news.shop.example>\r\nX-SMTPPlus-Fanout: 4jdfvM0wYyzJVF1 each newsletter shop-frontend\r\n"
    b"Subject: offers\r\n\r\nHello.\r\n"
)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Filter]:
    secret = tmp_path / "secret"
    secret.write_bytes(KEY)
    secret.chmod(0o600)
    settings = {
        "secret_file": str(secret),
        "tracking": {"store": f"sqlite:///{tmp_path}/t.db", "metrics_listen": None},
        "bounces": {"return_path": "bounce.relay.example"},
        "lists": {
            "shop": {},
            "newsletter": {"list_id": "news.shop.example", "unsubscribe": {"url": URL, "mailto": True}},
        },
    }
    with ReinjectSink() as sink:
        fanout = Filter(tmp_path, sink, settings)
        with fanout.process:
            yield fanout


def test_each_copy_carries_its_own_token(running: Filter) -> None:
    for recipient in RECIPIENTS:
        assert running.deliver(RAW, recipient)[0] == 250
    copies = running.sink.wait_for(3)
    tokens = {}
    for copy in copies:
        [recipient] = copy.rcpt_tos
        message = message_from_bytes(copy.data)
        [value] = message.get_all("List-Unsubscribe")
        assert message.get_all("List-Unsubscribe-Post") == [ONE_CLICK]
        link = value.split(",")[0].strip()
        token = link.removeprefix(f"<{URL}/").removesuffix(">")
        found = read_unsubscribe_token(token, KEY)
        assert found is not None and (found.user, found.list, found.recipient) == (
            "shop-frontend",
            "newsletter",
            recipient,
        )
        tokens[recipient] = token
        assert message["To"] == ("Alice <alice@example.net>" if recipient == "alice@example.net" else f"<{recipient}>")
        assert b"X-SMTPPlus-Fanout" not in copy.data and message["List-Id"] == "<news.shop.example>"
    assert len(set(tokens.values())) == 3
