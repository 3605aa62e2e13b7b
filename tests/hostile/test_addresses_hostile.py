"""Hostile From:/Sender: values and envelope senders: what a client can make the policy spend, and
what it must never get authorized by.

Each case here is something a logged-in client can send on purpose: huge or token-heavy headers,
thousands of addresses, values that would fill the parse memo.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Callable

import pytest

from smtpplus_milter.core import addresses
from smtpplus_milter.core.authorization import decide_headers, decide_mail_from
from smtpplus_milter.core.decision import Decision, Verdict
from smtpplus_milter.core.users import Directory, User
from tests.support.builders import shop_directory

# Generous for a loaded 2-core machine; an unbounded parse of these inputs takes 2-5 s.
FAST = 0.5


@pytest.fixture(scope="module")
def block() -> Directory:
    return shop_directory()


@pytest.fixture(scope="module")
def shop(block: Directory) -> User:
    user = block.lookup("shop-frontend")
    assert user is not None
    return user


def _from(block: Directory, user: User, value: str) -> Decision:
    return decide_headers(block, user, [("From", value)])


def _retained(work: Callable[[], None]) -> int:
    """Bytes still allocated after *work* returned (tracemalloc, after a collection)."""
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        work()
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return after - before


# --- size, token and address-count bounds ---------------------------------------------------


def test_header_over_the_size_bound_is_refused(block: Directory, shop: User) -> None:
    limit = addresses.MAX_HEADER_BYTES
    tail = " <info@yourcompany.com>"
    at_limit = "x" * (limit - len(tail)) + tail
    assert _from(block, shop, at_limit).verdict is Verdict.ACCEPT
    over = "x" + at_limit
    decision = _from(block, shop, over)
    assert decision.verdict is Verdict.REJECT
    assert f"From: header too long ({limit + 1} bytes, at most {limit})" in decision.unauthorized[0].reason


def test_size_bound_counts_bytes_not_characters(block: Directory, shop: User) -> None:
    # 'ö' is two bytes on the wire: this value is within the bound in characters, not in bytes.
    value = "ö" * (addresses.MAX_HEADER_BYTES // 2) + " <info@yourcompany.com>"
    decision = _from(block, shop, value)
    assert decision.verdict is Verdict.REJECT
    assert "header too long" in decision.unauthorized[0].reason


def test_eight_thousand_addresses_are_refused_fast(block: Directory, shop: User) -> None:
    value = ", ".join(f"user{i}@yourcompany.com" for i in range(8000))  # ~190 KB, every address allowed
    started = time.perf_counter()
    decision = _from(block, shop, value)
    elapsed = time.perf_counter() - started
    assert decision.verdict is Verdict.REJECT
    assert elapsed < FAST, f"{elapsed:.2f} s"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("," * 16000, id="commas"),
        pytest.param("a," * 8000, id="local-parts-without-domain"),
        pytest.param("i" + "." * 16000 + "@yourcompany.com", id="dots"),
        pytest.param("(a)" * 5000 + "info@yourcompany.com", id="comments"),
        pytest.param('"a" ' * 4000 + "<info@yourcompany.com>", id="quoted-strings"),
        pytest.param(", ".join(f"u{i}@yourcompany.com" for i in range(700)), id="700-addresses-in-16k"),
    ],
)
def test_token_heavy_header_is_refused_fast(block: Directory, shop: User, value: str) -> None:
    started = time.perf_counter()
    decision = _from(block, shop, value)
    elapsed = time.perf_counter() - started
    assert decision.verdict is Verdict.REJECT
    assert elapsed < FAST, f"{elapsed:.2f} s"


def test_address_count_bound(block: Directory, shop: User) -> None:
    limit = addresses.MAX_ADDRESSES
    allowed = [f"user{i}@yourcompany.com" for i in range(limit + 1)]
    assert _from(block, shop, ", ".join(allowed[:limit])).verdict is Verdict.ACCEPT
    decision = _from(block, shop, ", ".join(allowed))
    assert decision.verdict is Verdict.REJECT
    assert f"holds {limit + 1} addresses (at most {limit})" in decision.unauthorized[0].reason


def test_sender_header_has_the_same_bounds(block: Directory, shop: User) -> None:
    value = "x" * addresses.MAX_HEADER_BYTES + " <info@yourcompany.com>"
    decision = decide_headers(block, shop, [("From", "info@yourcompany.com"), ("Sender", value)])
    assert decision.verdict is Verdict.REJECT
    assert "Sender: header too long" in decision.unauthorized[0].reason


# --- the parse memo stays small ---------------------------------------------------------------


def test_rejected_huge_headers_are_not_retained(block: Directory, shop: User) -> None:
    """400 refused From: values with 100 KB display names once kept ~40 MB until restart."""

    def send() -> None:
        for i in range(400):
            assert _from(block, shop, f"{i:06d}" + "x" * 100_000 + " <ceo@bank.example>").rejected

    retained = _retained(send)
    assert retained < 2_000_000, f"{retained} bytes retained"


def test_long_allowed_values_do_not_grow_the_memo(block: Directory, shop: User) -> None:
    """A thousand distinct, long but authorized From: values: the memo does not keep them."""

    def send() -> None:
        for i in range(1000):
            assert not _from(block, shop, f"{i:06d}" + "x" * 4000 + " <info@yourcompany.com>").rejected

    retained = _retained(send)
    assert retained < 2_000_000, f"{retained} bytes retained"


def test_memo_keeps_only_short_values_with_few_addresses() -> None:
    """What the memo may hold is bounded per entry (length, addresses) and in entries."""
    memo = addresses._parse_memoised
    memo.cache_clear()
    addresses.parse_address_header("From", "x" * addresses.MEMO_MAX_BYTES + " <a@example.com>")
    many = ", ".join(f"u{i}@example.com" for i in range(addresses.MEMO_MAX_AT + 1))
    addresses.parse_address_header("From", many)
    assert memo.cache_info().currsize == 0
    for i in range(addresses.MEMO_ENTRIES + 50):
        addresses.parse_address_header("From", f"n{i} <a@example.com>")
    assert memo.cache_info().currsize == addresses.MEMO_ENTRIES
    # Worst case per entry: a MEMO_MAX_BYTES key, MEMO_MAX_AT addresses, their names and comments
    # (about 2.6 KB, measured): the memo stays under 6 MB.
    assert addresses.MEMO_ENTRIES * 2600 < 6_000_000


# --- NUL and other control characters ---------------------------------------------------------
# Postfix hands header values and the MAIL FROM argument to milters as C strings: with a NUL
# inside, the part we judge and the part that gets delivered may differ.

NUL_HEADERS = [
    pytest.param("info@yourcompany.com\x00, ceo@bank.example", id="nul-then-second-address"),
    pytest.param("info@yourcompany.com\x00", id="nul-at-end"),
    pytest.param("\x00info@yourcompany.com", id="nul-at-start"),
    pytest.param('"Shop\x00" <info@yourcompany.com>', id="nul-in-quoted-name"),
    pytest.param("Shop (a\x00b) <info@yourcompany.com>", id="nul-in-comment"),
    pytest.param("<info@yourcompany.com> \x00", id="nul-after-angle-addr"),
    pytest.param("Shop <info@yourcompany.com>,\x00", id="nul-after-comma"),
]


@pytest.mark.parametrize("value", NUL_HEADERS)
@pytest.mark.parametrize("name", ["From", "Sender"])
def test_nul_in_header_is_not_authorized(block: Directory, shop: User, name: str, value: str) -> None:
    headers = [("From", value)] if name == "From" else [("From", "info@yourcompany.com"), ("Sender", value)]
    decision = decide_headers(block, shop, headers)
    assert decision.verdict is Verdict.REJECT
    assert f"{name}: contains a NUL byte" in decision.unauthorized[0].reason, decision.reasons


@pytest.mark.parametrize(
    ("value", "described"),
    [
        pytest.param("Shop\x01 <info@yourcompany.com>", "control character 0x01", id="soh-in-name"),
        pytest.param("info@yourcompany.com\x1b[31m", "control character 0x1b", id="escape-sequence"),
        pytest.param("info@yourcompany.com\x0b", "control character 0x0b", id="vertical-tab"),
        pytest.param("info@yourcompany.com\x7f", "control character 0x7f", id="del"),
        pytest.param("(\x1b) info@yourcompany.com", "control character 0x1b", id="escape-in-comment"),
    ],
)
def test_control_characters_in_header_are_not_authorized(
    block: Directory, shop: User, value: str, described: str
) -> None:
    decision = _from(block, shop, value)
    assert decision.verdict is Verdict.REJECT
    assert f"From: contains {described}" in decision.unauthorized[0].reason, decision.reasons
    # A tab is whitespace in a header, not a control character to refuse.
    assert _from(block, shop, "Shop\t<info@yourcompany.com>\t(x)").verdict is Verdict.ACCEPT


@pytest.mark.parametrize(
    ("mail_from", "described"),
    [
        pytest.param("<@relay\x00:info@yourcompany.com>", "a NUL byte", id="nul-in-dropped-source-route"),
        pytest.param("<info@yourcompany.com\x00>", "a NUL byte", id="nul-before-bracket"),
        pytest.param("<info@yourcompany.com>\x00<ceo@bank.example>", "a NUL byte", id="nul-then-second-sender"),
        pytest.param("<info\x7f@yourcompany.com>", "control character 0x7f", id="del-in-local-part"),
        pytest.param("<info@yourcompany.com\t>", "control character 0x09", id="tab"),
    ],
)
def test_control_characters_in_mail_from_are_not_authorized(block: Directory, mail_from: str, described: str) -> None:
    decision = decide_mail_from(block, "shop-frontend", mail_from)
    assert decision.verdict is Verdict.REJECT
    assert f"MAIL FROM contains {described}" in decision.unauthorized[0].reason, decision.reasons


# --- raw 8-bit display names --------------------------------------------------------------------
# pymilter decodes header bytes as UTF-8 with surrogate escapes: a Latin-1 'ü' (0xFC) arrives as
# '\udcfc'. Such a name is decided by its address when the address part is clean ASCII.

EIGHT_BIT = "not authorized: From: raw 8-bit characters outside a display name or comment"
EIGHT_BIT_CASES = [
    pytest.param("M\udcfcller <info@yourcompany.com>", None, id="latin1-name"),
    pytest.param('"M\udcfcller, J\udcf6rg" <info@yourcompany.com>', None, id="latin1-quoted-name-with-comma"),
    pytest.param("info@yourcompany.com (M\udcfcller)", None, id="latin1-comment"),
    pytest.param("M\udcfcller <info@yourcompany.com> (B\udce4ckerei)", None, id="latin1-name-and-comment"),
    pytest.param("info(M\udcfcller)@yourcompany.com", None, id="latin1-comment-inside-addr-spec"),
    pytest.param("M\udcfcller\udcfc<info@yourcompany.com>", None, id="latin1-name-touching-bracket"),
    pytest.param("=?utf-8?q?M=C3=BCller?= \udcfc <info@yourcompany.com>", None, id="encoded-word-and-latin1"),
    pytest.param("Gr\udcfcppe: info@yourcompany.com;", None, id="latin1-group-name"),
    pytest.param(
        "M\udcfcller <info@yourcompany.com>, M\udcfcller <sales@marketing.yourcompany.com>",
        None,
        id="two-latin1-names-both-allowed",
    ),
    # The parser must read every address Postfix delivers, not stop at the 8-bit name.
    pytest.param(
        "M\udcfcller <info@yourcompany.com>, <ceo@bank.example>", "ceo@bank.example", id="second-address-seen"
    ),
    pytest.param(
        '"M\udcfcller" <info@yourcompany.com>, ceo@bank.example', "ceo@bank.example", id="second-bare-address-seen"
    ),
    pytest.param("M\udcfcller <ceo@bank.example>", "ceo@bank.example", id="latin1-name-foreign-address"),
    # 8-bit in the address itself stays refused.
    pytest.param("M\udcfcller <m\udcfcller@yourcompany.com>", EIGHT_BIT, id="latin1-local-part"),
    pytest.param("m\udcfcller@yourcompany.com", EIGHT_BIT, id="latin1-bare-local-part"),
    pytest.param('"m\udcfc"@yourcompany.com', EIGHT_BIT, id="latin1-quoted-local-part"),
    pytest.param("M\udcfcller <info@yourcompany.c\udcf6m>", EIGHT_BIT, id="latin1-domain"),
    pytest.param("info@yourcompany.com\udcff", EIGHT_BIT, id="latin1-after-bare-address"),
    # Encoded-words that hide an address stay refused whatever the name looks like.
    pytest.param(
        "M\udcfcller <=?utf-8?q?info@yourcompany.com?=>",
        "malformed (addr-spec local part with no domain)",
        id="encoded-word-in-angle-addr",
    ),
    pytest.param(
        "M\udcfcller <=?utf-8?q?info?=@yourcompany.com>",
        "malformed (missing trailing whitespace after encoded-word)",
        id="encoded-word-local-part",
    ),
]


@pytest.mark.parametrize(("value", "refused"), EIGHT_BIT_CASES)
def test_raw_8bit_display_names(block: Directory, shop: User, value: str, refused: str | None) -> None:
    decision = _from(block, shop, value)
    if refused is None:
        assert decision.verdict is Verdict.ACCEPT, decision.reasons
        return
    assert decision.verdict is Verdict.REJECT
    [bad] = decision.unauthorized
    if "@" in refused:
        assert bad.address == refused, decision.reasons  # judged by its address, not refused as unreadable
        assert "neither the address nor its domain is listed" in bad.reason
    else:
        assert refused in bad.reason, decision.reasons


# --- display-name spoofing ----------------------------------------------------------------------
# Authorized (the address decides) but what phishing looks like: reported, never refused.

SPOOF_CASES = [
    pytest.param('"ceo@bank.example" <info@yourcompany.com>', [("ceo@bank.example", "display_name")], id="quoted-name"),
    pytest.param("CEO ceo@bank.example <info@yourcompany.com>", [], id="unquoted-name-is-unreadable-and-refused"),
    pytest.param(
        "=?utf-8?q?ceo@bank.example?= <info@yourcompany.com>",
        [("ceo@bank.example", "display_name")],
        id="encoded-word-q",
    ),
    pytest.param(
        "=?utf-8?b?Y2VvQGJhbmsuZXhhbXBsZQ==?= <info@yourcompany.com>",
        [("ceo@bank.example", "display_name")],
        id="encoded-word-b",
    ),
    pytest.param("info@yourcompany.com (ceo@bank.example)", [("ceo@bank.example", "comment")], id="comment"),
    pytest.param(
        "info@yourcompany.com (=?utf-8?q?ceo=40bank.example?=)", [("ceo@bank.example", "comment")], id="encoded-comment"
    ),
    pytest.param(
        "info@yourcompany.com (a (ceo@bank.example) b)", [("ceo@bank.example", "comment")], id="nested-comment"
    ),
    pytest.param(
        '"ceo\uff20bank\uff0eexample" <info@yourcompany.com>',
        [("ceo@bank.example", "display_name")],
        id="fullwidth-at-and-dot",
    ),
    pytest.param(
        '"CEO <ceo@bank.example>" <info@yourcompany.com>', [("ceo@bank.example", "display_name")], id="angle-in-name"
    ),
    pytest.param(
        '"Bank ceo@bank.example": info@yourcompany.com;', [("ceo@bank.example", "display_name")], id="group-name"
    ),
    pytest.param(
        '"M\udcfcller ceo@bank.example" <info@yourcompany.com>',
        [("ceo@bank.example", "display_name")],
        id="latin1-name",
    ),
    pytest.param(
        '"sales@yourcompany.com" <info@yourcompany.com>',
        [("sales@yourcompany.com", "display_name")],
        id="same-domain-other-address",
    ),
    pytest.param(
        '"info@yourcompany.com.evil.example" <info@yourcompany.com>',
        [("info@yourcompany.com.evil.example", "display_name")],
        id="other-domain-same-prefix",
    ),
    pytest.param(
        '"ceo@bank.example, cfo@bank.example" <info@yourcompany.com>',
        [("ceo@bank.example", "display_name"), ("cfo@bank.example", "display_name")],
        id="two-shown",
    ),
    # Not spoofing: the name shows the real address, or nothing address-like.
    pytest.param('"INFO@YourCompany.COM" <info@yourcompany.com>', [], id="same-address-other-case"),
    pytest.param('"x@b\u00fccher.example" <x@xn--bcher-kva.example>', [], id="same-address-unicode-domain"),
    pytest.param('"Shop @ Your Company" <info@yourcompany.com>', [], id="spaced-at"),
    pytest.param('"Follow @shop" <info@yourcompany.com>', [], id="handle"),
]


@pytest.mark.parametrize(("value", "expected"), SPOOF_CASES)
def test_display_name_spoofing_is_found(
    block: Directory, shop: User, value: str, expected: list[tuple[str, str]]
) -> None:
    decision = _from(block, shop, value)
    if value.startswith("CEO "):
        assert decision.verdict is Verdict.REJECT  # the parser had to repair it: not authorized, as before
    else:
        assert decision.verdict is Verdict.ACCEPT, decision.reasons
    assert [(item.shown, item.where) for item in decision.spoofing] == expected
    assert {item.address for item in decision.spoofing} <= {"info@yourcompany.com"}


def test_spoofing_in_sender_header(block: Directory, shop: User) -> None:
    headers = [("From", "info@yourcompany.com"), ("Sender", '"ceo@bank.example" <sales@yourcompany.com>')]
    decision = decide_headers(block, shop, headers)
    assert decision.verdict is Verdict.ACCEPT
    assert [(item.field, item.address, item.shown) for item in decision.spoofing] == [
        ("header_sender", "sales@yourcompany.com", "ceo@bank.example")
    ]


def test_spoofing_text_is_safe_to_log(block: Directory, shop: User) -> None:
    decision = _from(block, shop, '"ce%o\udcfc@bank.example" <info@yourcompany.com>')
    [item] = decision.spoofing
    assert item.shown == "ce?o?@bank.example"


def test_spoofing_reports_are_bounded(block: Directory, shop: User) -> None:
    shown = ", ".join(f"ceo{i}@bank.example" for i in range(50))
    decision = _from(block, shop, f'"{shown}" <info@yourcompany.com>')
    assert decision.verdict is Verdict.ACCEPT
    assert [item.shown for item in decision.spoofing] == [f"ceo{i}@bank.example" for i in range(10)]


def test_memo_bounds_count_bytes_and_outer_comments_only() -> None:
    memo = addresses._parse_memoised
    memo.cache_clear()
    # 300 characters, 600 bytes: over the bound in bytes (non-ASCII strings take more memory).
    addresses.parse_address_header("From", "\u00e9" * 300 + " <a@example.com>")
    assert memo.cache_info().currsize == 0
    # Deep nesting must not multiply the comment text an entry keeps.
    nested = "(" * 60 + "x" * 100 + ")" * 60 + " a@example.com"
    [mailbox] = addresses.parse_mailboxes("From", nested)
    assert len(mailbox.comments) == 1 and sum(map(len, mailbox.comments)) < len(nested)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("x" * 16000, id="long-run"),
        pytest.param("x" * 16000 + "@", id="long-run-then-at"),
        pytest.param("x" * 8000 + "@" + "x" * 7900, id="at-in-the-middle-no-dot"),
    ],
)
def test_spoofing_search_on_a_long_name_is_fast(block: Directory, shop: User, name: str) -> None:
    started = time.perf_counter()
    decision = _from(block, shop, f'"{name}" <info@yourcompany.com>')
    elapsed = time.perf_counter() - started
    assert decision.verdict is Verdict.ACCEPT and decision.spoofing == ()
    assert elapsed < FAST, f"{elapsed:.2f} s"


def test_spoofing_order_is_stable_with_encoded_comments(block: Directory, shop: User) -> None:
    # The text as written first, then its decoded form: the same order in every process.
    decision = _from(block, shop, "info@yourcompany.com (=?utf-8?q?cfo=40bank.example?= ceo@bank.example)")
    assert [item.shown for item in decision.spoofing] == ["ceo@bank.example", "cfo@bank.example"]
