"""Header (banner) and footer injection that never breaks a message.

:func:`inject` takes what a milter sees at end of message (the top-level headers and the body)
and returns an :class:`InjectionResult`: either a new body plus the top-level header changes, or
the reason the message must go out unchanged. It never returns a half-rewritten body.

How a message is rewritten:

- **Which parts.** The displayed body only: ``text/plain`` and ``text/html`` parts that are not
  attachments (no ``Content-Disposition: attachment``, no file name), at top level or inside
  multipart/alternative, /mixed, /related and other multiparts. In multipart/mixed (and any
  other multipart) only the *first* displayed body gets the text, so an inline text part after
  an image is left alone; every variant of a multipart/alternative gets it; in
  multipart/related, the root part (the ``start`` parameter, else the first part) does.
  ``message/*`` parts are never opened. Two consecutive boundary lines enclose no part at all
  (see :mod:`smtpplus_milter.mime.rawparts`), so nothing there can receive the text.
- **Where.** Plain text: the banner, a blank line, the original text, a blank line, the footer.
  No ``-- `` separator is added: the footer is a disclaimer, not a signature, and a message that
  already has a signature would get two; an operator who wants one puts it in the footer text.
  HTML: the banner right after the ``<body ...>`` tag, the footer right before the last
  ``</body>`` (case-insensitive). Without ``<body>``, the banner goes after ``</head>``, else
  after ``<html ...>``, else after a ``<!DOCTYPE>``, else at the very start; without
  ``</body>``, the footer goes before ``</html>``, else at the end. The tags are found by a
  linear scan (:mod:`smtpplus_milter.mime.htmltags`), never by a backtracking regex.
- **Variants.** A text part gets the ``text`` variant, an HTML part the ``html`` variant; when a
  list has only one, the other is derived (:mod:`smtpplus_milter.mime.convert`).
- **Marker.** Each HTML insertion is preceded by ``<!-- {marker} -->``. Plain text has no
  invisible place for one, so there the configured text itself is the marker: a part that
  already contains the footer text (or, with no footer, the banner text), or the marker, makes
  the whole message "already has the footer" (forwarded or resent mail).
- **Encoding.** A changed part keeps its charset and Content-Transfer-Encoding when the new text
  is representable in the charset (and, for 7bit, is ASCII); otherwise it becomes UTF-8 and
  quoted-printable. A 7bit/8bit/binary part that would get a line over 998 octets becomes
  quoted-printable. A changed part's header block is rewritten field by field: only
  Content-Type and Content-Transfer-Encoding change, the other fields keep their bytes. For a
  single-part message those two go into :attr:`InjectionResult.header_changes` (plus
  ``MIME-Version`` if the message had none), because the milter changes top-level headers
  separately from the body.
- **Never.** Messages with a ``DKIM-Signature``, any multipart/signed, multipart/encrypted or
  application/pkcs7-mime part (outside attached messages), or inline PGP in a part we would
  change are skipped. Malformed input (see :mod:`smtpplus_milter.mime.rawparts`, plus bad
  base64, unknown or broken charsets and unknown transfer encodings in a part we would change)
  is left unchanged. A charset is known only when it is IANA-registered
  (:mod:`smtpplus_milter.mime.charsets`): Python-only codecs such as ``unicode_escape`` are not.
  Any other exception is reported as ``error`` with no body.
- **Bounds.** A message is hostile input processed while the milter holds the GIL, so one
  injection is bounded: a displayed HTML part over :data:`MAX_HTML_BYTES` or a plain text part
  over :data:`MAX_TEXT_BYTES` (transfer-decoded), a Content-Type/Content-Disposition or part
  header block over :data:`~smtpplus_milter.mime.rawparts.MAX_HEADER_BYTES`, or more than
  :data:`TIME_BUDGET` CPU seconds (checked at every boundary line, part and tag candidate) leave
  the message unchanged as ``unchanged-limit``, with the bound and its value in the reason.

Memory: a body passed as a real file is memory-mapped, not read, so the scan costs no heap;
only the parts that change are decoded. The new body is built with one ``b"".join`` over
slices of the input and the rewritten parts (linear). To stream it instead, :func:`_splice`'s
plan (ranges of the input interleaved with new bytes) can be written out range by range in
``replacebody``-sized chunks straight from the spool file; nothing else would have to change.
"""

from __future__ import annotations

import base64
import binascii
import io
import mmap
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from email.utils import encode_rfc2231
from typing import BinaryIO

from smtpplus_milter.mime.charsets import codec_for
from smtpplus_milter.mime.convert import html_to_text, text_to_html
from smtpplus_milter.mime.htmltags import banner_position, footer_position
from smtpplus_milter.mime.limits import Deadline, LimitExceeded
from smtpplus_milter.mime.rawparts import (
    MAX_LINE,
    MAX_PARTS,
    Buffer,
    MalformedMime,
    RawPart,
    detect_eol,
    headers_message,
    longest_line_over,
    parse_body,
)

ADDED = "added"
SKIPPED = "skipped"
MALFORMED = "unchanged-malformed"
LIMIT = "unchanged-limit"
ERROR = "error"

# Work bounds of one injection (docs/footer.md, "Bounds"); inject() takes each as a keyword.
# Decoded HTML is scanned for tags and spliced as text; 2 MiB is far above any real mail body.
MAX_HTML_BYTES = 2 * 1024 * 1024
# Plain text is only concatenated, but decoded it is held as bytes, str and the re-encoded copy at
# once; 10 MiB keeps that near 60 MB even for 4-byte characters, and is more text than anyone reads.
MAX_TEXT_BYTES = 10 * 1024 * 1024
# CPU seconds one injection may hold (thread time). A 20 MB message takes about 0.1 s.
TIME_BUDGET = 2.0

PROTECTED_TYPES = frozenset(
    {"multipart/signed", "multipart/encrypted", "application/pkcs7-mime", "application/x-pkcs7-mime"}
)
_PGP_MARKERS = ("-----BEGIN PGP SIGNED MESSAGE-----", "-----BEGIN PGP MESSAGE-----")
_KNOWN_CTES = frozenset({"7bit", "8bit", "binary", "quoted-printable", "base64"})
_UNENCODED = frozenset({"7bit", "8bit", "binary"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_MARKER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=-]*")
# The start of a Content-Type value: type "/" subtype, both tokens (anchored: linear).
_TYPE_SUBTYPE = re.compile(r"\s*[!#$%&'*+\-.^_`|~0-9A-Za-z]+\s*/\s*[!#$%&'*+\-.^_`|~0-9A-Za-z]+\s*(;|$)")


def safe_label(text: str) -> str:
    """A header value short enough for a log reason."""
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class Banner:
    """What one list wants added. Empty strings count as absent."""

    header_text: str | None = None
    header_html: str | None = None
    footer_text: str | None = None
    footer_html: str | None = None


@dataclass(frozen=True)
class InjectionResult:
    """The answer for one message; ``status`` is the ``smtpplus_footer_total{result}`` label.

    ``header_changes`` are (name, value) pairs meaning "set the first header of that name to
    value, adding it if absent"; only ever non-empty for a single-part message.
    """

    status: str  # "added" | "skipped" | "unchanged-malformed" | "unchanged-limit" | "error"
    reason: str
    body: bytes | None = None
    header_changes: tuple[tuple[str, str], ...] = ()


class _Skip(Exception):
    """The message is well-formed but must not be changed."""


@dataclass(frozen=True)
class _Variants:
    header_text: str | None
    header_html: str | None
    footer_text: str | None
    footer_html: str | None


@dataclass
class _TextPart:
    part: RawPart
    subtype: str  # "plain" | "html"
    charset: str  # as written in the header, or "us-ascii" by default
    codec: str  # the Python codec for it (mime/charsets.py)
    cte: str
    text: str
    eol: str  # the line break inside the decoded text
    raw_ends_with_eol: bool  # whether the encoded bytes ended with a line break


@dataclass(frozen=True)
class _Bounds:
    max_html_bytes: int
    max_text_bytes: int
    max_parts: int
    deadline: Deadline


def inject(
    headers: Sequence[tuple[str, str]],
    body: BinaryIO | bytes,
    banner: Banner,
    *,
    marker: str,
    max_html_bytes: int = MAX_HTML_BYTES,
    max_text_bytes: int = MAX_TEXT_BYTES,
    max_parts: int = MAX_PARTS,
    time_budget: float = TIME_BUDGET,
) -> InjectionResult:
    """Add ``banner`` to the displayed body of a message; see the module docstring for the rules.

    ``headers`` are the top-level headers as Postfix passes them; ``body`` is everything after the
    header block (CRLF or LF line breaks; the output keeps them), as bytes or as a binary file
    holding exactly the body from offset 0. ``marker`` is an identifier (letters, digits,
    ``._:/+=-``) written as an HTML comment; an unusable one is a programming error and raises
    ``ValueError``.

    The bounds: a displayed HTML part over ``max_html_bytes`` or a plain text part over
    ``max_text_bytes`` (after transfer decoding), or more than ``time_budget`` CPU seconds spent
    on this call, end it with ``unchanged-limit`` and a reason naming the bound. More than
    ``max_parts`` MIME parts make the body ``unchanged-malformed``.
    """
    if not _MARKER.fullmatch(marker):
        raise ValueError(f"marker {marker!r} must be letters, digits and ._:/+=- (it goes into an HTML comment)")
    try:
        bounds = _Bounds(max_html_bytes, max_text_bytes, max_parts, Deadline(time_budget))
        with _open_body(body) as buf:
            new_body, changes, reason = _inject(headers, buf, banner, marker, bounds)
        return InjectionResult(ADDED, reason, new_body, changes)
    except LimitExceeded as exc:
        return InjectionResult(LIMIT, str(exc))
    except MalformedMime as exc:
        return InjectionResult(MALFORMED, str(exc))
    except _Skip as exc:
        return InjectionResult(SKIPPED, str(exc))
    except Exception as exc:  # the contract: a bug here delivers the message unchanged, never half-done
        return InjectionResult(ERROR, f"{type(exc).__name__}: {exc}")


@contextmanager
def _open_body(body: BinaryIO | bytes) -> Iterator[Buffer]:
    if isinstance(body, bytes | bytearray | memoryview):
        yield bytes(body)
        return
    try:
        body.flush()
        fileno = body.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        body.seek(0)
        yield body.read()
        return
    try:
        mapped = mmap.mmap(fileno, 0, access=mmap.ACCESS_READ)
    except ValueError:  # an empty file cannot be mapped
        yield b""
        return
    try:
        yield mapped
    finally:
        mapped.close()


def _inject(
    headers: Sequence[tuple[str, str]], buf: Buffer, banner: Banner, marker: str, bounds: _Bounds
) -> tuple[bytes, tuple[tuple[str, str], ...], str]:
    variants = _variants(banner)
    if not (variants.header_text or variants.footer_text):
        raise _Skip("the list has no header or footer text")
    if any(name.strip().lower() == "dkim-signature" for name, _ in headers):
        raise _Skip("the message has a DKIM-Signature, which a changed body would break")
    top_headers = headers_message(headers)
    long_line = longest_line_over(buf)
    if long_line is not None:
        raise MalformedMime(f"a line of {long_line} octets in the body (the limit is {MAX_LINE})")
    eol = detect_eol(buf).decode("ascii")
    tree = parse_body(buf, top_headers, deadline=bounds.deadline, max_parts=bounds.max_parts)
    for part in tree.walk():
        if part.content_type in PROTECTED_TYPES:
            raise _Skip(f"the message has a {part.content_type} part, which a changed body would break")
    targets = _first_body(tree)
    if not targets:
        raise _Skip("no displayed text/plain or text/html body part")
    texts = [_decode(buf, part, eol, bounds) for part in targets]
    for text_part in texts:
        if any(pgp in text_part.text for pgp in _PGP_MARKERS):
            raise _Skip(f"inline PGP in the text/{text_part.subtype} part, which a changed body would break")
        if _already_there(text_part, variants, marker):
            raise _Skip(f"already has the footer (in the text/{text_part.subtype} part)")
    edits: list[tuple[int, int, bytes]] = []
    header_changes: tuple[tuple[str, str], ...] = ()
    notes: list[str] = []
    for text_part in texts:
        bounds.deadline.check()
        if text_part.subtype == "html":
            new_text = _add_html(text_part, variants, marker, bounds.deadline)
        else:
            new_text = _add_text(text_part, variants)
        charset, cte, payload = _encode(text_part, new_text, eol)
        part = text_part.part
        changes: list[tuple[str, str]] = []
        if charset != text_part.charset:
            changes.append(("Content-Type", _content_type_value(part.headers, charset)))
        if cte != text_part.cte:
            changes.append(("Content-Transfer-Encoding", cte))
        if changes:
            notes.append(f"text/{text_part.subtype} re-encoded as {charset} {cte}")
        if part is tree:
            if changes and part.headers.get("MIME-Version") is None:
                changes.append(("MIME-Version", "1.0"))
            header_changes = tuple(changes)
            edits.append((part.body_start, part.body_end, payload))
        else:
            head = _head_bytes(buf, part, changes, eol.encode("ascii"))
            edits.append((part.header_start, part.body_end, head + payload))
    bounds.deadline.check()
    kinds = ", ".join(f"text/{text_part.subtype}" for text_part in texts)
    reason = f"added to {kinds}" + (f" ({'; '.join(notes)})" if notes else "")
    return _splice(buf, edits), header_changes, reason


def _clean(value: str | None) -> str | None:
    """Configured text with LF line breaks and no blank lines around it; None when empty."""
    if value is None:
        return None
    cleaned = value.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    return cleaned if cleaned.strip() else None


def _variants(banner: Banner) -> _Variants:
    header_text, header_html = _clean(banner.header_text), _clean(banner.header_html)
    footer_text, footer_html = _clean(banner.footer_text), _clean(banner.footer_html)
    return _Variants(
        header_text=header_text or (_clean(html_to_text(header_html)) if header_html else None),
        header_html=header_html or (text_to_html(header_text) if header_text else None),
        footer_text=footer_text or (_clean(html_to_text(footer_html)) if footer_html else None),
        footer_html=footer_html or (text_to_html(footer_text) if footer_text else None),
    )


def _is_attachment(part: RawPart) -> bool:
    return part.headers.get_content_disposition() == "attachment" or part.headers.get_filename() is not None


def _first_body(part: RawPart) -> list[RawPart]:
    """The parts that make up the displayed body of ``part`` (empty when it has none)."""
    ctype = part.content_type
    displayable = ctype in ("text/plain", "text/html")
    # The type first: a part that can never be a displayed body is ruled out without reading
    # its other headers (rawparts parses a header block only when asked).
    if not (displayable or ctype.startswith("multipart/")) or _is_attachment(part):
        return []
    if displayable:
        return [part]
    if ctype == "multipart/alternative":
        return [found for child in part.children for found in _first_body(child)]
    if ctype == "multipart/related":
        root = _related_root(part)
        return _first_body(root) if root is not None else []
    for child in part.children:  # mixed and any other multipart: the first displayed body only
        found = _first_body(child)
        if found:
            return found
    return []


def _related_root(part: RawPart) -> RawPart | None:
    start = part.headers.get_param("start")
    if isinstance(start, str):
        wanted = start.strip().strip("<>")
        for child in part.children:
            if (child.headers.get("Content-ID") or "").strip().strip("<>") == wanted:
                return child
    return part.children[0] if part.children else None


def _decode(buf: Buffer, part: RawPart, eol: str, bounds: _Bounds) -> _TextPart:
    subtype = part.content_type.partition("/")[2]
    where = f"text/{subtype} part"
    declared = part.headers.get("Content-Type")
    if declared is not None and not _TYPE_SUBTYPE.match(str(declared)):
        # Readers fall back to text/plain, but rewriting the field would mean guessing what the
        # sender meant by it ("charset=x" alone once became "charset; charset=utf-8").
        raise MalformedMime(f"Content-Type {safe_label(str(declared))!r} has no type/subtype")
    cte = (part.headers.get("Content-Transfer-Encoding") or "7bit").strip().lower()
    if cte not in _KNOWN_CTES:
        raise MalformedMime(f"unknown Content-Transfer-Encoding {cte!r} in the {where}")
    raw = buf[part.body_start : part.body_end]
    if cte == "base64":
        try:
            data = base64.b64decode(b"".join(raw.split()), validate=True)
        except binascii.Error as exc:
            raise MalformedMime(f"bad base64 in the {where}: {exc}") from exc
    elif cte == "quoted-printable":
        data = binascii.a2b_qp(raw)
    else:
        data = raw
    limit, name = (
        (bounds.max_html_bytes, "MAX_HTML_BYTES") if subtype == "html" else (bounds.max_text_bytes, "MAX_TEXT_BYTES")
    )
    if len(data) > limit:
        raise LimitExceeded(f"the {where} is {len(data)} bytes decoded, over the bound of {limit} ({name})")
    bounds.deadline.check()
    charset = part.headers.get_param("charset")
    label = charset.strip() if isinstance(charset, str) and charset.strip() else "us-ascii"
    codec = codec_for(label)
    if codec is None:
        raise MalformedMime(f"unknown charset {label!r} in the {where} (not an IANA-registered MIME charset)")
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        raise MalformedMime(f"the {where} is not valid {label}: {exc.reason} at byte {exc.start}") from exc
    if "\r\n" in text:
        inner_eol = "\r\n"
    elif "\n" in text:
        inner_eol = "\n"
    else:  # nothing to go by: base64 content is canonical CRLF, anything else follows the message
        inner_eol = "\r\n" if cte == "base64" else eol
    return _TextPart(part, subtype, label, codec, cte, text, inner_eol, raw.endswith(b"\n"))


def _already_there(text_part: _TextPart, variants: _Variants, marker: str) -> bool:
    haystack = text_part.text.replace("\r\n", "\n")
    if f"<!-- {marker} -->" in haystack:
        return True
    if text_part.subtype == "html":
        needle = variants.footer_html or variants.header_html
    else:
        needle = variants.footer_text or variants.header_text
    return needle is not None and needle in haystack


def _lines(value: str, eol: str) -> str:
    return value.replace("\n", eol)


def _add_text(text_part: _TextPart, variants: _Variants) -> str:
    eol, text = text_part.eol, text_part.text
    if variants.header_text:
        text = _lines(variants.header_text, eol) + eol + eol + text
    if variants.footer_text:
        ended = text_part.text.endswith("\n") or not text_part.text
        if not text.endswith("\n"):
            text += eol
        text += eol + _lines(variants.footer_text, eol) + (eol if ended else "")
    return text


def _add_html(text_part: _TextPart, variants: _Variants, marker: str, deadline: Deadline) -> str:
    eol, text = text_part.eol, text_part.text
    comment = f"<!-- {marker} -->"
    start = banner_position(text, deadline.check)
    end = footer_position(text, deadline.check)
    if end < start:  # a stray </body> before <body>: append rather than insert inside the head
        end = len(text)
    head, middle, tail = text[:start], text[start:end], text[end:]
    if variants.header_html:
        snippet = comment + eol + _lines(variants.header_html, eol)
        head += _on_own_lines(head, snippet, middle + tail, eol)
    if variants.footer_html:
        snippet = comment + eol + _lines(variants.footer_html, eol)
        middle += _on_own_lines(head + middle, snippet, tail, eol)
    return head + middle + tail


def _on_own_lines(before: str, snippet: str, after: str, eol: str) -> str:
    """``snippet`` with the line breaks it needs to sit on lines of its own, and no blank lines."""
    lead = eol if before and not before.endswith("\n") else ""
    if after:
        trail = "" if after.startswith(("\n", "\r\n")) else eol
    else:  # at the very end: keep the text's "ends with a line break or not"
        trail = eol if before.endswith("\n") else ""
    return lead + snippet + trail


def _encode(text_part: _TextPart, new_text: str, eol: str) -> tuple[str, str, bytes]:
    """(charset, transfer encoding, encoded payload) for a changed part."""
    charset, cte = text_part.charset, text_part.cte
    try:
        data = new_text.encode(text_part.codec)
        fits = cte != "7bit" or data.isascii()
    except UnicodeEncodeError:
        fits = False
    if not fits:
        charset, cte = "utf-8", "quoted-printable"
        data = new_text.encode("utf-8")
    if cte in _UNENCODED and longest_line_over(data) is not None:
        cte = "quoted-printable"  # the charset fits; only the line length needs encoding
    eol_bytes = eol.encode("ascii")
    if cte == "base64":
        payload = base64.encodebytes(data).replace(b"\n", eol_bytes)
        if not text_part.raw_ends_with_eol:  # in a multipart, the last line break belongs to the boundary
            payload = payload.rstrip(b"\r\n")
    elif cte == "quoted-printable":
        # Hard line breaks of the text become the message's line breaks; a stray CR is data.
        lf_text = data.replace(b"\r\n", b"\n")
        payload = binascii.b2a_qp(lf_text, istext=True).replace(b"\r", b"=0D").replace(b"\n", eol_bytes)
    else:
        payload = data
    return charset, cte, payload


def _content_type_value(headers: Message, charset: str) -> str:
    """Content-Type with ``charset`` replaced, other parameters kept (compat32's set_param mangles them)."""
    params = headers.get_params() or [(headers.get_content_type(), "")]
    out = [params[0][0].strip() or headers.get_content_type(), f"charset={charset}"]
    for key, value in params[1:]:
        if key.strip().lower() == "charset":
            continue
        if isinstance(value, tuple):
            out.append(f"{key}*={encode_rfc2231(value[2], value[0], value[1])}")
        elif value == "":
            out.append(key)
        elif _TOKEN.fullmatch(value):
            out.append(f"{key}={value}")
        else:
            out.append(f'{key}="{value.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"')
    return "; ".join(out)


def _head_bytes(buf: Buffer, part: RawPart, changes: list[tuple[str, str]], eol: bytes) -> bytes:
    """The header block and blank line of a changed MIME part."""
    block = buf[part.header_start : part.header_end]
    if not changes and part.body_start > part.header_end:
        return buf[part.header_start : part.body_start]  # untouched, byte for byte
    if block and not block.endswith(b"\n"):
        block += eol  # a part that was headers only: its last line break belonged to the boundary
    if changes:
        block = _rewrite_fields(block, changes, eol)
    return block + eol


def _rewrite_fields(block: bytes, changes: list[tuple[str, str]], eol: bytes) -> bytes:
    """Replace the named fields' bytes (first occurrence), append absent ones, keep the rest as is."""
    fields: list[bytes] = []
    for line in block.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    pending = {name.lower(): f"{name}: {value}".encode("ascii") + eol for name, value in changes}
    out: list[bytes] = []
    for raw_field in fields:
        name = raw_field.split(b":", 1)[0].strip().decode("ascii").lower()
        out.append(pending.pop(name, raw_field))
    out.extend(pending.values())
    return b"".join(out)


def _splice(buf: Buffer, edits: list[tuple[int, int, bytes]]) -> bytes:
    """The input with each (start, end) range replaced; one join, so linear in the body size."""
    pieces: list[bytes | memoryview] = []
    pos = 0
    with memoryview(buf) as view:
        for start, end, replacement in sorted(edits, key=lambda edit: edit[0]):
            pieces.append(view[pos:start])
            pieces.append(replacement)
            pos = end
        pieces.append(view[pos:])
        result = b"".join(pieces)
        for piece in pieces:
            if isinstance(piece, memoryview):
                piece.release()
    return result
