"""The milter adapter and per-recipient copies: the fanout tag reaches libmilter's addheader last."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import Milter
import pytest

from smtpplus_milter.services.runtime import Runtime
from tests.support.builders import config_with
from tests.support.milterctx import Session
from tests.support.observe import events

QUEUE_ID = "4jdfvM0wYyzJVF1"
FROM = [("From", "info@yourcompany.com")]


def runtime(tmp_path: Path, *, bcc_in_to: bool = True) -> Runtime:
    return Runtime(config_with(tmp_path, settings={"lists": {"shop": {"bcc_in_to": bcc_in_to}}}))


def test_a_bcc_recipient_tags_the_message_after_the_queue_header(tmp_path: Path, logs: list[dict[str, Any]]) -> None:
    holder = runtime(tmp_path)
    assert holder.tracking is None  # the recipients are collected for the fanout decision alone
    session = Session(holder, "shop-frontend", queue_id=QUEUE_ID)
    headers = [*FROM, ("To", "a@example.org"), ("X-SMTPPlus-Fanout", "forged each"), ("X-Priority", "1")]
    rcpts = ("<a@example.org>", "<c@example.org>")
    assert session.message("info@yourcompany.com", headers, recipients=rcpts) == ("eom", Milter.CONTINUE)
    # The client's own tag is deleted first; ours is the last header libmilter adds, after the
    # queue header, so Postfix's last matching FILTER is the fanout one.
    assert session.ctx.edits[0] == ("delete", "X-SMTPPlus-Fanout", 1, "")
    assert session.ctx.edits[-2:] == [
        ("add", "X-SMTPPlus-Queue", -1, "high"),
        ("add", "X-SMTPPlus-Fanout", -1, f"{QUEUE_ID} bcc"),
    ]
    [event] = events(logs, "message")
    assert event["fanout"] == "bcc" and event["queue_id"] == QUEUE_ID


@pytest.mark.parametrize(
    ("bcc_in_to", "headers", "rcpts"),
    [
        pytest.param(
            True,
            [("To", "a@example.org"), ("Cc", "c@example.org")],
            ("<a@example.org>", "<c@example.org>"),
            id="every-recipient-named",
        ),
        pytest.param(
            False, [("To", "a@example.org")], ("<a@example.org>", "<c@example.org>"), id="list-does-not-split"
        ),
    ],
)
def test_no_tag(
    tmp_path: Path, logs: list[dict[str, Any]], bcc_in_to: bool, headers: list[tuple[str, str]], rcpts: tuple[str, ...]
) -> None:
    session = Session(runtime(tmp_path, bcc_in_to=bcc_in_to), "shop-frontend", queue_id=QUEUE_ID)
    assert session.message("info@yourcompany.com", [*FROM, *headers], recipients=rcpts) == ("eom", Milter.CONTINUE)
    assert session.ctx.edits == [("add", "X-SMTPPlus-Queue", -1, "normal")]
    [event] = events(logs, "message")
    assert "fanout" not in event


def test_each_message_of_a_connection_is_decided_on_its_own_recipients(tmp_path: Path) -> None:
    session = Session(runtime(tmp_path), "shop-frontend", queue_id=QUEUE_ID)
    headers = [*FROM, ("To", "a@example.org")]
    session.message("info@yourcompany.com", headers, recipients=("<a@example.org>", "<c@example.org>"))
    assert session.ctx.edits[-1][1] == "X-SMTPPlus-Fanout"
    session.message("info@yourcompany.com", headers, recipients=("<a@example.org>",))
    assert [edit[1] for edit in session.ctx.edits] == ["X-SMTPPlus-Queue"]
