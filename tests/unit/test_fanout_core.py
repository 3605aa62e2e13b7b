"""One recipient's copy of a split message (core/fanout.py): what is removed, replaced and kept."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpplus_milter.core.fanout import MODES, TAG, Copy, Tag, make_copy, named, needs_fanout

CRLF = b"\r\n"
TAGGED = b"X-SMTPPlus-Fanout: 4AbC12 bcc"
EACH = b"X-SMTPPlus-Fanout: 4AbC12 each"
BODY = b"Hello,\r\nTo: not-a-header@example.com\r\nBcc: also-body@example.com\r\n"


def msg(*lines: bytes, body: bytes = BODY, eol: bytes = CRLF) -> bytes:
    """A message of these header lines (a line may hold its own folding), an empty line and *body*."""
    return b"".join(line.replace(CRLF, eol) + eol for line in lines) + eol + body.replace(CRLF, eol)


# The first pass's message: a To: a, Cc: b, Bcc: c, signed, tagged.
ORIGINAL = msg(
    b"Received: from client by relay",
    b"From: Shop <shop@example.com>",
    b"To: Ann <a@example.com>",
    b"Cc: b@example.com",
    b"Bcc: c@example.com",
    b"Subject: Order 42",
    b"DKIM-Signature: v=1; a=rsa-sha256;\r\n\tb=abc",
    b"X-SMTPPlus-Queue: bulk",
    TAGGED,
)


@pytest.mark.parametrize(
    ("raw", "recipient", "expected", "rewritten"),
    [
        pytest.param(
            ORIGINAL,
            "c@example.com",
            msg(
                b"Received: from client by relay",
                b"From: Shop <shop@example.com>",
                b"To: <c@example.com>",
                b"Cc: b@example.com",
                b"Subject: Order 42",
                b"X-SMTPPlus-Queue: bulk",
            ),
            True,
            id="bcc-recipient-gets-own-to-and-loses-dkim",
        ),
        pytest.param(
            ORIGINAL,
            "<C@Example.com>",
            msg(
                b"Received: from client by relay",
                b"From: Shop <shop@example.com>",
                b"To: <C@Example.com>",
                b"Cc: b@example.com",
                b"Subject: Order 42",
                b"X-SMTPPlus-Queue: bulk",
            ),
            True,
            id="envelope-brackets-dropped-spelling-kept",
        ),
        pytest.param(
            ORIGINAL,
            "a@example.com",
            msg(
                b"Received: from client by relay",
                b"From: Shop <shop@example.com>",
                b"To: Ann <a@example.com>",
                b"Cc: b@example.com",
                b"Subject: Order 42",
                b"DKIM-Signature: v=1; a=rsa-sha256;\r\n\tb=abc",
                b"X-SMTPPlus-Queue: bulk",
            ),
            False,
            id="named-in-to-unchanged-but-bcc-and-tag",
        ),
        pytest.param(
            ORIGINAL,
            "B@EXAMPLE.COM",
            msg(
                b"Received: from client by relay",
                b"From: Shop <shop@example.com>",
                b"To: Ann <a@example.com>",
                b"Cc: b@example.com",
                b"Subject: Order 42",
                b"DKIM-Signature: v=1; a=rsa-sha256;\r\n\tb=abc",
                b"X-SMTPPlus-Queue: bulk",
            ),
            False,
            id="named-in-cc-any-case",
        ),
        pytest.param(
            msg(b"From: s@x", b"To: a@x,\r\n  Bob <b@x>,\r\n\t(c) d@x", b"Subject: s", TAGGED),
            "e@x",
            msg(b"From: s@x", b"To: <e@x>", b"Subject: s"),
            True,
            id="folded-multi-line-to-replaced-by-one-line",
        ),
        pytest.param(
            msg(b"To: a@x", b"From: s@x", b"to: b@x", TAGGED, b"TO :c@x"),
            "e@x",
            msg(b"To: <e@x>", b"From: s@x"),
            True,
            id="several-to-fields-become-one-where-the-first-was",
        ),
        pytest.param(
            msg(b"From: s@x", b"Subject: s", TAGGED),
            "e@x",
            msg(b"From: s@x", b"Subject: s", b"To: <e@x>"),
            True,
            id="no-to-at-all-one-added",
        ),
        pytest.param(
            msg(b"From: s@x", b"To: a@x", b"Cc: b@x", EACH, b"DKIM-Signature: v=1"),
            "a@x",
            msg(b"From: s@x", b"To: a@x", b"Cc: b@x", b"DKIM-Signature: v=1"),
            False,
            id="mode-each-keeps-a-named-recipients-to",
        ),
        pytest.param(
            msg(b"From: s@x", b"To: a@x", b"Cc: b@x", EACH, b"DKIM-Signature: v=1"),
            "c@x",
            msg(b"From: s@x", b"To: <c@x>", b"Cc: b@x"),
            True,
            id="mode-each-rewrites-an-unnamed-recipient",
        ),
        pytest.param(
            msg(
                b"From: s@x",
                b"Bcc: c@x",
                b"BCC: d@x",
                b"bcc : e@x",
                b"Bcc:",
                b"Bcc: ",
                b"Bcc: f@x,\r\n g@x",
                b"To: a@x",
                TAGGED,
            ),
            "a@x",
            msg(b"From: s@x", b"To: a@x"),
            False,
            id="bcc-in-every-form-removed",
        ),
        pytest.param(
            msg(b"From: s@x", b"To: a@x", TAGGED, b"DKIM-Signature: v=1", eol=b"\n"),
            "c@x",
            msg(b"From: s@x", b"To: <c@x>", eol=b"\n"),
            True,
            id="lf-only-stays-lf",
        ),
        pytest.param(
            msg(
                b"From: M\xfcller <s@x>",
                "To: Jürgen <a@x>".encode(),
                b"Subject: \xe4\xf6\xfc raw latin-1",
                TAGGED,
                body=b"\xff\xfe binary-ish\r\n",
            ),
            "c@x",
            msg(
                b"From: M\xfcller <s@x>",
                b"To: <c@x>",
                b"Subject: \xe4\xf6\xfc raw latin-1",
                body=b"\xff\xfe binary-ish\r\n",
            ),
            True,
            id="8bit-header-and-body-bytes-kept",
        ),
        pytest.param(
            msg(b"From: s@x", b"To: J\xfcrgen <a@x>", TAGGED),
            "a@x",
            msg(b"From: s@x", b"To: J\xfcrgen <a@x>"),
            False,
            id="8bit-display-name-recipient-still-named",
        ),
        pytest.param(
            b"From: s@x\r\nTo: a@x\r\n" + TAGGED + b"\r\n",
            "c@x",
            b"From: s@x\r\nTo: <c@x>\r\n",
            True,
            id="headers-only-no-separator",
        ),
        pytest.param(
            b"From: s@x\r\n" + TAGGED + b"\r\nSubject: last",
            "c@x",
            b"From: s@x\r\nSubject: last\r\nTo: <c@x>\r\n",
            True,
            id="headers-only-last-line-without-line-break",
        ),
        pytest.param(
            msg(b"From: s@x", b"To: undisclosed-recipients:;", TAGGED),
            "a@x",
            msg(b"From: s@x", b"To: <a@x>"),
            True,
            id="empty-group-names-nobody",
        ),
        pytest.param(
            msg(b"From: s@x", b"To: Friends: a@x, b@x;", TAGGED),
            "b@x",
            msg(b"From: s@x", b"To: Friends: a@x, b@x;"),
            False,
            id="group-member-named",
        ),
        pytest.param(
            msg(b"From: s@x", b'To: "Doe, John" <j@x>, k@x', TAGGED),
            "j@x",
            msg(b"From: s@x", b'To: "Doe, John" <j@x>, k@x'),
            False,
            id="quoted-comma-in-display-name",
        ),
        pytest.param(
            msg(b"From: s@x", b'To: "c@x" <a@x> (or c@x)', TAGGED),
            "c@x",
            msg(b"From: s@x", b"To: <c@x>"),
            True,
            id="address-only-in-display-name-and-comment-not-named",
        ),
    ],
)
def test_copy(raw: bytes, recipient: str, expected: bytes, rewritten: bool) -> None:
    copy = make_copy(raw, recipient)
    assert copy == Copy(expected, Tag("4AbC12", "each" if EACH in raw else "bcc"), rewritten)


@pytest.mark.parametrize(
    ("recipient", "expected"),
    [
        pytest.param(
            "c@x",
            msg(b"From: s@x", b"To: <c@x>", b"List-Unsubscribe: <https://u/t>", b"List-Unsubscribe-Post: One-Click"),
            id="rewritten",
        ),
        pytest.param(
            "a@x",
            msg(b"From: s@x", b"To: a@x", b"List-Unsubscribe: <https://u/t>", b"List-Unsubscribe-Post: One-Click"),
            id="named",
        ),
    ],
)
def test_extra_headers_go_last_before_the_body(recipient: str, expected: bytes) -> None:
    raw = msg(b"From: s@x", b"To: a@x", TAGGED)
    extra = (("List-Unsubscribe", "<https://u/t>"), ("List-Unsubscribe-Post", "One-Click"))
    assert make_copy(raw, recipient, extra_headers=extra).data == expected


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(("List-Unsubscribe", "<a>\r\nBcc: x@y"), id="line-break-in-value"),
        pytest.param(("Bad Name", "v"), id="blank-in-name"),
        pytest.param(("Name:", "v"), id="colon-in-name"),
        pytest.param(("X-Name", "caf\u00e9"), id="non-ascii-value"),
        pytest.param(("", "v"), id="empty-name"),
    ],
)
def test_extra_headers_that_are_no_field_are_refused(extra: tuple[str, str]) -> None:
    with pytest.raises(ValueError, match="extra header"):
        make_copy(ORIGINAL, "c@example.com", extra_headers=[extra])


@pytest.mark.parametrize(
    ("raw", "recipient", "tag", "problem"),
    [
        pytest.param(msg(b"From: s@x", b"To: a@x", b"Bcc: c@x"), "c@x", None, "no X-SMTPPlus-Fanout", id="no-tag"),
        pytest.param(
            msg(b"To: a@x", b"X-SMTPPlus-Fanout: garbage"), "c@x", None, "is not '<queue id> <mode>'", id="bad-tag"
        ),
        pytest.param(
            msg(b"To: a@x", TAGGED, b"X-SMTPPlus-Fanout: 5XYZ each"), "c@x", None, "2 different", id="two-tags"
        ),
        pytest.param(b"\r\n" + BODY, "c@x", None, "no header section", id="starts-with-empty-line"),
        pytest.param(b"\n" + BODY, "c@x", None, "no header section", id="starts-with-empty-lf-line"),
        pytest.param(b"", "c@x", None, "empty message", id="empty"),
        pytest.param(
            b"Hello there\r\n" + TAGGED + b"\r\n", "c@x", None, "not a header field", id="body-without-headers"
        ),
        pytest.param(msg(TAGGED, b"To: a@x", b"just text"), "c@x", None, "line 3 is not a header", id="line-no-field"),
        pytest.param(msg(b" folded first", TAGGED), "c@x", None, "line 1 is not a header", id="first-line-folded"),
        pytest.param(msg(b": no name", TAGGED), "c@x", None, "line 1 is not a header", id="empty-field-name"),
        pytest.param(msg(b"To: a@x", TAGGED), "", Tag("4AbC12", "bcc"), "cannot be written", id="empty-recipient"),
        pytest.param(
            msg(b"To: a@x", TAGGED), "c@x>\r\nBcc: d@x", Tag("4AbC12", "bcc"), "cannot be written", id="recipient-crlf"
        ),
        pytest.param(msg(b"To: a@x", TAGGED), "<>", Tag("4AbC12", "bcc"), "cannot be written", id="null-recipient"),
        pytest.param(
            msg(b"To: c@x, " + b"(" * 5000, TAGGED), "c@x", Tag("4AbC12", "bcc"), "RecursionError", id="parser-fails"
        ),
    ],
)
def test_what_cannot_be_read_goes_on_unchanged(raw: bytes, recipient: str, tag: Tag | None, problem: str) -> None:
    copy = make_copy(raw, recipient)
    assert copy.data is raw
    assert (copy.tag, copy.rewritten) == (tag, False)
    assert copy.problem is not None and problem in copy.problem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("4AbC12 bcc", Tag("4AbC12", "bcc"), id="short-id"),
        pytest.param("  4jdfvM0wYyzJVF1\teach ", Tag("4jdfvM0wYyzJVF1", "each"), id="long-id-blanks"),
        pytest.param("", None, id="empty"),
        pytest.param("4AbC12", None, id="no-mode"),
        pytest.param("4AbC12 BCC", None, id="mode-case"),
        pytest.param("4AbC12 all", None, id="unknown-mode"),
        pytest.param("4AbC12 bcc extra", None, id="three-words"),
        pytest.param("4A-C12 bcc", None, id="dash-in-id"),
        pytest.param("4AbC\x0012 bcc", None, id="nul-in-id"),
        pytest.param("Ünïcode bcc", None, id="non-ascii-id"),
        pytest.param("x" * 41 + " bcc", None, id="id-too-long"),
        pytest.param("=?utf-8?q?4AbC12?= bcc", None, id="encoded-word"),
    ],
)
def test_tag_parse(text: str, expected: Tag | None) -> None:
    assert Tag.parse(text) == expected


@given(queue_id=st.from_regex(r"[0-9A-Za-z]{1,40}", fullmatch=True), mode=st.sampled_from(MODES))
def test_tag_round_trip(queue_id: str, mode: str) -> None:
    tag = Tag(queue_id, mode)
    assert Tag.parse(tag.render()) == tag
    raw = msg(b"To: a@x", f"{TAG}: {tag.render()}".encode())
    assert make_copy(raw, "b@x").tag == tag


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param(["Ann <A@Example.COM>, b@x"], {"a@example.com", "b@x"}, id="lower-cased"),
        pytest.param(["a@x", "b@x (Bob)"], {"a@x", "b@x"}, id="several-values-comment"),
        pytest.param(['"Doe, John" <j@x>'], {"j@x"}, id="quoted-comma"),
        pytest.param(["undisclosed-recipients:;"], set(), id="empty-group"),
        pytest.param(["team: a@x, b@x;, c@x"], {"a@x", "b@x", "c@x"}, id="group-and-more"),
        pytest.param([""], set(), id="empty-value"),
        pytest.param([], set(), id="no-values"),
        pytest.param(["a@x, " + "(" * 5000], set(), id="unreadable-names-nobody"),
        pytest.param(["x@y, " * 10_001], set(), id="too-many-names-nobody"),
    ],
)
def test_named(values: list[str], expected: set[str]) -> None:
    assert named(values) == expected


@pytest.mark.parametrize(
    ("mode", "recipients", "expected"),
    [
        pytest.param(None, ["a@x", "z@x"], False, id="no-mode"),
        pytest.param("bcc", ["a@x", "B@X"], False, id="bcc-all-named"),
        pytest.param("bcc", ["<a@x>"], False, id="bcc-brackets"),
        pytest.param("bcc", ["a@x", "z@x"], True, id="bcc-one-not-named"),
        pytest.param("bcc", [], False, id="bcc-no-recipients"),
        pytest.param("each", ["a@x"], False, id="each-one"),
        pytest.param("each", ["a@x", "A@X"], False, id="each-same-twice"),
        pytest.param("each", ["a@x", "b@x"], True, id="each-two"),
    ],
)
def test_needs_fanout(mode: str | None, recipients: list[str], expected: bool) -> None:
    assert needs_fanout(mode, frozenset({"a@x", "b@x"}), recipients) is expected


def test_needs_fanout_refuses_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="unknown fanout mode 'all'"):
        needs_fanout("all", frozenset(), ["a@x", "b@x"])


_names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True).filter(
    lambda name: name.lower() not in {"to", "cc", "bcc", "dkim-signature", TAG.lower()}
)
_values = st.binary(max_size=60).map(lambda value: value.replace(b"\r", b"").replace(b"\n", b""))


@given(
    fields=st.lists(st.tuples(_names, _values), max_size=12),
    body=st.binary(max_size=200),
    eol=st.sampled_from([b"\r\n", b"\n"]),
)
def test_other_fields_and_the_body_are_kept_byte_for_byte(
    fields: list[tuple[str, bytes]], body: bytes, eol: bytes
) -> None:
    kept = b"".join(name.encode() + b":" + value + eol for name, value in fields)
    raw = b"To: a@x" + eol + b"Bcc: c@x" + eol + TAGGED + eol + kept + eol + body
    assert make_copy(raw, "c@x").data == b"To: <c@x>" + eol + kept + eol + body
    assert make_copy(raw, "a@x").data == b"To: a@x" + eol + kept + eol + body


def test_a_one_line_message_gets_crlf_line_ends() -> None:
    assert make_copy(TAGGED, "c@x") == Copy(b"To: <c@x>\r\n", Tag("4AbC12", "bcc"), True)
