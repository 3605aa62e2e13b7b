"""The pure half of issue 16: the List-Unsubscribe headers, and the fanout tag that carries list and user."""

from __future__ import annotations

import pytest

from smtpplus_milter.core.fanout import Tag, make_copy
from smtpplus_milter.core.tokens import make_unsubscribe_token, read_mail_unsubscribe_token, read_unsubscribe_token
from smtpplus_milter.core.unsubscribe import ONE_CLICK, ListUnsubscribe, list_headers, list_id_value

KEY = b"k" * 32
SHORT = "a" * 40  # u+ and 40 characters fit a local part
LONG = "a" * 63  # u+ and 63 do not (64 octets at most)


@pytest.mark.parametrize(
    ("url", "domain", "token", "value"),
    [
        pytest.param("https://relay.example/u", None, SHORT, f"<https://relay.example/u/{SHORT}>", id="url-only"),
        pytest.param(
            "https://relay.example/u/", None, SHORT, f"<https://relay.example/u/{SHORT}>", id="trailing-slash-one-slash"
        ),
        pytest.param(
            "http://relay.example",
            "bounces.example",
            SHORT,
            f"<http://relay.example/{SHORT}>, <mailto:u+{SHORT}@bounces.example>",
            id="with-mailto",
        ),
        pytest.param(
            "https://relay.example/u",
            "bounces.example",
            LONG,
            f"<https://relay.example/u/{LONG}>",
            id="mailto-left-out-when-the-local-part-would-be-too-long",
        ),
    ],
)
def test_list_headers(url: str, domain: str | None, token: str, value: str) -> None:
    # The same token stands for the link's and the mailto:'s here; in use they differ (see below).
    expected = (("List-Unsubscribe", value), ("List-Unsubscribe-Post", ONE_CLICK))
    assert list_headers(url, domain, token, token) == expected


def test_the_mailto_address_carries_the_short_token_of_the_message_and_recipient() -> None:
    lists = ListUnsubscribe("https://r.example/u", "bounces.example", KEY, node="relay-1")
    value = dict(lists.headers("crm", "news", "Bob@X.example", "4jdfvM0wYyzJVF1"))["List-Unsubscribe"]
    _link, mailto = value.split(", ")
    local = mailto.removeprefix("<mailto:").removesuffix("@bounces.example>")
    assert local.startswith("u+") and len(local) <= 64
    short = read_mail_unsubscribe_token(local[2:], KEY)
    assert short is not None and short.queue_id == "4jdfvM0wYyzJVF1" and short.is_from("relay-1")
    assert short.names("bob@x.example", KEY) and not short.names("carol@x.example", KEY)
    assert read_mail_unsubscribe_token(local[2:].upper(), KEY) == short  # a lowercasing or uppercasing MTA
    assert read_mail_unsubscribe_token(local[2:], b"o" * 32) is None  # another key: forged
    assert read_unsubscribe_token(local[2:], KEY) is None  # never valid as the link's token
    # Without a queue id (never with Postfix) only the link is given.
    assert ", " not in dict(lists.headers("crm", "news", "bob@x.example"))["List-Unsubscribe"]


def test_list_id_is_bracketed() -> None:
    assert list_id_value("news.shop.example") == "<news.shop.example>"


def test_a_lists_headers_carry_a_token_for_that_recipient() -> None:
    headers = dict(ListUnsubscribe("https://r.example/u", None, KEY).headers("crm", "news", "Bob@X.example"))
    token = headers["List-Unsubscribe"].removeprefix("<https://r.example/u/").removesuffix(">")
    found = read_unsubscribe_token(token, KEY)
    assert found is not None and (found.user, found.list, found.recipient) == ("crm", "news", "bob@x.example")
    assert read_unsubscribe_token(token, b"o" * 32) is None


@pytest.mark.parametrize(
    ("tag", "text"),
    [
        pytest.param(Tag("4jdfvM0wYyzJVF1", "bcc"), "4jdfvM0wYyzJVF1 bcc", id="old-two-fields"),
        pytest.param(Tag("ABC12", "each", "news", "crm"), "ABC12 each news crm", id="list-and-user"),
        pytest.param(
            Tag("ABC12", "each", "news letter/ü", "a b%c@x"),
            "ABC12 each news%20letter%2F%C3%BC a%20b%25c%40x",
            id="odd-names-percent-encoded",
        ),
    ],
)
def test_tag_round_trip(tag: Tag, text: str) -> None:
    assert tag.render() == text
    assert Tag.parse(text) == tag


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("ABC12 each news", id="three-fields"),
        pytest.param("ABC12 each news crm extra", id="five-fields"),
        pytest.param("ABC12 each %FF crm", id="list-not-utf8"),
    ],
)
def test_tag_parse_refuses_bad_shapes(text: str) -> None:
    assert Tag.parse(text) is None


@pytest.mark.parametrize(
    ("recipient", "to", "rewritten"),
    [
        pytest.param("b@x", b"To: <b@x>", True, id="blind-recipient-own-to"),
        pytest.param("a@x", b"To: a@x", False, id="named-recipient-keeps-to-loses-first-signature"),
    ],
)
def test_a_copy_replaces_the_headers_it_is_given(recipient: str, to: bytes, rewritten: bool) -> None:
    raw = (
        b"From: s@x\r\nTo: a@x\r\nList-Unsubscribe: <https://evil.example>\r\nX-SMTPPlus-Fanout: Q1 each n u\r\n"
        b"DKIM-Signature: v=1; h=from:to:list-unsubscribe:list-unsubscribe\r\n\r\nbody\r\n"
    )
    extra = (("List-Unsubscribe", "<https://r.example/u/t>"), ("List-Unsubscribe-Post", ONE_CLICK))
    copy = make_copy(raw, recipient, extra_headers=extra)
    assert copy.problem is None and copy.rewritten is rewritten
    assert copy.data == (
        b"From: s@x\r\n" + to + b"\r\nList-Unsubscribe: <https://r.example/u/t>\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\nbody\r\n"
    )


def test_a_token_of_the_session_matches_make_unsubscribe_token() -> None:
    # The milter and the filter must make the same token for the same recipient.
    value = dict(ListUnsubscribe("https://r.example/u", None, KEY).headers("crm", "news", "b@x"))["List-Unsubscribe"]
    assert value == f"<https://r.example/u/{make_unsubscribe_token('crm', 'news', 'b@x', KEY)}>"
