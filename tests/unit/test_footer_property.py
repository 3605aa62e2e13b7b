"""Header/footer injection, property-based: generated messages either come out unchanged or correct.

Messages are built with ``email.message.EmailMessage`` from random texts, charsets, transfer
encodings, attachments and nesting, and serialized with CRLF or LF. Every well-formed one must
get the footer, exactly once in each displayed part (which the generator knows independently of
the code under test), with every other part's decoded bytes unchanged. Randomly mutated ones may
be refused, but never with ``error``, and whatever is added must still parse.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
from dataclasses import dataclass, field
from email.message import EmailMessage, Message, MIMEPart

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from smtpplus_milter.mime.footer import Banner, inject
from tests.support.mime import apply_header_changes, split_message

FOOTER_TEXT = "Legal: Shop Inc. \u2013 Grüße"  # outside us-ascii and iso-8859-1: forces UTF-8 + QP there
FOOTER_HTML = "<p>Legal: Shop Inc. \u2013 Grüße</p>"
BANNERS = [
    Banner(footer_text=FOOTER_TEXT, footer_html=FOOTER_HTML),
    Banner(header_text="Sent via Shop", footer_text=FOOTER_TEXT, footer_html=FOOTER_HTML),
]

ALPHABETS = {
    "us-ascii": st.characters(min_codepoint=0x20, max_codepoint=0x7E),
    "iso-8859-1": st.characters(codec="latin-1", exclude_categories=["Cc", "Cs"]),
    "utf-8": st.characters(codec="utf-8", exclude_categories=["Cc", "Cs", "Zl", "Zp"]),
}
CTES = {"us-ascii": ["7bit", "quoted-printable", "base64"], "iso-8859-1": ["8bit", "quoted-printable", "base64"]}
CTES["utf-8"] = CTES["iso-8859-1"]


@dataclass
class Built:
    part: MIMEPart
    displayed: list[MIMEPart] = field(default_factory=list)


@st.composite
def text_parts(draw: st.DrawFn, subtype: str) -> Built:
    charset = draw(st.sampled_from(sorted(ALPHABETS)))
    # No markup characters in the words: the model places the HTML footer by the tags we write.
    words = st.text(ALPHABETS[charset].filter(lambda c: c not in "<>&\r"), max_size=50)
    lines = draw(st.lists(words, max_size=5))
    body = "\n".join(line.rstrip() for line in lines) + draw(st.sampled_from(["", "\n"]))
    if subtype == "html":
        body = draw(
            st.sampled_from(
                ["<html><body>{}</body></html>", "<HTML><BODY bgcolor='x'>\n{}\n</BODY></HTML>\n", "<p>{}</p>"]
            )
        ).format(body)
    part = MIMEPart(policy=email.policy.default)
    part.set_content(body, subtype=subtype, charset=charset, cte=draw(st.sampled_from(CTES[charset])))
    return Built(part, [part])


@st.composite
def attachments(draw: st.DrawFn) -> Built:
    part = MIMEPart(policy=email.policy.default)
    kind = draw(st.sampled_from(["binary", "named-text", "image", "message"]))
    if kind == "binary":
        part.set_content(draw(st.binary(max_size=300)), "application", "octet-stream", filename="data.bin")
    elif kind == "named-text":
        part.set_content(
            draw(st.text(ALPHABETS["us-ascii"], max_size=80)),
            subtype="plain",
            filename="notes.txt",
            disposition="inline",
        )
    elif kind == "image":
        part.set_content(
            draw(st.binary(min_size=1, max_size=200)), "image", "png", cid="<img1@example>", disposition="inline"
        )
    else:
        inner = EmailMessage()
        inner["Subject"] = "forwarded"
        inner.set_content(draw(st.text(ALPHABETS["us-ascii"], max_size=80)))
        part.set_content(inner)
    return Built(part)


def multipart(draw: st.DrawFn, subtype: str, children: list[Built], displayed: list[MIMEPart]) -> Built:
    part = MIMEPart(policy=email.policy.default)
    # Drawn, not left to email's generator: that uses the random module, which Hypothesis cannot replay.
    part["Content-Type"] = f'multipart/{subtype}; boundary="=_{draw(st.uuids()).hex}"'
    for child in children:
        part.attach(child.part)
    return Built(part, displayed)


@st.composite
def related(draw: st.DrawFn) -> Built:
    html = draw(text_parts("html"))
    image = MIMEPart(policy=email.policy.default)
    image.set_content(draw(st.binary(min_size=1, max_size=100)), "image", "gif", cid="<logo@example>")
    return multipart(draw, "related", [html, Built(image)], html.displayed)


@st.composite
def alternative(draw: st.DrawFn) -> Built:
    plain = draw(text_parts("plain"))
    html = draw(st.one_of(text_parts("html"), related()))
    return multipart(draw, "alternative", [plain, html], plain.displayed + html.displayed)


@st.composite
def mixed(draw: st.DrawFn, depth: int) -> Built:
    bodies = st.one_of(text_parts("plain"), text_parts("html"), alternative(), related())
    if depth > 0:
        bodies = st.one_of(bodies, mixed(depth - 1))
    children = draw(st.lists(st.one_of(bodies, attachments()), min_size=1, max_size=4))
    first = next((child.displayed for child in children if child.displayed), [])
    return multipart(draw, "mixed", children, first)


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """(serialized message, walk indices of the displayed parts)."""
    built = draw(st.one_of(text_parts("plain"), text_parts("html"), alternative(), related(), mixed(2)))
    message = built.part
    message["From"] = "shop@example.com"
    message["Subject"] = "order"
    message["MIME-Version"] = "1.0"
    displayed = [id(part) for part in built.displayed]
    indices = [index for index, part in enumerate(message.walk()) if id(part) in displayed]
    linesep = draw(st.sampled_from(["\r\n", "\n"]))
    return message.as_bytes(policy=email.policy.SMTP.clone(linesep=linesep)), indices


def parse(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=email.policy.default)


def decoded(part: Message) -> bytes | str | None:
    if part.is_multipart():
        return None
    if part.get_content_maintype() == "text":
        content = part.get_content()  # type: ignore[attr-defined]
        assert isinstance(content, str)
        return content.replace("\r\n", "\n")
    payload = part.get_payload(decode=True)
    assert payload is None or isinstance(payload, bytes)
    return payload


def run(raw: bytes, banner: Banner) -> tuple[str, bytes | None]:
    block, headers, body = split_message(raw)
    result = inject(headers, body, banner, marker="smtpplus-footer")
    assert result.status != "error", result.reason
    if result.status != "added":
        assert (result.body, result.header_changes) == (None, ())
        return result.status, None
    eol = b"\r\n" if raw.find(b"\r\n") >= 0 else b"\n"
    assert result.body is not None
    out = apply_header_changes(block, result.header_changes, eol) + result.body
    assert max(len(line.rstrip(b"\r")) for line in out.split(b"\n")) <= 998
    if eol == b"\r\n" and re.search(rb"(?<!\r)\n", raw) is None:
        assert re.search(rb"(?<!\r)\n", out) is None
    return result.status, out


# SMTPPLUS_PROPERTY_EXAMPLES=5000 for a longer hunt; 200 keeps the unit run at a few seconds.
SETTINGS = settings(
    max_examples=int(os.environ.get("SMTPPLUS_PROPERTY_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(messages(), st.sampled_from(BANNERS))
def test_generated_messages_get_the_footer_once_per_displayed_part(
    message: tuple[bytes, list[int]], banner: Banner
) -> None:
    raw, displayed = message
    status, out = run(raw, banner)
    if not displayed:  # e.g. a multipart/mixed of attachments only
        assert status == "skipped"
        return
    assert status == "added"
    assert out is not None
    before, after = list(parse(raw).walk()), list(parse(out).walk())
    assert [p.get_content_type() for p in before] == [p.get_content_type() for p in after]
    for index, (old, new) in enumerate(zip(before, after, strict=True)):
        old_content, new_content = decoded(old), decoded(new)
        if index not in displayed:
            assert new_content == old_content, f"part {index} ({old.get_content_type()}) changed"
            continue
        assert isinstance(old_content, str) and isinstance(new_content, str)
        needle = FOOTER_HTML if new.get_content_subtype() == "html" else FOOTER_TEXT
        assert new_content.count(needle) == 1
        if new.get_content_subtype() == "plain":
            assert old_content in new_content
    assert not any(part.defects for part in after)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    raw, _ = draw(messages())
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        index = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "delete", "insert", "newline"]))
        if action == "flip":
            data[index] = draw(st.integers(0, 255))
        elif action == "delete":
            del data[index : index + draw(st.integers(1, 40))]
        elif action == "insert":
            data[index:index] = draw(st.sampled_from([b"\xff", b"--", b"\r\n", b"=", b"\n\n", b"x" * 1000]))
        else:
            data[index:index] = b"\n"
    return bytes(data)


# Found by this test: an attachment whose charset the stdlib cannot read (a NUL in it).
NUL_CHARSET_ATTACHMENT = (
    b'From: a@b.example\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
    b"--B\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nHello\r\n"
    b'--B\r\nContent-Type: text/plain; charset="us-ascii\x00"\r\n'
    b"Content-Disposition: attachment; filename=a.txt\r\n\r\nData\r\n--B--\r\n"
)


@SETTINGS
@given(mutated(), st.sampled_from(BANNERS))
@example(NUL_CHARSET_ATTACHMENT, BANNERS[0])
def test_mutated_messages_are_unchanged_or_still_parse(raw: bytes, banner: Banner) -> None:
    if re.search(rb"\r?\n\r?\n", raw) is None:
        return  # no header/body split left: nothing a milter would see as a body
    status, out = run(raw, banner)
    assert status in {"added", "skipped", "unchanged-malformed"}
    if out is not None:
        # A part the stdlib cannot read in the original (e.g. a NUL in an attachment's charset)
        # is left byte for byte, so it stays unreadable; every other part must read.
        unreadable = _unreadable(parse(raw))
        for part in parse(out).walk():
            try:
                decoded(part)
            except (LookupError, ValueError, UnicodeError):
                assert str(part.get("Content-Type")) in unreadable, part.get("Content-Type")


def _unreadable(message: Message) -> set[str]:
    """The Content-Type values of the parts of *message* that the stdlib cannot decode."""
    found: set[str] = set()
    for part in message.walk():
        try:
            decoded(part)
        except Exception:
            found.add(str(part.get("Content-Type")))
    return found
