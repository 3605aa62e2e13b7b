"""The fanout filter's List-Unsubscribe per copy: each recipient's own token, with fakes for the
re-injection and the journal (tests/unit/test_fanout_handler.py has the rest of the handler)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest

from smtpplus_milter.core.tokens import read_unsubscribe_token
from smtpplus_milter.core.unsubscribe import ONE_CLICK
from smtpplus_milter.observe.metrics import FanoutMetrics
from smtpplus_milter.services.fanout import FanoutHandler, Sent
from tests.support.builders import config_with

KEY = b"q" * 32
URL = "https://relay.example/u"


class FakeJournal:
    """Nothing made yet; what is made is forgotten (the journal has its own tests)."""

    def find(self, queue_id: str, recipient: str) -> None:
        return None

    def record(self, queue_id: str, recipient: str, new_queue_id: str | None, now: datetime) -> None:
        pass

    def prune(self, now: datetime, days: int) -> int:
        return 0

    def close(self) -> None:
        pass


@dataclass
class FakeReinjector:
    sent: list[tuple[str, str, bytes]] = field(default_factory=list)
    target: Any = None

    def send(self, sender: str, recipient: str, data: bytes, options: tuple[str, ...] = ()) -> Sent:
        self.sent.append((sender, recipient, data))
        return Sent("NEW1", "2.0.0 Ok: queued as NEW1")

    def close(self) -> None:
        pass


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.events.append((level, event, fields))


def raw(tag: str) -> bytes:
    return (
        f"X-SMTPPlus-Fanout: {tag}\r\nFrom: news@shop.example\r\nTo: alice@example.net\r\n"
        "List-Unsubscribe: <https://evil.example/>\r\nSubject: hi\r\n\r\nbody\r\n"
    ).encode()


def config(tmp_path: Path, *, secret: bool = True, unsubscribe: bool = True) -> Any:
    if secret:
        (tmp_path / "secret").write_bytes(KEY)
    lists: dict[str, Any] = {"shop": {}, "newsletter": {"unsubscribe": {"url": URL}} if unsubscribe else {}}
    settings = {
        "tracking": {"store": f"sqlite:///{tmp_path}/t.db", "metrics_listen": None},
        "secret_file": "secret",
        "lists": lists,
    }
    return config_with(tmp_path, settings=settings)


def deliver(config: Any, data: bytes, recipient: str) -> tuple[str, FakeReinjector, Log]:
    reinjector, log = FakeReinjector(), Log()
    handler = FanoutHandler(config, log, FanoutMetrics(), FakeJournal(), reinjector=reinjector)  # type: ignore[arg-type]
    try:
        return handler.deliver(data, "b+x@bounces.example", recipient), reinjector, log
    finally:
        handler.close()


@pytest.mark.parametrize(
    "recipient", [pytest.param("alice@example.net", id="named"), pytest.param("Bob@Example.org", id="blind")]
)
def test_each_copy_carries_its_recipients_token(tmp_path: Path, recipient: str) -> None:
    reply, reinjector, _ = deliver(config(tmp_path), raw("QID1 each newsletter news"), recipient)
    assert reply.startswith("250 ")
    message = message_from_bytes(reinjector.sent[0][2])
    [link] = message.get_all("List-Unsubscribe")
    assert link.startswith(f"<{URL}/")
    token = read_unsubscribe_token(link.removeprefix(f"<{URL}/").removesuffix(">"), KEY)
    assert token is not None and (token.user, token.list, token.recipient) == ("news", "newsletter", recipient.lower())
    assert message.get_all("List-Unsubscribe-Post") == [ONE_CLICK]
    # A named recipient keeps the To: they were named in; a blind one sees only their own address.
    assert message["To"] == ("alice@example.net" if recipient.startswith("alice") else f"<{recipient}>")


@pytest.mark.parametrize(
    ("tag", "unsubscribe"),
    [
        pytest.param("QID1 each", True, id="old-tag-no-list"),
        pytest.param("QID1 each other news", True, id="list-unknown-here"),
        pytest.param("QID1 each newsletter news", False, id="list-became-transactional"),
    ],
)
def test_copies_without_headers(tmp_path: Path, tag: str, unsubscribe: bool) -> None:
    reply, reinjector, _ = deliver(config(tmp_path, unsubscribe=unsubscribe), raw(tag), "bob@example.org")
    assert reply.startswith("250 ")
    message = message_from_bytes(reinjector.sent[0][2])
    assert message.get("List-Unsubscribe-Post") is None
    assert message.get_all("List-Unsubscribe") == ["<https://evil.example/>"]  # the milter deletes those


def test_without_the_key_the_copy_waits(tmp_path: Path) -> None:
    reply, reinjector, log = deliver(config(tmp_path, secret=False), raw("QID1 each newsletter news"), "b@x.example")
    assert reply.startswith("451 ") and not reinjector.sent
    [event] = [fields for _, name, fields in log.events if name == "fanout_copy"]
    assert event["result"] == "deferred" and "secret_file" in str(event["reason"])
