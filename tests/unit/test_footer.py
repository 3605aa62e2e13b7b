"""Header/footer injection: golden .eml pairs, what is left alone, and targeted checks.

Each ``tests/data/footer/NAME.in.eml`` is a hand-written message (LF line breaks in the file; every
case also runs with CRLF, as Postfix passes bodies). For cases that get the footer,
``NAME.out.eml`` is the expected message: the input's header block with ``header_changes``
applied, then the new body. Regenerate with ``SMTPPLUS_REGEN_GOLDEN=1`` and *read the diff*.
"""

from __future__ import annotations

import base64
import email
import io
import os
import re
import tempfile
from email.message import Message
from pathlib import Path

import pytest

from smtpplus_milter.mime import footer as footer_module
from smtpplus_milter.mime.footer import Banner, InjectionResult, inject
from tests.support.mime import apply_header_changes, split_message

DATA = Path(__file__).resolve().parent.parent / "data" / "footer"
MARKER = "smtpplus-footer"
REGEN = os.environ.get("SMTPPLUS_REGEN_GOLDEN") == "1"

FULL = Banner(
    header_text="Sent via the Shop relay",
    header_html='<p class="banner">Sent via the Shop relay</p>',
    footer_text="Shop Inc., 1 Main St, Springfield\nUnsubscribe: https://shop.example/u",
    footer_html='<p class="footer">Shop Inc., 1 Main St, Springfield<br><a href="https://shop.example/u">Unsubscribe</a></p>',
)
TEXT_ONLY = Banner(footer_text="Shop Inc. <legal@shop.example>\nAll rights reserved.")
HTML_ONLY = Banner(footer_html="<p>Shop &amp; Co.<br>Legal notice</p>")
GRUSSE = "Grüße \u2013 €"  # the en dash is in neither us-ascii nor iso-8859-1
UMLAUT = Banner(footer_text=GRUSSE)
LATIN = Banner(footer_text="Grüße aus Köln")


def with_eol(data: bytes, eol: bytes) -> bytes:
    return data if eol == b"\n" else data.replace(b"\n", b"\r\n")


def run(name: str, banner: Banner, eol: bytes = b"\n") -> tuple[bytes, InjectionResult]:
    raw = with_eol((DATA / f"{name}.in.eml").read_bytes(), eol)
    _, headers, body = split_message(raw)
    return raw, inject(headers, body, banner, marker=MARKER)


def rendered(raw: bytes, result: InjectionResult, eol: bytes) -> bytes:
    block, _, _ = split_message(raw)
    assert result.body is not None
    return apply_header_changes(block, result.header_changes, eol) + result.body


def max_line(data: bytes) -> int:
    return max(len(line.rstrip(b"\r")) for line in data.split(b"\n"))


ADDED = [
    pytest.param("plain-7bit-ascii", FULL, (), id="plain-7bit-us-ascii"),
    pytest.param("plain-no-mime-headers", FULL, (), id="plain-no-mime-headers-no-final-eol"),
    pytest.param(
        "plain-7bit-ascii-nofit",
        UMLAUT,
        ("Content-Type", "Content-Transfer-Encoding"),
        id="plain-us-ascii-footer-does-not-fit",
    ),
    pytest.param("plain-8bit-utf8", UMLAUT, (), id="plain-8bit-utf8-fits"),
    pytest.param(
        "plain-8bit-latin1-nofit",
        UMLAUT,
        ("Content-Type", "Content-Transfer-Encoding"),
        id="plain-8bit-latin1-footer-does-not-fit",
    ),
    pytest.param("plain-qp-latin1", LATIN, (), id="plain-qp-latin1-fits"),
    pytest.param("plain-base64-utf8", FULL, (), id="plain-base64-utf8"),
    pytest.param("html-body-uppercase", FULL, (), id="html-uppercase-body-with-attributes"),
    pytest.param("html-no-body", TEXT_ONLY, (), id="html-fragment-text-variant-only"),
    pytest.param("alternative-qp", HTML_ONLY, (), id="alternative-qp-html-variant-only"),
    pytest.param("mixed-pdf", FULL, (), id="mixed-with-pdf"),
    pytest.param("related-image", FULL, (), id="related-inline-image"),
    pytest.param("nested-mixed-alt-related", FULL, (), id="mixed-alternative-related"),
    pytest.param("attached-message", FULL, (), id="attached-message"),
    pytest.param("attachment-first", FULL, (), id="named-inline-text-is-an-attachment"),
]


@pytest.mark.parametrize("eol", [pytest.param(b"\n", id="lf"), pytest.param(b"\r\n", id="crlf")])
@pytest.mark.parametrize(("name", "banner", "changed"), ADDED)
def test_golden(name: str, banner: Banner, changed: tuple[str, ...], eol: bytes) -> None:
    raw, result = run(name, banner, eol)
    assert result.status == "added", result.reason
    assert tuple(name for name, _ in result.header_changes if name != "MIME-Version") == changed
    out = rendered(raw, result, eol)
    golden = DATA / f"{name}.out.eml"
    if REGEN and eol == b"\n":
        golden.write_bytes(out)
    assert out == with_eol(golden.read_bytes(), eol)
    assert max_line(out) <= 998
    if eol == b"\r\n":
        assert re.search(rb"(?<!\r)\n", out) is None, "a bare LF in a CRLF message"
    else:
        assert b"\r" not in out
    message = email.message_from_bytes(out, policy=email.policy.default)
    assert not any(part.defects for part in message.walk())


LEFT_ALONE = [
    pytest.param("skip-signed", "skipped", "multipart/signed", id="multipart-signed"),
    pytest.param("skip-encrypted", "skipped", "multipart/encrypted", id="multipart-encrypted"),
    pytest.param("skip-pkcs7", "skipped", "application/pkcs7-mime", id="pkcs7-mime"),
    pytest.param("skip-pkcs7-nested", "skipped", "application/x-pkcs7-mime", id="pkcs7-mime-inside-mixed"),
    pytest.param("skip-inline-pgp", "skipped", "inline PGP", id="inline-pgp"),
    pytest.param("skip-dkim", "skipped", "DKIM-Signature", id="dkim-signed"),
    pytest.param("skip-already-text", "skipped", "already has the footer", id="already-has-text-footer"),
    pytest.param("skip-already-html-marker", "skipped", "already has the footer", id="already-has-html-marker"),
    pytest.param("skip-no-text", "skipped", "no displayed", id="no-text-part"),
    pytest.param(
        "bad-missing-close", "unchanged-malformed", "missing its closing boundary", id="missing-closing-boundary"
    ),
    pytest.param(
        "bad-no-boundary-param", "unchanged-malformed", "without a boundary parameter", id="no-boundary-parameter"
    ),
    pytest.param("bad-base64", "unchanged-malformed", "bad base64", id="bad-base64"),
    pytest.param("bad-unknown-charset", "unchanged-malformed", "unknown charset 'x-klingon'", id="unknown-charset"),
    pytest.param("bad-broken-utf8", "unchanged-malformed", "not valid utf-8", id="broken-utf8"),
    pytest.param(
        "bad-8bit-header", "unchanged-malformed", "8-bit characters in the 'Subject' header", id="8bit-top-header"
    ),
    pytest.param(
        "bad-8bit-part-header",
        "unchanged-malformed",
        "8-bit bytes in the headers of a MIME part",
        id="8bit-part-header",
    ),
    pytest.param("bad-long-line", "unchanged-malformed", "a line of 2000 octets", id="line-of-2000-octets"),
]


@pytest.mark.parametrize("eol", [pytest.param(b"\n", id="lf"), pytest.param(b"\r\n", id="crlf")])
@pytest.mark.parametrize(("name", "status", "reason"), LEFT_ALONE)
def test_left_alone(name: str, status: str, reason: str, eol: bytes) -> None:
    _, result = run(name, FULL, eol)
    assert (result.status, result.body, result.header_changes) == (status, None, ())
    assert reason in result.reason
    assert not (DATA / f"{name}.out.eml").exists()


def test_every_input_file_is_in_a_table() -> None:
    names = {param.values[0] for param in ADDED + LEFT_ALONE}
    assert {path.name.removesuffix(".in.eml") for path in DATA.glob("*.in.eml")} == names
    assert {path.name.removesuffix(".out.eml") for path in DATA.glob("*.out.eml")} == {p.values[0] for p in ADDED}


# ---- targeted checks: what the golden files show, asserted independently of them


def parsed(out: bytes) -> Message:
    return email.message_from_bytes(out, policy=email.policy.default)


def text_of(part: Message) -> str:
    content = part.get_content()  # type: ignore[attr-defined]
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def section(raw: bytes, start: bytes, end: bytes) -> bytes:
    begin = raw.index(start)
    return raw[begin : raw.index(end, begin + len(start))]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_pdf_attachment_and_epilogue_are_byte_identical(eol: bytes) -> None:
    raw, result = run("mixed-pdf", FULL, eol)
    out = rendered(raw, result, eol)
    attachment = section(raw, b"Content-Type: application/pdf", b"--mix-1")
    assert attachment in out
    second = section(
        raw, b"Content-Type: text/plain; charset=us-ascii" + eol + b"Content-Disposition: inline", b"--mix-1--"
    )
    assert second in out
    assert out.endswith(eol + b"Epilogue text." + eol)
    parts = list(parsed(out).walk())
    assert [p.get_content_type() for p in parts] == ["multipart/mixed", "text/plain", "application/pdf", "text/plain"]
    assert parts[2].get_content().startswith(b"%PDF-1.4")  # type: ignore[attr-defined]
    assert text_of(parts[1]) == (
        "Sent via the Shop relay\n\nYour invoice is attached.\n\n"
        "Shop Inc., 1 Main St, Springfield\nUnsubscribe: https://shop.example/u\n"
    )
    assert "Shop Inc." not in text_of(parts[3])


def test_related_keeps_boundaries_content_ids_and_image() -> None:
    raw, result = run("related-image", FULL, b"\r\n")
    out = rendered(raw, result, b"\r\n")
    assert section(raw, b"Content-Type: image/png", b"--rel-1--") in out
    assert out.count(b"--rel-1\r\n") == 2 and out.count(b"--rel-1--") == 1
    html = text_of(next(p for p in parsed(out).walk() if p.get_content_type() == "text/html"))
    assert html.startswith('<html><body>\n<!-- smtpplus-footer -->\n<p class="banner">')
    assert html.endswith(
        '<img src="cid:logo@shop.example">\n<!-- smtpplus-footer -->\n' + FULL.footer_html + "\n</body></html>"
    )  # type: ignore[operator]


def test_nested_parts_each_variant_once_and_attachments_identical() -> None:
    raw, result = run("nested-mixed-alt-related", FULL, b"\r\n")
    out = rendered(raw, result, b"\r\n")
    assert section(raw, b"Content-Type: image/png", b"--=_outer-alt-rel--") in out
    assert section(raw, b"Content-Type: application/pdf", b"--=_outer--") in out
    parts = {p.get_content_type(): p for p in parsed(out).walk()}
    assert text_of(parts["text/plain"]).count("Unsubscribe: https://shop.example/u") == 1
    assert text_of(parts["text/html"]).count(FULL.footer_html or "") == 1
    assert text_of(parts["text/html"]).count("<!-- smtpplus-footer -->") == 2


def test_attached_message_is_untouched() -> None:
    raw, result = run("attached-message", FULL)
    out = rendered(raw, result, b"\n")
    inner = section(raw, b"From: someone@example.net", b"--fwd--")
    assert inner in out
    assert out.count(b"Unsubscribe: https://shop.example/u") == 1
    assert out.index(b"Unsubscribe") < out.index(b"From: someone@example.net")


def test_named_inline_text_is_treated_as_attachment() -> None:
    raw, result = run("attachment-first", FULL)
    out = rendered(raw, result, b"\n")
    assert section(raw, b"Content-Type: text/plain", b"--af\n") in out
    assert result.reason == "added to text/html"


@pytest.mark.parametrize(
    ("name", "banner", "content_type"),
    [
        pytest.param("plain-7bit-ascii-nofit", UMLAUT, "text/plain; charset=utf-8; format=flowed", id="us-ascii"),
        pytest.param("plain-8bit-latin1-nofit", UMLAUT, "text/plain; charset=utf-8", id="latin1"),
    ],
)
def test_footer_outside_the_charset_becomes_utf8_qp(name: str, banner: Banner, content_type: str) -> None:
    raw, result = run(name, banner, b"\r\n")
    assert result.header_changes == (
        ("Content-Type", content_type),
        ("Content-Transfer-Encoding", "quoted-printable"),
    )
    assert result.body is not None and result.body.endswith(b"\r\n\r\nGr=C3=BC=C3=9Fe =E2=80=93 =E2=82=AC\r\n")
    body = text_of(parsed(rendered(raw, result, b"\r\n")))
    assert body.endswith((f"unterwegs.\n\n{GRUSSE}\n", f"shipped.\n\n{GRUSSE}\n"))


@pytest.mark.parametrize(
    ("name", "expected_cte", "expected_body"),
    [
        pytest.param(
            "plain-8bit-utf8", "8bit", f"Hallo Jürgen,\n\nIhre Bestellung ist unterwegs.\n\n{GRUSSE}\n", id="8bit-utf8"
        ),
        pytest.param(
            "plain-qp-latin1",
            "quoted-printable",
            "Hallo Jürgen,\n\nIhre Bestellung ist unterwegs. Diese Zeile ist absichtlich lang genug, dass sie weich umbrochen wird.\n\nGrüße aus Köln\n",
            id="qp-latin1",
        ),
    ],
)
def test_charset_and_encoding_kept_when_the_footer_fits(name: str, expected_cte: str, expected_body: str) -> None:
    banner = LATIN if "latin1" in name else UMLAUT
    raw, result = run(name, banner)
    assert result.header_changes == ()
    message = parsed(rendered(raw, result, b"\n"))
    assert message["Content-Transfer-Encoding"] == expected_cte
    assert text_of(message) == expected_body


def test_base64_part_stays_base64_with_canonical_line_breaks() -> None:
    _, result = run("plain-base64-utf8", FULL, b"\r\n")
    assert result.header_changes == ()
    assert result.body is not None
    decoded = base64.b64decode(result.body)
    assert (
        decoded
        == (
            "Sent via the Shop relay\r\n\r\nHallo Jürgen,\r\n\r\nIhre Bestellung ist unterwegs.\r\n\r\n"
            "Shop Inc., 1 Main St, Springfield\r\nUnsubscribe: https://shop.example/u\r\n"
        ).encode()
    )


def test_derived_variants() -> None:
    raw, result = run("html-no-body", TEXT_ONLY)
    html = text_of(parsed(rendered(raw, result, b"\n")))
    assert html.endswith("<p>Shop Inc. &lt;legal@shop.example&gt;<br>\nAll rights reserved.</p>\n")
    raw, result = run("alternative-qp", HTML_ONLY)
    plain = text_of(
        next(p for p in parsed(rendered(raw, result, b"\n")).walk() if p.get_content_type() == "text/plain")
    )
    assert plain.endswith("unterwegs.\n\nShop & Co.\nLegal notice\n")


def test_html_banner_after_body_tag_footer_before_closing_tag() -> None:
    raw, result = run("html-body-uppercase", FULL)
    html = text_of(parsed(rendered(raw, result, b"\n")))
    assert '<BODY class="x" style="margin:0">\n<!-- smtpplus-footer -->\n<p class="banner">' in html
    assert html.endswith("</a></p>\n</BODY>\n</HTML>\n")


def test_a_footer_line_over_998_octets_forces_quoted_printable() -> None:
    long_footer = Banner(footer_text="x" * 1200)
    headers = [("Content-Type", "text/plain; charset=us-ascii"), ("Content-Transfer-Encoding", "7bit")]
    result = inject(headers, b"Hello\r\n", long_footer, marker=MARKER)
    # The footer fits us-ascii, so only the encoding changes; MIME-Version comes with it when missing.
    assert result.header_changes == (("Content-Transfer-Encoding", "quoted-printable"), ("MIME-Version", "1.0"))
    assert result.body is not None and max_line(result.body) <= 76


@pytest.mark.parametrize(
    ("kind"),
    [
        pytest.param("bytes", id="bytes"),
        pytest.param("bytesio", id="bytesio"),
        pytest.param("file", id="real-file-mmap"),
    ],
)
def test_body_as_file_object(kind: str) -> None:
    raw = with_eol((DATA / "mixed-pdf.in.eml").read_bytes(), b"\r\n")
    _, headers, body = split_message(raw)
    expected = inject(headers, body, FULL, marker=MARKER)
    if kind == "bytes":
        result = inject(headers, body, FULL, marker=MARKER)
    elif kind == "bytesio":
        result = inject(headers, io.BytesIO(body), FULL, marker=MARKER)
    else:
        with tempfile.TemporaryFile() as spool:
            spool.write(body)
            result = inject(headers, spool, FULL, marker=MARKER)
    assert result == expected and result.status == "added"


def test_empty_file_body() -> None:
    with tempfile.TemporaryFile() as spool:
        result = inject([("Content-Type", "text/plain")], spool, FULL, marker=MARKER)
    assert result.status == "added"
    assert (
        result.body
        == b"Sent via the Shop relay\r\n\r\n\r\nShop Inc., 1 Main St, Springfield\r\nUnsubscribe: https://shop.example/u\r\n"
    )


def nested(depth: int) -> tuple[list[tuple[str, str]], bytes]:
    body = b"Content-Type: text/plain\r\n\r\ninnermost\r\n"
    for level in range(depth, 0, -1):
        body = b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n%s--b%d--\r\n" % (
            level,
            level,
            body,
            level,
        )
    return [("Content-Type", "multipart/mixed; boundary=b0")], b"--b0\r\n" + body + b"--b0--\r\n"


def test_nesting_limit() -> None:
    headers, body = nested(19)
    assert inject(headers, body, FULL, marker=MARKER).status == "added"
    headers, body = nested(20)
    result = inject(headers, body, FULL, marker=MARKER)
    assert (result.status, result.reason) == ("unchanged-malformed", "MIME parts nested deeper than 20 levels")


@pytest.mark.parametrize(
    ("headers", "body", "status", "reason"),
    [
        pytest.param([], b"Hi\r\n", "skipped", "no header or footer", id="empty-banner"),
        pytest.param(
            [("Content-Type", "text/plain"), ("Content-Type", "text/html")],
            b"Hi\r\n",
            "unchanged-malformed",
            "2 content-type headers",
            id="two-content-types",
        ),
        pytest.param(
            [("Content-Type", "text/plain"), ("Content-Transfer-Encoding", "x-uuencode")],
            b"Hi\r\n",
            "unchanged-malformed",
            "unknown Content-Transfer-Encoding",
            id="unknown-cte",
        ),
        pytest.param(
            [("Content-Type", "text/plain; charset=base64")],
            b"Hi\r\n",
            "unchanged-malformed",
            "unknown charset",
            id="codec-that-is-not-a-charset",
        ),
        pytest.param(
            [("Content-Type", "text/calendar")], b"BEGIN:VCALENDAR\r\n", "skipped", "no displayed", id="calendar"
        ),
        pytest.param(
            [("Content-Type", "text/plain"), ("Content-Disposition", "attachment")],
            b"Hi\r\n",
            "skipped",
            "no displayed",
            id="attachment-only",
        ),
        pytest.param(
            [("Content-Type", "multipart/mixed; boundary=x")],
            b"no boundary line\r\n",
            "unchanged-malformed",
            "no boundary line",
            id="boundary-never-used",
        ),
        pytest.param(
            [("Content-Type", "multipart/mixed; boundary=x")],
            b"--x\r\nnot a header\r\n--x--\r\n",
            "unchanged-malformed",
            "malformed header block",
            id="part-header-garbage",
        ),
    ],
)
def test_edge_cases(headers: list[tuple[str, str]], body: bytes, status: str, reason: str) -> None:
    banner = Banner() if reason == "no header or footer" else FULL
    result = inject(headers, body, banner, marker=MARKER)
    assert (result.status, result.body) == (status, None)
    assert reason in result.reason


def test_unexpected_exception_is_an_error_with_no_body(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(footer_module, "_splice", boom)
    result = inject([("Content-Type", "text/plain")], b"Hi\r\n", FULL, marker=MARKER)
    assert result == InjectionResult("error", "RuntimeError: boom")


def test_marker_must_fit_in_an_html_comment() -> None:
    with pytest.raises(ValueError, match="marker"):
        inject([], b"Hi\r\n", FULL, marker="x --> <script>")


def test_boundary_prefix_of_nested_boundary() -> None:
    body = (
        b"--a\r\nContent-Type: multipart/alternative; boundary=a-1\r\n\r\n"
        b"--a-1\r\nContent-Type: text/plain\r\n\r\nplain\r\n--a-1\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--a-1--\r\n"
        b"--a\r\nContent-Type: image/gif\r\nContent-Transfer-Encoding: base64\r\n\r\nR0lGODlh\r\n--a--\r\n"
    )
    result = inject([("Content-Type", "multipart/mixed; boundary=a")], body, FULL, marker=MARKER)
    assert result.status == "added"
    assert result.reason == "added to text/plain, text/html"
    assert result.body is not None and result.body.endswith(
        b"--a\r\nContent-Type: image/gif\r\nContent-Transfer-Encoding: base64\r\n\r\nR0lGODlh\r\n--a--\r\n"
    )


def structure(headers: list[tuple[str, str]], body: bytes) -> list[tuple[str, str]]:
    """(content type, decoded text or '') of every part, as Python's email parser sees the message."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers).encode()
    message = email.message_from_bytes(head + b"\r\n" + body)
    out = []
    for part in message.walk():
        payload = part.get_payload(decode=True) if not part.is_multipart() else b""
        out.append((part.get_content_type(), (payload or b"").decode("ascii", "replace")))
    return out


@pytest.mark.parametrize("eol", [pytest.param(b"\n", id="lf"), pytest.param(b"\r\n", id="crlf")])
@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param(b"--B\n--B\nContent-Type: text/plain\n\nHello\n--B--\n", "added", id="empty-before-text"),
        pytest.param(
            b"--B\nContent-Type: image/gif\n\nGIF\n--B\n--B\nContent-Type: text/plain\n\nHello\n--B--\n",
            "added",
            id="empty-after-image",
        ),
        pytest.param(b"--B\nContent-Type: text/plain\n\nHello\n--B\n--B--\n", "added", id="empty-before-closing"),
        pytest.param(b"--B\n--B\n--B--\n", "skipped", id="only-empty"),
    ],
)
def test_empty_part_between_consecutive_boundary_lines_is_not_a_body(body: bytes, status: str, eol: bytes) -> None:
    headers = [("MIME-Version", "1.0"), ("Content-Type", "multipart/mixed; boundary=B")]
    body = with_eol(body, eol)
    result = inject(headers, body, TEXT_ONLY, marker=MARKER)
    assert result.status == status, result.reason
    if status == "skipped":
        assert result.reason == "no displayed text/plain or text/html body part"
        return
    assert result.body is not None
    before, after = structure(headers, body), structure(headers, result.body)
    assert [ctype for ctype, _ in after] == [ctype for ctype, _ in before]
    [(_, hello)] = [(ctype, text) for ctype, text in after if "Hello" in text]
    assert "All rights reserved." in hello
    assert sum("All rights reserved." in text for _, text in after) == 1


def test_blank_line_between_boundary_lines_is_an_empty_part() -> None:
    # "--B" CRLF CRLF "--B": an empty header block and an empty body. Python's parser sees that
    # part, so it is the first displayed body of the multipart/mixed and gets the footer.
    headers = [("Content-Type", "multipart/mixed; boundary=B")]
    body = b"--B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nHello\r\n--B--\r\n"
    result = inject(headers, body, TEXT_ONLY, marker=MARKER)
    assert result.status == "added" and result.body is not None
    after = structure(headers, result.body)
    assert [ctype for ctype, _ in after] == [ctype for ctype, _ in structure(headers, body)]
    assert "All rights reserved." in after[1][1] and after[2][1] == "Hello"


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        pytest.param('charset="iso-8859-1"', "unchanged-malformed", id="parameter-only"),
        pytest.param("plain; charset=us-ascii", "unchanged-malformed", id="no-subtype"),
        pytest.param("text/plain", "added", id="no-parameters"),
    ],
)
def test_content_type_without_type_and_subtype_is_not_rewritten(content_type: str, status: str) -> None:
    # Found by the property test: "charset=x" alone was rewritten to "charset; charset=utf-8".
    headers = [("From", "shop@example.com"), ("Content-Type", content_type), ("Content-Transfer-Encoding", "8bit")]
    result = inject(headers, b"Hello.\r\n", Banner(footer_text="Legal - Shop Inc."), marker="smtpplus-footer")
    assert result.status == status, result.reason
