"""Where each MIME part of a body lies, as byte offsets, and whether the structure is sound (PRODUCT §7).

The footer injector must leave every part it does not change byte-for-byte as it was, and
``email``'s generator re-folds headers and re-encodes payloads when it writes a message back. So
this module walks the boundary lines itself and records offsets; the stdlib parser (policy
``compat32``, which keeps values as they were) is used only to read each part's header block.

Anything that would make a rewrite a guess raises :class:`MalformedMime`: a multipart without a
boundary parameter or without its closing boundary, 8-bit bytes or broken lines in a header block,
a header that decides the structure given twice, nesting deeper than :data:`MAX_DEPTH`, and a
line longer than :data:`MAX_LINE` octets (in the body or a top-level header). A header the
stdlib would need superlinear time to read (over :data:`MAX_HEADER_BYTES`) and a spent
:class:`~smtpplus_milter.mime.limits.Deadline` raise
:class:`~smtpplus_milter.mime.limits.LimitExceeded` instead.

The body is any buffer that supports slicing and ``find`` (``bytes`` or an ``mmap`` of the spool
file), so a 20 MB attachment is scanned in place, never decoded or copied here.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import TypeAlias

from smtpplus_milter.mime.limits import Deadline, LimitExceeded, no_deadline

Buffer: TypeAlias = bytes | mmap.mmap

MAX_DEPTH = 20
MAX_LINE = 998  # octets, without the line break (RFC 5322 §2.1.1)
# The stdlib reads header parameters (email.message._parseparam) in time quadratic in the
# number of ';' inside a quoted value: a 160 KB Content-Type took 10 s. Real part headers are a
# few hundred bytes; past this the message is left unchanged (LimitExceeded).
MAX_HEADER_BYTES = 8 * 1024
_PARAM_HEADERS = ("content-type", "content-disposition")  # the headers whose parameters we read

# Multiparts whose inside we never need to look at: the message is left alone when one is present.
OPAQUE_MULTIPARTS = frozenset({"multipart/signed", "multipart/encrypted"})

# Headers that decide how a part is read; two different answers would make any rewrite a guess.
_SINGLE_HEADERS = ("content-type", "content-transfer-encoding")


class MalformedMime(Exception):
    """The body cannot be rewritten safely; the message must go out exactly as it came."""


@dataclass
class RawPart:
    """One MIME part. Offsets index the body buffer; ``end`` is exclusive.

    The line break before a boundary line belongs to the boundary (RFC 2046 §5.1.1), so
    ``body_end`` stops before it. For the top-level part there is no header block in the buffer
    (Postfix passes the headers separately): ``header_start == header_end == body_start == 0``.
    """

    header_start: int
    header_end: int  # just after the last header line's line break (or at body_end if it has none)
    body_start: int
    body_end: int
    headers: Message
    depth: int
    children: list[RawPart] = field(default_factory=list)

    @property
    def content_type(self) -> str:
        return self.headers.get_content_type()

    def walk(self) -> Iterator[RawPart]:
        yield self
        for child in self.children:
            yield from child.walk()


def headers_message(headers: Sequence[tuple[str, str]]) -> Message:
    """The top-level headers as the milter saw them, in a Message for ``email``'s parameter parsing."""
    message = Message()
    for name, value in headers:
        if not (name.isascii() and value.isascii()):
            raise MalformedMime(f"8-bit characters in the {name!r} header")
        if name.strip().lower() in _PARAM_HEADERS and len(value) > MAX_HEADER_BYTES:
            raise LimitExceeded(
                f"the {name} header is {len(value)} bytes, over the bound of {MAX_HEADER_BYTES} (MAX_HEADER_BYTES)"
            )
        lines = f"{name}: {value}".splitlines()
        if max(len(line) for line in lines) > MAX_LINE:
            raise MalformedMime(f"a line over {MAX_LINE} octets in the {name!r} header")
        message[name] = value
    _check_single(message, "the message")
    return message


def detect_eol(buf: Buffer) -> bytes:
    """The body's line break: CRLF as Postfix passes it, LF when a caller stored the body that way."""
    newline = buf.find(b"\n")
    if newline > 0 and buf[newline - 1 : newline] == b"\r":
        return b"\r\n"
    if newline >= 0:
        return b"\n"
    return b"\r\n"


def longest_line_over(buf: Buffer, limit: int = MAX_LINE) -> int | None:
    """Length of the first line longer than ``limit`` octets (line break excluded), else None.

    A ``find`` loop rather than a regex: a regex for "a long run without a newline" restarts at
    every byte of every line and turns quadratic in the line length; ``find`` is one pass.
    """
    pos, size = 0, len(buf)
    while pos < size:
        newline = buf.find(b"\n", pos)
        stop = size if newline < 0 else newline
        length = stop - pos
        if length > limit and buf[stop - 1 : stop] == b"\r":
            length -= 1
        if length > limit:
            return length
        if newline < 0:
            break
        pos = newline + 1
    return None


def parse_body(buf: Buffer, headers: Message, *, deadline: Deadline | None = None) -> RawPart:
    """The MIME tree of a body whose top-level headers are ``headers``.

    Raises :class:`MalformedMime`, and :class:`LimitExceeded` when ``deadline`` passes.
    """
    root = RawPart(0, 0, 0, len(buf), headers, 0)
    _expand(buf, root, deadline or no_deadline())
    return root


def _expand(buf: Buffer, part: RawPart, deadline: Deadline) -> None:
    # message/* parts are never opened: whatever is inside an attached message stays as it is.
    if part.headers.get_content_maintype() != "multipart" or part.content_type in OPAQUE_MULTIPARTS:
        return
    if part.depth >= MAX_DEPTH:
        raise MalformedMime(f"MIME parts nested deeper than {MAX_DEPTH} levels")
    boundary_text = part.headers.get_boundary()
    if not boundary_text:
        raise MalformedMime(f"{part.content_type} part without a boundary parameter")
    try:
        boundary = boundary_text.encode("ascii")
    except UnicodeEncodeError as exc:
        raise MalformedMime(f"non-ASCII boundary {boundary_text!r}") from exc
    digest = part.content_type == "multipart/digest"
    ranges = _part_ranges(buf, boundary, part.body_start, part.body_end, part.content_type, deadline)
    for start, end in ranges:
        deadline.check()
        child = _child(buf, start, end, part.depth + 1, digest)
        part.children.append(child)
        _expand(buf, child, deadline)


def _part_ranges(
    buf: Buffer, boundary: bytes, start: int, end: int, ctype: str, deadline: Deadline
) -> list[tuple[int, int]]:
    """Byte ranges of the parts between the boundary lines of one multipart body."""
    dashes = b"--" + boundary
    ranges: list[tuple[int, int]] = []
    part_start: int | None = None  # None while still in the preamble
    pos = start
    while True:
        deadline.check()
        hit = buf.find(dashes, pos, end)
        if hit < 0:
            if part_start is None:
                raise MalformedMime(f"{ctype} body has no boundary line for its boundary parameter")
            raise MalformedMime(f"{ctype} body is missing its closing boundary")
        pos = hit + len(dashes)
        if hit > start and buf[hit - 1 : hit] != b"\n":
            continue  # not at the start of a line: part of some content
        line_end = buf.find(b"\n", pos, end)
        line_stop = end if line_end < 0 else line_end
        rest = buf[pos:line_stop].rstrip(b"\r")
        closing = rest.startswith(b"--")
        if closing:
            rest = rest[2:]
        if rest.strip(b" \t"):
            continue  # "--boundary-more": a longer boundary of a nested part, or content
        if part_start is not None:
            part_end = hit
            if buf[hit - 2 : hit] == b"\r\n":
                part_end = hit - 2
            elif buf[hit - 1 : hit] == b"\n":
                part_end = hit - 1
            ranges.append((part_start, max(part_start, part_end)))
        if closing:
            return ranges  # anything after the closing line is the epilogue
        part_start = end if line_end < 0 else line_end + 1
        pos = part_start


def _child(buf: Buffer, start: int, end: int, depth: int, digest: bool) -> RawPart:
    if buf[start : start + 1] == b"\n":
        header_end, body_start = start, start + 1
    elif buf[start : start + 2] == b"\r\n":
        header_end, body_start = start, start + 2
    else:
        blank = _find_blank_line(buf, start, end)
        if blank is None:
            header_end = body_start = end  # headers only, no body
        else:
            header_end, body_start = blank
    if header_end - start > MAX_HEADER_BYTES:
        raise LimitExceeded(
            f"a MIME part header block of {header_end - start} bytes, over the bound of {MAX_HEADER_BYTES}"
            " (MAX_HEADER_BYTES)"
        )
    block = buf[start:header_end]
    if any(byte >= 0x80 for byte in block):
        raise MalformedMime("8-bit bytes in the headers of a MIME part")
    headers = BytesHeaderParser(policy=compat32).parsebytes(block)
    if headers.defects:
        raise MalformedMime(f"malformed header block in a MIME part ({type(headers.defects[0]).__name__})")
    if digest:
        headers.set_default_type("message/rfc822")
    _check_single(headers, "a MIME part")
    return RawPart(start, header_end, body_start, end, headers, depth)


def _find_blank_line(buf: Buffer, start: int, end: int) -> tuple[int, int] | None:
    """(header_end, body_start) for the first empty line in [start, end), else None."""
    pos = start
    while True:
        newline = buf.find(b"\n", pos, end)
        if newline < 0:
            return None
        after = newline + 1
        if buf[after : after + 1] == b"\n":
            return after, after + 1
        if buf[after : after + 2] == b"\r\n":
            return after, after + 2
        pos = after


def _check_single(headers: Message, where: str) -> None:
    for name in _SINGLE_HEADERS:
        values = headers.get_all(name) or []
        if len(values) > 1:
            raise MalformedMime(f"{len(values)} {name} headers in {where}")
