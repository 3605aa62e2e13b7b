"""Cutting a byte stream into lines, with the byte offset after each one (no I/O).

The log follower reads a growing file in chunks of whatever size ``read`` returns and must save
"the offset of the last line it fully processed", so that a restart neither skips nor repeats a
line. :class:`LineSplitter` therefore yields each complete line together with the offset just
after its newline, keeps a partial last line until its newline arrives (the writer may be in the
middle of it), bounds what it holds for one line, and decodes with replacement so a stray byte
never stops the reader.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_LINE_BYTES = 64 * 1024  # far above any Postfix log line; bounds memory for a line with no end


@dataclass(frozen=True, slots=True)
class Line:
    """One complete line: its text without the newline, and the offset just after that newline."""

    text: str
    end: int
    truncated: bool = False  # the line was longer than the bound: ``text`` holds its beginning


class LineSplitter:
    """Feed byte chunks of any size; get back the complete lines in them.

    *start* is the offset of the first byte that will be fed (a saved position). A line is split
    at ``\\n``; a ``\\r`` before it is dropped. A line longer than *max_line* bytes comes out cut to
    its first *max_line* bytes and marked ``truncated``; the rest of it is counted in the offsets
    but never held. Invalid UTF-8 becomes U+FFFD.
    """

    __slots__ = ("_buf", "_dropped", "_max", "_offset")

    def __init__(self, start: int = 0, max_line: int = MAX_LINE_BYTES) -> None:
        if max_line < 1:
            raise ValueError(f"max_line must be at least 1 byte, not {max_line}")
        self._offset = start  # just after the last complete line handed out
        self._buf = b""  # the beginning of the current partial line (at most max_line bytes)
        self._dropped = 0  # bytes of the current partial line thrown away beyond the bound
        self._max = max_line

    @property
    def offset(self) -> int:
        """Offset just after the last complete line returned (the position worth saving)."""
        return self._offset

    @property
    def pending(self) -> int:
        """Bytes of an unfinished last line seen so far (held or dropped)."""
        return len(self._buf) + self._dropped

    def feed(self, chunk: bytes) -> list[Line]:
        if not chunk:
            return []
        data = self._buf + chunk if self._buf else chunk
        pieces = data.split(b"\n")
        tail = pieces.pop()
        out: list[Line] = []
        offset = self._offset
        dropped = self._dropped
        limit = self._max
        for piece in pieces:
            offset += dropped + len(piece) + 1
            truncated = dropped > 0 or len(piece) > limit
            if truncated:
                piece = piece[:limit]
            elif piece[-1:] == b"\r":
                piece = piece[:-1]
            out.append(Line(piece.decode("utf-8", "replace"), offset, truncated))
            dropped = 0
        if len(tail) > limit:
            dropped += len(tail) - limit
            tail = tail[:limit]
        self._buf = tail
        self._dropped = dropped
        self._offset = offset
        return out
