"""Sender authorization, table-driven, on users and policies built as values (no config file)."""

from __future__ import annotations

import pytest

from smtpplus_milter.core.authorization import decide_headers, decide_mail_from
from smtpplus_milter.core.decision import Spoofing, Verdict
from smtpplus_milter.core.explain import explain
from smtpplus_milter.core.users import Directory
from tests.support.builders import rules, shop_directory


@pytest.fixture
def block() -> Directory:
    return shop_directory()


@pytest.fixture
def alert() -> Directory:
    return shop_directory(mode="alert")


ACCEPT, REJECT = Verdict.ACCEPT, Verdict.REJECT

ENVELOPE_CASES = [
    pytest.param("shop-frontend", "<info@yourcompany.com>", ACCEPT, None, id="exact-domain"),
    pytest.param("shop-frontend", "<x@marketing.yourcompany.com>", ACCEPT, None, id="third-level-listed"),
    pytest.param(
        "shop-frontend", "<x@shop.yourcompany.com>", REJECT, "<x@shop.yourcompany.com>", id="unlisted-subdomain"
    ),
    pytest.param(
        "shop-frontend", "<x@evil-yourcompany.com>", REJECT, "<x@evil-yourcompany.com>", id="prefix-lookalike"
    ),
    pytest.param(
        "shop-frontend", "<x@yourcompany.com.evil.net>", REJECT, "<x@yourcompany.com.evil.net>", id="suffix-lookalike"
    ),
    pytest.param("shop-frontend", "<INFO@YourCompany.COM>", ACCEPT, None, id="case-domain"),
    pytest.param("shop-frontend", "<sales@other.example>", ACCEPT, None, id="case-sender"),
    pytest.param("shop-frontend", "<other@other.example>", REJECT, "<other@other.example>", id="sender-not-domain"),
    pytest.param("shop-frontend", "<info@partner.example>", ACCEPT, None, id="exact-sender"),
    pytest.param("shop-frontend", "<x@xn--bcher-kva.example>", ACCEPT, None, id="idn-punycode"),
    pytest.param("shop-frontend", "<x@BÜCHER.example>", ACCEPT, None, id="idn-unicode-upper"),
    pytest.param("shop-frontend", "<x@yourcompany.com.>", ACCEPT, None, id="trailing-dot"),
    pytest.param("shop-frontend", "<>", ACCEPT, None, id="null-sender"),
    pytest.param("shop-frontend", "<@relay.example:x@yourcompany.com>", ACCEPT, None, id="source-route"),
    pytest.param("shop-frontend", "<x@[192.0.2.1]>", REJECT, "sender not authorized", id="domain-literal"),
    pytest.param("shop-frontend", "<not-an-address>", REJECT, "sender not authorized", id="unparsable"),
    pytest.param("shop-frontend", "<x@@yourcompany.com>", REJECT, "sender not authorized", id="double-at"),
    pytest.param("shop-frontend", "<x@evil.net@yourcompany.com>", REJECT, "sender not authorized", id="two-ats"),
    pytest.param("SHOP-Frontend", "<info@yourcompany.com>", ACCEPT, None, id="login-case"),
    pytest.param("open-user", "<anyone@anywhere.example>", ACCEPT, None, id="empty-lists-allow-all"),
    pytest.param("disabled-user", "<x@yourcompany.com>", REJECT, "disabled", id="inactive-user"),
    pytest.param("nobody", "<x@yourcompany.com>", REJECT, "not an SMTP+ user", id="unknown-user-reject"),
    pytest.param("pending-user", "<new@b.example>", REJECT, "awaiting verification", id="pending-authorizes-nothing"),
    pytest.param("pending-user", "<x@a.example>", ACCEPT, None, id="pending-user-verified-domain"),
]


@pytest.mark.parametrize(("login", "mail_from", "verdict", "text"), ENVELOPE_CASES)
def test_envelope(block: Directory, login: str, mail_from: str, verdict: Verdict, text: str | None) -> None:
    decision = decide_mail_from(block, login, mail_from)
    assert decision.verdict is verdict, decision.reasons
    if verdict is REJECT:
        assert decision.reply is not None
        assert (decision.reply.code, decision.reply.xcode) == ("550", "5.7.1")
        assert text is not None and text in decision.reply.text
    else:
        assert decision.reply is None


def test_unauthorized_envelope_reply_text(block: Directory) -> None:
    decision = decide_mail_from(block, "shop-frontend", "<x@evil.net>")
    assert str(decision.reply) == "550 5.7.1 <x@evil.net>: sender not authorized for SMTP+ user shop-frontend"
    assert [item.field for item in decision.unauthorized] == ["envelope_from"]


def test_unknown_user_pass() -> None:
    decision = decide_mail_from(shop_directory(unknown_user="pass"), "nobody", "<x@evil.net>")
    assert decision.verdict is ACCEPT and decision.bypass


def test_unauthenticated_pass_and_reject(block: Directory) -> None:
    passed = decide_mail_from(block, None, "<x@evil.net>")
    assert passed.verdict is ACCEPT and passed.bypass
    strict = shop_directory(unauthenticated="reject")
    refused = decide_mail_from(strict, None, "<x@evil.net>")
    assert refused.verdict is REJECT and refused.reply is not None and refused.reply.code == "530"


def test_alert_mode_delivers_and_reports(alert: Directory) -> None:
    decision = decide_mail_from(alert, "shop-frontend", "<x@evil.net>")
    assert decision.verdict is ACCEPT and not decision.bypass
    assert [item.address for item in decision.unauthorized] == ["x@evil.net"]
    # A disabled user stays refused in alert mode: alert mode is about senders, not accounts.
    assert decide_mail_from(alert, "disabled-user", "<x@yourcompany.com>").verdict is REJECT


def test_envelope_check_can_be_turned_off() -> None:
    directory = shop_directory(checks=["header_from"])
    assert decide_mail_from(directory, "shop-frontend", "<x@evil.net>").verdict is ACCEPT


H = list[tuple[str, str]]
HEADER_CASES = [
    pytest.param([("From", "info@yourcompany.com")], ACCEPT, None, id="plain"),
    pytest.param([("From", '"Shop" <info@yourcompany.com>')], ACCEPT, None, id="display-name"),
    pytest.param([("From", "=?utf-8?q?J=C3=B6rg?= <info@yourcompany.com>")], ACCEPT, None, id="encoded-display-name"),
    pytest.param([("from", "info@yourcompany.com")], ACCEPT, None, id="lowercase-name"),
    pytest.param([("From", '"info@yourcompany.com" <x@evil.net>')], REJECT, "<x@evil.net>", id="display-name-spoof"),
    pytest.param([("From", "info@yourcompany.com <x@evil.net>")], REJECT, "sender not authorized", id="unquoted-spoof"),
    pytest.param(
        [("From", "info@yourcompany.com"), ("From", "x@evil.net")], REJECT, "2 From: headers", id="two-from-headers"
    ),
    pytest.param(
        [("From", "info@yourcompany.com"), ("From", "info@yourcompany.com")],
        REJECT,
        "2 From: headers",
        id="two-equal-from",
    ),
    pytest.param(
        [("From", "info@yourcompany.com, x@evil.net")], REJECT, "<x@evil.net>", id="two-addresses-one-foreign"
    ),
    pytest.param(
        [("From", "info@yourcompany.com, sales@marketing.yourcompany.com")], ACCEPT, None, id="two-addresses-ok"
    ),
    pytest.param(
        [("From", "=?utf-8?q?info@yourcompany.com?=")], REJECT, "sender not authorized", id="encoded-word-address"
    ),
    pytest.param(
        [("From", "=?utf-8?b?aW5mb0B5b3VyY29tcGFueS5jb20=?= <x@evil.net>")],
        REJECT,
        "<x@evil.net>",
        id="encoded-name-spoof",
    ),
    pytest.param([("Subject", "no from")], REJECT, "no From: header", id="missing-from"),
    pytest.param([("From", "undisclosed:;")], REJECT, "sender not authorized", id="empty-group"),
    pytest.param([("From", "")], REJECT, "sender not authorized", id="empty-from"),
    pytest.param([("From", "info@yourcompany.com\udcff")], REJECT, "sender not authorized", id="8bit-garbage"),
    pytest.param([("From", "Jörg <j@bücher.example>")], ACCEPT, None, id="idn-in-header"),
    # A raw Latin-1 name (not UTF-8: pymilter hands it over surrogate-escaped) is judged by the address.
    pytest.param([("From", "M\udcfcller <info@yourcompany.com>")], ACCEPT, None, id="latin1-display-name"),
    pytest.param(
        [("From", "M\udcfcller <x@evil.net>")], REJECT, "<x@evil.net>: sender", id="latin1-display-name-foreign"
    ),
    pytest.param(
        [("From", "info@yourcompany.com"), ("Sender", "x@evil.net")], REJECT, "<x@evil.net>", id="sender-foreign"
    ),
    pytest.param(
        [("From", "info@yourcompany.com"), ("Sender", "ops@marketing.yourcompany.com")], ACCEPT, None, id="sender-ok"
    ),
    pytest.param(
        [("From", "info@yourcompany.com"), ("Sender", "a@yourcompany.com, b@yourcompany.com")],
        REJECT,
        "sender not authorized",
        id="sender-two-addresses",
    ),
    pytest.param([("From", "Shop\n <info@yourcompany.com>")], ACCEPT, None, id="folded-from"),
]


@pytest.mark.parametrize(("headers", "verdict", "text"), HEADER_CASES)
def test_headers(block: Directory, headers: H, verdict: Verdict, text: str | None) -> None:
    user = block.lookup("shop-frontend")
    assert user is not None
    decision = decide_headers(block, user, headers)
    assert decision.verdict is verdict, decision.reasons
    if verdict is REJECT:
        assert decision.reply is not None and str(decision.reply).startswith("550 5.7.1 ")
        assert text is not None and text in decision.reply.text
        assert decision.unauthorized
    else:
        assert decision.reply is None and not decision.unauthorized


def test_from_reply_hints_reply_to(block: Directory) -> None:
    user = block.lookup("shop-frontend")
    assert user is not None
    decision = decide_headers(block, user, [("From", "visitor@gmail.example")])
    assert decision.reply is not None
    assert decision.reply.text.startswith("<visitor@gmail.example>: sender not authorized for SMTP+ user shop-frontend")
    assert "Reply-To" in decision.reply.text


def test_header_alert_mode(alert: Directory) -> None:
    user = alert.lookup("shop-frontend")
    assert user is not None
    decision = decide_headers(alert, user, [("From", "x@evil.net")])
    assert decision.verdict is ACCEPT
    assert [(item.field, item.address) for item in decision.unauthorized] == [("header_from", "x@evil.net")]


def test_open_user_any_header(block: Directory) -> None:
    user = block.lookup("open-user")
    assert user is not None
    assert decide_headers(block, user, [("From", "x@evil.net")]).verdict is ACCEPT


def test_reply_text_is_safe_for_smtp(block: Directory) -> None:
    user = block.lookup("shop-frontend")
    assert user is not None
    decision = decide_headers(block, user, [("From", "100% <bad\udcff@x>")])
    assert decision.reply is not None
    assert "%" not in decision.reply.text and all(" " <= ch <= "~" for ch in decision.reply.text)


def test_display_name_spoofing_is_reported_and_never_decides(block: Directory) -> None:
    user = block.lookup("shop-frontend")
    assert user is not None
    spoofed = decide_headers(block, user, [("From", '"ceo@bank.example" <info@yourcompany.com>')])
    assert spoofed.verdict is ACCEPT and not spoofed.unauthorized
    assert spoofed.spoofing == (Spoofing("header_from", "info@yourcompany.com", "ceo@bank.example", "display_name"),)
    # An unauthorized address is reported as unauthorized, not as spoofing as well.
    foreign = decide_headers(block, user, [("From", '"info@yourcompany.com" <x@evil.net>')])
    assert foreign.verdict is REJECT and foreign.spoofing == ()
    # A user without restriction is authorized for any address, so spoofing is reported for it too.
    anyone = block.lookup("open-user")
    assert anyone is not None
    assert decide_headers(block, anyone, [("From", '"ceo@bank.example" <me@x.example>')]).spoofing
    # explain carries it through to its final decision.
    explained = explain(
        rules(block),
        "shop-frontend",
        "<info@yourcompany.com>",
        [("From", "info@yourcompany.com (ceo@bank.example)")],
    )
    assert explained.accepted and [item.where for item in explained.decision.spoofing] == ["comment"]
