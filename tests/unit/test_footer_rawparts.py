"""How rawparts reads part headers: a cheap scan for the type, the stdlib parser only on demand."""

from __future__ import annotations

from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

import pytest

from smtpplus_milter.mime.rawparts import MalformedMime, RawPart, longest_line_over, parse_body


def _only_child(block: bytes, digest: bool = False) -> RawPart:
    top = Message()
    top["Content-Type"] = f"multipart/{'digest' if digest else 'mixed'}; boundary=B"
    body = b"--B\r\n" + block + b"\r\nbody\r\n--B--\r\n"
    return parse_body(body, top).children[0]


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(b"Content-Type: image/png; name=a.png\r\n", id="simple"),
        pytest.param(b"content-TYPE: IMAGE/PNG\r\n", id="case"),
        pytest.param(b"Content-Type:\r\n application/pdf;\r\n name=x.pdf\r\n", id="folded-after-colon"),
        pytest.param(b"Content-Type: application/pdf\r\n ;name=x\r\nX-A: 1\r\n", id="folded-params"),
        pytest.param(b"Content-Type: image\r\n", id="no-slash-is-text-plain"),
        pytest.param(b"Content-Type: a/b/c\r\n", id="two-slashes-is-text-plain"),
        pytest.param(b"X-Other: 1\r\n", id="absent-is-default"),
        pytest.param(b"", id="empty-block"),
        pytest.param(b"Content-Type:  \t text/html ; charset=utf-8\r\n", id="spaces"),
        pytest.param(b"Content-ID: <a@b>\r\nContent-Type: multipart/alternative; boundary=C\r\n", id="multipart"),
        pytest.param(b"Content-Type : text/plain\r\n", id="space-before-colon-goes-to-the-stdlib"),
    ],
)
@pytest.mark.parametrize("digest", [False, True])
def test_scanned_type_agrees_with_email(block: bytes, digest: bool) -> None:
    expected = BytesHeaderParser(policy=compat32).parsebytes(block)
    if digest:
        expected.set_default_type("message/rfc822")
    if expected.defects:
        with pytest.raises(MalformedMime, match="malformed header block"):
            _only_child(block, digest)
        return
    try:
        child = _only_child(block, digest)
    except MalformedMime as exc:  # a multipart child without its own closing boundary
        assert "multipart/alternative" in str(exc)
        return
    assert child.content_type == expected.get_content_type()
    assert child.headers.get_content_type() == expected.get_content_type()


def test_headers_are_parsed_only_when_asked() -> None:
    body = (
        b"--B\r\nContent-Type: multipart/alternative; boundary=C\r\n\r\n"
        b"--C\r\nContent-Type: text/plain\r\n\r\nplain\r\n--C--\r\n"
        b"--B\r\nContent-Type: image/png\r\nContent-Disposition: attachment; filename=a.png\r\n\r\nPNG\r\n--B--\r\n"
    )
    top = Message()
    top["Content-Type"] = "multipart/mixed; boundary=B"
    tree = parse_body(body, top)
    alternative, image = tree.children
    assert alternative.parsed is not None  # its boundary was needed
    assert alternative.children[0].parsed is None and image.parsed is None
    assert image.content_type == "image/png"
    assert image.headers.get_filename() == "a.png"  # parsed on first use
    assert image.parsed is not None


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        pytest.param(
            b"Content-Type: text/plain\r\ncontent-type: text/html\r\n", "2 content-type headers", id="two-types"
        ),
        pytest.param(
            b"Content-Transfer-Encoding: 7bit\r\nContent-Transfer-Encoding: base64\r\n",
            "2 content-transfer-encoding headers",
            id="two-ctes",
        ),
        pytest.param(b" folded: first\r\n", "malformed header block", id="first-line-continuation"),
        pytest.param(b"no colon here\r\n", "malformed header block", id="no-colon"),
        pytest.param(b": empty name\r\n", "malformed header block", id="empty-name"),
        pytest.param(b"Content-Type: image/png\r\n\xe9: x\r\n", "8-bit bytes", id="8bit"),
    ],
)
def test_header_block_problems_are_still_found(block: bytes, reason: str) -> None:
    with pytest.raises(MalformedMime, match=reason):
        _only_child(block)


@pytest.mark.parametrize(
    ("buf", "expected"),
    [
        pytest.param(b"", None, id="empty"),
        pytest.param(b"x" * 998, None, id="unterminated-at-limit"),
        pytest.param(b"x" * 999, 999, id="unterminated-over"),
        pytest.param(b"x" * 998 + b"\r\n", None, id="crlf-at-limit"),
        pytest.param(b"x" * 998 + b"\r", None, id="unterminated-with-cr-at-limit"),
        pytest.param(b"x" * 999 + b"\n", 999, id="lf-over"),
        pytest.param(b"x" * 999 + b"\r\n", 999, id="crlf-over"),
        pytest.param(b"x" * 998 + b"\r\r\n", 999, id="second-cr-counts"),
        pytest.param((b"a\n" + b"b" * 997 + b"\n") * 3 + b"c" * 1000 + b"\n", 1000, id="after-mixed-lines"),
        pytest.param(b"\n" * 5000 + b"d" * 1200, 1200, id="after-many-empty-lines"),
        pytest.param((b"x" * 997 + b"\r\n") * 50, None, id="many-at-limit"),
    ],
)
def test_longest_line_over(buf: bytes, expected: int | None) -> None:
    assert longest_line_over(buf) == expected
