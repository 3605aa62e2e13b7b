"""Where each MIME part of a body lies, as byte offsets, and whether the structure is sound.

The footer injector must leave every part it does not change byte-for-byte as it was, and
``email``'s generator re-folds headers and re-encodes payloads when it writes a message back. So
this module walks the boundary lines itself and records offsets; the stdlib parser (policy
``compat32``, which keeps values as they were) is used only to read each part's header block.

Anything that would make a rewrite a guess raises :class:`MalformedMime`: a multipart without a
boundary parameter or without its closing boundary, 8-bit bytes or broken lines in a header block,
a header that decides the structure given twice, nesting deeper than :data:`MAX_DEPTH`, more than
:data:`MAX_PARTS` parts, and a line longer than :data:`MAX_LINE` octets (in the body or a
top-level header). Two consecutive boundary lines (no header block, not even a blank line
between them) enclose no part, as for ``email``'s parser; they are not reported as one.

Reading headers costs: ``email``'s parser builds a ``Message`` per block, and a body of 300,000
empty parts took 14.5 s and +184 MB. So each part's header block is first checked with a cheap
line scan that finds its Content-Type (enough for the structure and for the protected-type check,
which must see every part) and counts the fields that may not be doubled. The stdlib parses the
block only when a caller asks for :attr:`RawPart.headers` (multiparts for their boundary,
candidate text parts), or when the scan sees anything unusual, so that the stdlib's own judgement
(defects) decides those. A header the stdlib would need superlinear time to read (over
:data:`MAX_HEADER_BYTES`) and a spent :class:`~smtpplus_milter.mime.limits.Deadline` raise
:class:`~smtpplus_milter.mime.limits.LimitExceeded` instead.

The body is any buffer that supports slicing and ``find`` (``bytes`` or an ``mmap`` of the spool
file), so a 20 MB attachment is scanned in place, never decoded or copied here.
"""

from __future__ import annotations

import mmap
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import TypeAlias

from smtpplus_milter.mime.limits import Deadline, LimitExceeded, no_deadline

Buffer: TypeAlias = bytes | mmap.mmap

MAX_DEPTH = 20
MAX_PARTS = 1000  # MIME parts in one body, all levels; real mail has a handful
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
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")  # printable ASCII but ':', as email's parser reads a name


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
    content_type: str  # as email's get_content_type() reads it
    depth: int
    children: list[RawPart] = field(default_factory=list)
    parsed: Message | None = field(default=None, repr=False)  # set on first use of .headers
    block: bytes = field(default=b"", repr=False)  # the header block, for that first use
    default_type: str = "text/plain"  # message/rfc822 inside multipart/digest

    @property
    def headers(self) -> Message:
        """The header block as parsed by ``email`` (compat32); parsed on first use, as most parts never need it."""
        if self.parsed is None:
            self.parsed = _parse_block(self.block, self.default_type)
        return self.parsed

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

    ``find`` calls rather than a regex: a regex for "a long run without a newline" restarts at
    every byte of every line and turns quadratic in the line length. Nor one ``find`` per line:
    a 20 MB body of empty lines is ten million Python iterations (6.4 s). Instead each step looks
    at the next ``limit + 1`` octets: if they hold a line break, every line ending in them is short
    enough, and the scan jumps past the last one; if not, the line starting there is the only
    candidate and is measured exactly. Two steps advance at least ``limit`` octets together.
    """
    pos, size = 0, len(buf)
    while pos < size:
        window_end = min(size, pos + limit + 1)
        last = buf.rfind(b"\n", pos, window_end)
        if last >= 0:
            pos = last + 1  # every line ending before window_end is at most ``limit`` octets
            continue
        newline = buf.find(b"\n", window_end)
        stop = size if newline < 0 else newline
        length = stop - pos
        if buf[stop - 1 : stop] == b"\r":
            length -= 1
        if length > limit:
            return length
        if newline < 0:
            return None
        pos = newline + 1
    return None


def parse_body(
    buf: Buffer, headers: Message, *, deadline: Deadline | None = None, max_parts: int = MAX_PARTS
) -> RawPart:
    """The MIME tree of a body whose top-level headers are ``headers``.

    Raises :class:`MalformedMime` (also past ``max_parts`` parts), and :class:`LimitExceeded`
    when ``deadline`` passes.
    """
    root = RawPart(0, 0, 0, len(buf), headers.get_content_type(), 0, parsed=headers)
    _expand(buf, root, _Walk(deadline or no_deadline(), max_parts))
    return root


@dataclass
class _Walk:
    """What one parse may still spend."""

    deadline: Deadline
    max_parts: int
    parts: int = 0

    def count_part(self) -> None:
        self.parts += 1
        if self.parts > self.max_parts:
            raise MalformedMime(f"more than {self.max_parts} MIME parts (MAX_PARTS)")


def _expand(buf: Buffer, part: RawPart, walk: _Walk) -> None:
    # message/* parts are never opened: whatever is inside an attached message stays as it is.
    if not part.content_type.startswith("multipart/") or part.content_type in OPAQUE_MULTIPARTS:
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
    ranges = _part_ranges(buf, boundary, part.body_start, part.body_end, part.content_type, walk)
    for start, end in ranges:
        walk.deadline.check()
        child = _child(buf, start, end, part.depth + 1, digest)
        part.children.append(child)
        _expand(buf, child, walk)


def _part_ranges(buf: Buffer, boundary: bytes, start: int, end: int, ctype: str, walk: _Walk) -> list[tuple[int, int]]:
    """Byte ranges of the parts between the boundary lines of one multipart body."""
    dashes = b"--" + boundary
    ranges: list[tuple[int, int]] = []
    part_start: int | None = None  # None while still in the preamble
    pos = start
    while True:
        walk.deadline.check()
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
            walk.count_part()  # before the range is kept: a body of 300,000 parts stops at the cap
        # A boundary line right after the previous one ("--B" CRLF "--B": no header block, not even
        # a blank line) encloses nothing: email's parser sees no part there. Kept, it would be an
        # empty text/plain part that could receive the footer and turn into a visible part the
        # original did not have.
        if part_start is not None and hit > part_start:
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
    if not block.isascii():
        raise MalformedMime("8-bit bytes in the headers of a MIME part")
    default_type = "message/rfc822" if digest else "text/plain"
    scanned = _scan_fields(block)
    if scanned is None:  # something unusual: the stdlib's parser judges it, now
        headers = _parse_block(block, default_type)
        return RawPart(start, header_end, body_start, end, headers.get_content_type(), depth, parsed=headers)
    content_type, counts = scanned
    for name in _SINGLE_HEADERS:
        if counts[name] > 1:
            raise MalformedMime(f"{counts[name]} {name} headers in a MIME part")
    return RawPart(
        start,
        header_end,
        body_start,
        end,
        _type_of(content_type, default_type),
        depth,
        block=block,
        default_type=default_type,
    )


def _parse_block(block: bytes, default_type: str) -> Message:
    headers = BytesHeaderParser(policy=compat32).parsebytes(block)
    if headers.defects:
        raise MalformedMime(f"malformed header block in a MIME part ({type(headers.defects[0]).__name__})")
    headers.set_default_type(default_type)
    _check_single(headers, "a MIME part")
    return headers


def _scan_fields(block: bytes) -> tuple[str | None, dict[str, int]] | None:
    """(the first Content-Type value as ``email`` would return it, counts of the single headers).

    None when a line is anything but a plain ``name: value`` field or its continuation (a bare
    CR, a first line that is a continuation, a name ``email`` would not read as one): those
    blocks go to the stdlib parser, whose defects make the message malformed.
    """
    if block.count(b"\r") != block.count(b"\r\n"):
        return None  # a bare CR is a line break to the stdlib parser
    counts = dict.fromkeys(_SINGLE_HEADERS, 0)
    value: list[bytes] | None = None  # the first Content-Type's lines while it is being read
    content_type: list[bytes] | None = None
    for index, line in enumerate(block.splitlines(keepends=True)):
        if line[:1] in (b" ", b"\t"):
            if index == 0:
                return None
            if value is not None:
                value.append(line)
            continue
        if value is not None:
            content_type, value = value, None
        colon = line.find(b":")
        if colon <= 0 or not _FIELD_NAME.fullmatch(line, 0, colon):
            return None
        name = line[:colon].decode("ascii").lower()
        if name in counts:
            counts[name] += 1
            if name == "content-type" and counts[name] == 1:
                value = [line[colon + 1 :].lstrip(b" \t")]
    if value is not None:
        content_type = value
    if content_type is None:
        return None, counts
    # compat32 keeps the continuation lines' breaks and strips the trailing one, as here.
    return b"".join(content_type).rstrip(b"\r\n").decode("ascii"), counts


def _type_of(value: str | None, default_type: str) -> str:
    """``email.message.Message.get_content_type`` for a Content-Type value (None: absent)."""
    if value is None:
        return default_type
    ctype = value.partition(";")[0].strip().lower()
    return ctype if ctype.count("/") == 1 else "text/plain"


def _find_blank_line(buf: Buffer, start: int, end: int) -> tuple[int, int] | None:
    """(header_end, body_start) for the first empty line in [start, end), else None.

    Two ``find`` calls, not one per line: a part of millions of short lines without a blank line
    took seconds. The line break that ends the last header line is in [start, end); the empty
    line's own break may be the one that belongs to the next boundary line, just past ``end``.
    """
    found = [
        (hit, len(pair)) for pair in (b"\n\n", b"\n\r\n") if (hit := buf.find(pair, start, end - 1 + len(pair))) >= 0
    ]
    if not found:
        return None
    newline, size = min(found)
    return newline + 1, newline + size


def _check_single(headers: Message, where: str) -> None:
    for name in _SINGLE_HEADERS:
        values = headers.get_all(name) or []
        if len(values) > 1:
            raise MalformedMime(f"{len(values)} {name} headers in {where}")
