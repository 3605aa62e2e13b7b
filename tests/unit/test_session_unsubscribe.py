"""The session's side of issue 16: List-Id, client List-Unsubscribe headers replaced, ours added
for one recipient, the fanout tag with list and user for several."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from smtpplus_milter.config.loader import ConfigError
from smtpplus_milter.config.rules import rules_of
from smtpplus_milter.core.explain import explain
from smtpplus_milter.core.fanout import TAG, Tag
from smtpplus_milter.core.priority import HeaderEdit
from smtpplus_milter.core.session import Action, EndOfMessage, MessageSession, Rules
from smtpplus_milter.core.tokens import read_unsubscribe_token
from smtpplus_milter.core.unsubscribe import ONE_CLICK, ListUnsubscribe
from tests.support import builders

KEY = b"s" * 32
NEWS = builders.user("news", domains=["shop.example"], list="newsletter")
SHOP = builders.user("shop", domains=["shop.example"], list="orders")
QUEUE_ID = "4jdfvM0wYyzJVF1"
URL = "https://relay.example/u"


def rules() -> Rules:
    base = builders.rules(builders.directory(NEWS, SHOP))
    return replace(
        base,
        unsubscribe={"newsletter": ListUnsubscribe(URL, None, KEY)},
        list_ids={"newsletter": "news.shop.example", "orders": "orders.shop.example"},
    )


def send(login: str, headers: list[tuple[str, str]], recipients: list[str]) -> EndOfMessage:
    session = MessageSession(rules())
    assert session.mail_from(login, "<info@shop.example>").action is Action.CONTINUE
    for rcpt in recipients:
        session.recipient(rcpt)
    session.header("From", "info@shop.example")
    for name, value in headers:
        session.header(name, value)
    assert session.end_of_headers().action is Action.CONTINUE
    end = session.end_of_message(QUEUE_ID)
    session.accept()
    return end


def _list_edits(end: EndOfMessage) -> list[HeaderEdit]:
    return [edit for edit in end.edits if edit.name.lower().startswith("list-") or edit.name == TAG]


def _token(value: str) -> str:
    return value.removeprefix(f"<{URL}/").removesuffix(">")


CLIENT = [
    ("List-Unsubscribe", "<https://evil.example/x>"),
    ("list-unsubscribe-post", ONE_CLICK),
    ("List-Id", "<fake.example>"),
    ("List-Unsubscribe", "<mailto:x@evil.example>"),
]


@pytest.mark.parametrize(
    ("login", "headers", "recipients", "expected"),
    [
        pytest.param(
            "news",
            [],
            ["<Bob@X.example>"],
            [
                HeaderEdit("add", "List-Id", "<news.shop.example>"),
                HeaderEdit("add", "List-Unsubscribe", "TOKEN:bob@x.example"),
                HeaderEdit("add", "List-Unsubscribe-Post", ONE_CLICK),
            ],
            id="one-recipient-gets-both-headers",
        ),
        pytest.param(
            "news",
            CLIENT,
            ["<b@x.example>"],
            [
                HeaderEdit("delete", "List-Id", index=1),
                HeaderEdit("delete", "List-Unsubscribe", index=2),
                HeaderEdit("delete", "List-Unsubscribe", index=1),
                HeaderEdit("delete", "list-unsubscribe-post", index=1),
                HeaderEdit("add", "List-Id", "<news.shop.example>"),
                HeaderEdit("add", "List-Unsubscribe", "TOKEN:b@x.example"),
                HeaderEdit("add", "List-Unsubscribe-Post", ONE_CLICK),
            ],
            id="client-copies-deleted-last-first",
        ),
        pytest.param(
            "news",
            [("To", "a@x.example, b@x.example")],
            ["<a@x.example>", "<b@x.example>"],
            [
                HeaderEdit("add", "List-Id", "<news.shop.example>"),
                HeaderEdit("add", TAG, f"{QUEUE_ID} each newsletter news"),
            ],
            id="several-recipients-tagged-each-even-when-named",
        ),
        pytest.param(
            "news",
            [],
            ["<a@x.example>", "<A@x.example>"],
            [
                HeaderEdit("add", "List-Id", "<news.shop.example>"),
                HeaderEdit("add", "List-Unsubscribe", "TOKEN:a@x.example"),
                HeaderEdit("add", "List-Unsubscribe-Post", ONE_CLICK),
            ],
            id="one-address-twice-is-one-recipient",
        ),
        pytest.param(
            "shop",
            CLIENT,
            ["<a@x.example>", "<b@x.example>"],
            [HeaderEdit("delete", "List-Id", index=1), HeaderEdit("add", "List-Id", "<orders.shop.example>")],
            id="transactional-list-gets-list-id-only-client-unsubscribe-kept",
        ),
    ],
)
def test_list_edits(
    login: str, headers: list[tuple[str, str]], recipients: list[str], expected: list[HeaderEdit]
) -> None:
    found = []
    for edit in _list_edits(send(login, headers, recipients)):
        if edit.name == "List-Unsubscribe" and edit.action == "add":
            token = read_unsubscribe_token(_token(edit.value), KEY)
            assert token is not None and (token.user, token.list) == (login, "newsletter")
            edit = replace(edit, value=f"TOKEN:{token.recipient}")
        found.append(edit)
    assert found == expected


def test_the_tag_comes_last_and_carries_list_and_user() -> None:
    end = send("news", [], ["<a@x.example>", "<b@x.example>"])
    assert end.edits[-1].name == TAG
    assert Tag.parse(end.edits[-1].value) == Tag(QUEUE_ID, "each", "newsletter", "news")
    assert not [edit for edit in end.edits if edit.name == "List-Unsubscribe"]


def test_explain_shows_the_headers() -> None:
    shown = explain(
        rules(), "news", "<info@shop.example>", [("From", "info@shop.example")], recipients=["<b@x.example>"]
    )
    assert shown.splits
    assert [edit.name for edit in shown.edits if edit.action == "add"][-2:] == [
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
    ]


def _config(tmp_path: Path, lists: dict[str, Any], **settings: Any) -> Any:
    (tmp_path / "secret").write_bytes(KEY)
    base: dict[str, Any] = {
        "tracking": {"store": f"sqlite:///{tmp_path}/t.db", "metrics_listen": None, "node": "relay-1"},
        "secret_file": "secret",
        "lists": lists,
    }
    base.update(settings)
    return builders.config_with(tmp_path, settings=base)


def test_unsubscribe_reaches_the_rules(tmp_path: Path) -> None:
    lists = {
        "shop": {"list_id": "shop.example", "unsubscribe": {"url": "https://r.example/u/", "mailto": True}},
        "orders": {},
    }
    config = _config(tmp_path, lists, bounces={"return_path": "bounces.example"})
    got = rules_of(config)
    assert got.unsubscribe == {"shop": ListUnsubscribe("https://r.example/u", "bounces.example", KEY, node="relay-1")}
    assert got.list_ids == {"shop": "shop.example"}
    assert config.postfix.fanout  # the filter is needed for the copies


@pytest.mark.parametrize(
    ("lists", "settings", "message"),
    [
        pytest.param({"shop": {"unsubscribe": {"url": "ftp://r.example/u"}}}, {}, "not an http", id="not-http"),
        pytest.param(
            {"shop": {"unsubscribe": {"url": "https://r.example/u?x=1"}}}, {}, "query or fragment", id="query"
        ),
        pytest.param(
            {"shop": {"unsubscribe": {"url": "https://r.example/u#f"}}}, {}, "query or fragment", id="fragment"
        ),
        pytest.param({"shop": {"unsubscribe": {"url": "https://r.example/a b"}}}, {}, "cannot carry", id="blank"),
        pytest.param(
            {"shop": {"unsubscribe": {"url": "https://r.example/u", "mailto": True}}},
            {},
            "bounces.return_path is not set",
            id="mailto-needs-return-path",
        ),
        pytest.param(
            {"shop": {"unsubscribe": {"url": "https://r.example/u"}}},
            {"tracking": None},
            "tracking is off",
            id="no-store",
        ),
        pytest.param(
            {"shop": {"unsubscribe": {"url": "https://r.example/u"}}},
            {"secret_file": None},
            "secret_file",
            id="no-secret-file",
        ),
        pytest.param({"shop": {"list_id": "<shop.example>"}}, {}, "pattern", id="list-id-with-brackets"),
        pytest.param({"shop": {"list_id": "shop"}}, {}, "pattern", id="list-id-without-a-dot"),
    ],
)
def test_config_problems(tmp_path: Path, lists: dict[str, Any], settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, lists, **settings)


def test_the_key_is_read_for_a_list_with_unsubscribe(tmp_path: Path) -> None:
    config = _config(tmp_path, {"shop": {"unsubscribe": {"url": "https://r.example/u"}}})
    assert config.secret is not None and config.secret.key == KEY


def test_unsubscribe_notices_are_read_and_need_a_sender(tmp_path: Path) -> None:
    notify = {"from": "postmaster@relay.example", "unsubscribes": {"to": ["ops@shop.example"], "mode": "daily"}}
    config = _config(tmp_path, {"shop": {}}, notify=notify)
    assert (config.notify.unsubscribes.to, config.notify.unsubscribes.mode) == (("ops@shop.example",), "daily")
    with pytest.raises(ConfigError, match="no sender"):
        _config(tmp_path, {"shop": {}}, notify={"unsubscribes": {"to": ["ops@shop.example"]}})
