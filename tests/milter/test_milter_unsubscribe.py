"""The milter adapter and List-Unsubscribe: the session's edits reach libmilter (client copies
deleted, List-Id, the two headers with the one recipient's token; several recipients: the tag)."""

from __future__ import annotations

from pathlib import Path

import Milter

from smtpplus_milter.core.tokens import read_unsubscribe_token
from smtpplus_milter.core.unsubscribe import ONE_CLICK
from smtpplus_milter.services.runtime import Runtime
from tests.support.builders import config_with
from tests.support.milterctx import Session

QUEUE_ID = "4jdfvM0wYyzJVF1"
KEY = b"m" * 32
URL = "https://relay.example/u"
HEADERS = [
    ("From", "info@yourcompany.com"),
    ("List-Unsubscribe", "<https://evil.example/>"),
    ("List-Id", "<fake.example>"),
]


def runtime(tmp_path: Path) -> Runtime:
    (tmp_path / "secret").write_bytes(KEY)
    settings = {
        "secret_file": "secret",
        "tracking": {"store": f"sqlite:///{tmp_path}/t.db", "metrics_listen": None, "spool_dir": str(tmp_path / "sp")},
        "lists": {"shop": {"list_id": "shop.yourcompany.com", "unsubscribe": {"url": URL}}},
    }
    return Runtime(config_with(tmp_path, settings=settings))


def test_one_recipient_gets_the_headers_from_the_milter(tmp_path: Path) -> None:
    holder = runtime(tmp_path)
    session = Session(holder, "shop-frontend", queue_id=QUEUE_ID)
    done = session.message("info@yourcompany.com", HEADERS, recipients=("<Bob@Example.net>",))
    assert done == ("eom", Milter.CONTINUE)
    edits = [edit for edit in session.ctx.edits if edit[1] != "X-SMTPPlus-Queue"]
    assert edits[:3] == [
        ("delete", "List-Id", 1, ""),
        ("delete", "List-Unsubscribe", 1, ""),
        ("add", "List-Id", -1, "<shop.yourcompany.com>"),
    ]
    (_, name, _, link), (_, post, _, value) = edits[3:]
    assert (name, post, value) == ("List-Unsubscribe", "List-Unsubscribe-Post", ONE_CLICK)
    token = read_unsubscribe_token(link.removeprefix(f"<{URL}/").removesuffix(">"), KEY)
    assert token is not None and (token.user, token.list, token.recipient) == (
        "shop-frontend",
        "shop",
        "bob@example.net",
    )


def test_several_recipients_are_tagged_for_the_filter(tmp_path: Path) -> None:
    holder = runtime(tmp_path)
    session = Session(holder, "shop-frontend", queue_id=QUEUE_ID)
    rcpts = ("<a@example.org>", "<b@example.org>")
    assert session.message("info@yourcompany.com", HEADERS, recipients=rcpts) == ("eom", Milter.CONTINUE)
    assert session.ctx.edits[-1] == ("add", "X-SMTPPlus-Fanout", -1, f"{QUEUE_ID} each shop shop-frontend")
    assert not [edit for edit in session.ctx.edits if edit[0] == "add" and edit[1] == "List-Unsubscribe"]
