"""A writer of Postfix queue files, record by record, for the tests of the queue-file reader.

A record is one type octet, the data length in 7-bit groups (least significant group first, the
high bit set on every group but the last), then the data. A pointer record (``p``) holds a file
offset as ``%15d`` (0: a placeholder where later records may be linked in). Because every pointer
has the same width, a file's offsets are known before it is written: :class:`Layout` takes
records, labels and pointers to labels, and resolves the pointers in :meth:`Layout.build`.

:func:`postfix_file` lays out a message the way Postfix's cleanup writes it when a milter added
headers (checked against a real file): the original headers end with a pointer to the added
headers at the end of the file, each added header is followed by a pointer to the next, and the
last one points back to the empty line that ends the header section. A header line shorter than a
pointer's data is followed by a ``w`` padding record, as cleanup writes it when milters are on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

POINTER_WIDTH = 15


def length_octets(length: int) -> bytes:
    """*length* in Postfix's record-length encoding."""
    out = bytearray()
    while True:
        group = length & 0x7F
        length >>= 7
        if length:
            out.append(group | 0x80)
        else:
            out.append(group)
            return bytes(out)


def record(kind: str, data: bytes | str = b"") -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return kind.encode("ascii") + length_octets(len(raw)) + raw


def pointer(offset: int) -> bytes:
    return record("p", b"%15d" % offset)


@dataclass(frozen=True, slots=True)
class _Ref:
    """A pointer to a label (or a size record naming a label as the content offset)."""

    kind: str
    label: str


class Layout:
    """Records in file order, with labels; pointers to labels are resolved when built."""

    def __init__(self) -> None:
        self._parts: list[bytes | _Ref | str] = []

    def add(self, kind: str, data: bytes | str = b"") -> Layout:
        self._parts.append(record(kind, data))
        return self

    def raw(self, data: bytes) -> Layout:
        self._parts.append(data)
        return self

    def label(self, name: str) -> Layout:
        self._parts.append(name)
        return self

    def pointer_to(self, label: str) -> Layout:
        self._parts.append(_Ref("p", label))
        return self

    def placeholder(self) -> Layout:
        """A pointer record of 0: where cleanup may link in later records."""
        self._parts.append(pointer(0))
        return self

    def size_record(self, content_label: str) -> Layout:
        """Postfix's first record: content size, content offset (where the first record after M
        starts), recipients, qmgr options, content length. The reader needs only the offset."""
        self._parts.append(_Ref("C", content_label))
        return self

    @staticmethod
    def _size_data(offset: int) -> bytes:
        return b"%15d %15d %15d %15d %15d " % (409, offset, 1, 0, 409)

    def _encoded(self, part: _Ref, offsets: dict[str, int]) -> bytes:
        target = offsets.get(part.label, 0)  # 0 while the offsets are being counted
        return pointer(target) if part.kind == "p" else record("C", self._size_data(target))

    def build(self) -> bytes:
        offsets: dict[str, int] = {}
        position = 0
        for part in self._parts:
            if isinstance(part, str):
                offsets[part] = position
            elif isinstance(part, _Ref):
                position += len(self._encoded(part, {}))
            else:
                position += len(part)
        out = bytearray()
        for part in self._parts:
            if isinstance(part, _Ref):
                if part.label not in offsets:
                    raise ValueError(f"no label {part.label!r}")
                out += self._encoded(part, offsets)
            elif isinstance(part, bytes):
                out += part
        return bytes(out)


# A header line, or the pieces of one long line (L records for all but the last, then N).
Line = str | bytes | tuple[str | bytes, ...]


# A pointer's data length: cleanup pads a shorter header so that a milter's change can overwrite
# the header's first record with a pointer.
POINTER_PAYLOAD = 15


def padding(line_length: int) -> bytes:
    """The ``w`` record cleanup writes after a header line shorter than a pointer (milters on)."""
    width = max(1, POINTER_PAYLOAD - line_length - 2)
    return record("w", b"%*s" % (width, b"0"))


def _add_line(layout: Layout, line: Line) -> None:
    pieces = line if isinstance(line, tuple) else (line,)
    for piece in pieces[:-1]:
        layout.add("L", piece)
    layout.add("N", pieces[-1])
    text = "".join(piece.decode() if isinstance(piece, bytes) else piece for piece in pieces)
    if text[:1] not in (" ", "\t") and len(text.encode()) < POINTER_PAYLOAD:
        layout.raw(padding(len(text.encode())))


def postfix_file(
    headers: Sequence[Line] = ("From: news@shop.example", "Subject: offers"),
    appended: Sequence[Line] = ("X-SMTPPlus-Queue: low",),
    *,
    time_record: str | None = "1796118890 715184",
    body: Sequence[str] = ("Hello.",),
    filter_record: str | None = "smtpplus-low:[127.0.0.1]:55829",
    blank_line: bool = True,
) -> bytes:
    """A queue file as cleanup writes it, with *appended* headers linked in at the file end.

    *blank_line* False: the client's header section ended with a line that is not a header (no
    empty line), which cleanup writes as the first body line, right after the append pointer.
    """
    layout = Layout().size_record("content")
    if time_record is not None:
        layout.add("T", time_record)
    layout.add("A", "create_time=1796118890").add("S", "news@shop.example")
    layout.add("O", "someone@example.org").add("R", "someone@example.org")
    layout.placeholder().add("M").label("content")
    for line in headers:
        _add_line(layout, line)
    if appended:
        layout.pointer_to("appended0")
    layout.label("end-of-headers")
    if blank_line:
        layout.add("N", "")
    for text in body:
        layout.add("N", text)
    layout.placeholder().add("X")
    if filter_record is not None:
        layout.pointer_to("meta")
    else:
        layout.placeholder()
    layout.label("end").add("E")
    for number, line in enumerate(appended):
        layout.label(f"appended{number}")
        _add_line(layout, line)
        last = number == len(appended) - 1
        layout.pointer_to("end-of-headers" if last else f"appended{number + 1}")
    if filter_record is not None:
        layout.label("meta").add("L", filter_record).pointer_to("end")
    return layout.build()
