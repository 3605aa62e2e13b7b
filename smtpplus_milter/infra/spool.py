"""The tracking spool on disk, shared by two processes: the milter appends, the follower reads.

The milter's tracking writer appends records (one JSON line each, ``fsync``\\ ed per batch) and
never opens the store; the log follower reads them in order, hands them to the store and then
moves its done mark. So the store may be slow or down, or the follower stopped: records wait here,
in order, up to a size bound.

Layout, in one directory (mode 0750; both daemons run as the same user):

* ``records-<number>.jsonl``: segments. The appender starts a new one when it starts and when the
  current one passes :data:`SEGMENT_BYTES`; it only ever appends (never truncates), so the reader
  can never see bytes change under it. Each segment's first line names the format and its version
  (:data:`HEADER`); a segment of another version is refused with a message, not misread.
* ``done``: the reader's mark, ``<segment> <offset>`` (everything before it is in the store),
  replaced atomically (write, fsync, rename). The reader deletes segments wholly before its mark;
  the newest segment is never deleted (the appender may still be writing it).

The bound: the appender counts the bytes waiting (segment sizes after the reader's mark, the mark
read at most once per :data:`MARK_READ_SECONDS`) and refuses a batch that would take them over
*max_bytes* (:class:`SpoolFull`): all or nothing, the caller counts what it loses.

A crash in the middle of a write leaves a partial last line. The appender never writes after a
failed write in the same segment (it starts a new one), and a segment stops growing once a newer
one exists, so: the reader takes complete lines only; a partial last line of the newest segment may
still be completed and is waited for; a partial last line of an older segment never will be and
is skipped (returned as ``skipped`` for the caller to log and count), like a line that is not JSON.
After a crash the records after the mark are read again; the store's writes are idempotent, so a
record the store took just before the crash is not counted twice.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smtpplus_milter.infra.files import sync_directory

FORMAT = "smtpplus-tracking-spool"
VERSION = 1
HEADER = json.dumps({"format": FORMAT, "version": VERSION}, separators=(",", ":")).encode("ascii") + b"\n"
DONE = "done"
SEGMENT_BYTES = 4 * 1024 * 1024
MARK_READ_SECONDS = 1.0
DIRECTORY_MODE = 0o750
FILE_MODE = 0o640
_SEGMENT = re.compile(r"records-(\d{1,18})\.jsonl")


class SpoolFull(Exception):
    """The batch would take the spool over its size bound; nothing of it was written."""


class SpoolProblem(Exception):
    """The spool directory or a file in it cannot be used; the message says which and why."""


@dataclass(frozen=True, order=True)
class Mark:
    """A place in the spool: the segment's number and a byte offset in it."""

    segment: int
    offset: int

    def render(self) -> str:
        return f"{self.segment} {self.offset}\n"

    @classmethod
    def parse(cls, text: str) -> Mark | None:
        parts = text.split()
        if len(parts) != 2 or not all(part.isdigit() for part in parts):
            return None
        return cls(int(parts[0]), int(parts[1]))


START = Mark(0, 0)


@dataclass(frozen=True)
class Batch:
    """Records read after the mark, the mark that says they are done, and lines that were skipped."""

    records: tuple[dict[str, Any], ...]
    end: Mark
    skipped: tuple[str, ...] = ()  # why each skipped line was skipped (a torn or unreadable line)


def segment_name(number: int) -> str:
    return f"records-{number:08d}.jsonl"


def segments(directory: Path) -> list[int]:
    """The segment numbers in *directory*, oldest first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SpoolProblem(f"cannot list the spool {directory}: {exc.strerror}") from None
    return sorted(int(m.group(1)) for name in names if (m := _SEGMENT.fullmatch(name)))


def read_mark(directory: Path) -> Mark:
    """The reader's done mark; the start when there is none (or it is unreadable: a replay is harmless)."""
    try:
        return Mark.parse((directory / DONE).read_text(encoding="ascii")) or START
    except (OSError, UnicodeDecodeError):
        return START


def encode(records: Sequence[dict[str, Any]]) -> bytes:
    return b"".join(
        json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n" for record in records
    )


def _make_directory(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=DIRECTORY_MODE)
    except OSError as exc:
        raise SpoolProblem(f"cannot create the spool directory {directory}: {exc.strerror}") from None


class SpoolAppender:
    """The milter's end: appends batches to the newest segment. One thread uses it at a time."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        segment_bytes: int = SEGMENT_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.clock = clock
        _make_directory(directory)
        existing = segments(directory)
        self._fd = -1
        self.segment = 0
        self.size = 0  # of the current segment
        # After everything the reader has marked (a spool whose segments were removed by hand keeps
        # its mark: a number below it would be taken as done).
        self._open(max(existing[-1] if existing else 0, read_mark(directory).segment) + 1)
        self._older_waiting = 0  # bytes waiting in segments before the current one
        self._mark = START
        self._next_mark_read = 0.0
        self._refresh()

    @property
    def waiting_bytes(self) -> int:
        """Bytes not yet marked done by the reader (as of the last reading of its mark)."""
        current = self.size - (self._mark.offset if self._mark.segment == self.segment else 0)
        return self._older_waiting + (current if self._mark.segment <= self.segment else 0)

    def append(self, records: Sequence[dict[str, Any]]) -> int:
        """Write *records* durably (one write, one fsync) or raise; all or nothing. Returns the bytes written."""
        data = encode(records)
        if self.clock() >= self._next_mark_read:
            self._refresh()
        if self.waiting_bytes + len(data) > self.max_bytes:
            self._refresh()  # the reader may have moved since: look once more before refusing
            if self.waiting_bytes + len(data) > self.max_bytes:
                raise SpoolFull(
                    f"{len(records)} record(s) would take the spool {self.directory} over {self.max_bytes} bytes "
                    "(is the follower running and the store reachable?)"
                )
        if self.size >= self.segment_bytes:
            self._next_segment()
        try:
            self._write(data)
            os.fsync(self._fd)
        except OSError as exc:
            # What was written may end in a partial line: never write after it; the reader skips it.
            try:
                self._next_segment()
            except SpoolProblem:
                pass
            raise SpoolProblem(f"cannot write the spool {self.directory}: {exc.strerror}") from None
        self.size += len(data)
        return len(data)

    def close(self) -> None:
        if self._fd >= 0:
            try:
                os.fsync(self._fd)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = -1

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def _open(self, number: int) -> None:
        path = self.directory / segment_name(number)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise SpoolProblem(f"cannot create the spool segment {path}: {exc.strerror}") from None
        try:
            os.write(fd, HEADER)
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            raise SpoolProblem(f"cannot write the spool segment {path}: {exc.strerror}") from None
        sync_directory(self.directory)
        self.close()
        self._fd, self.segment, self.size = fd, number, len(HEADER)

    def _next_segment(self) -> None:
        finished, size = self.segment, self.size
        self._open(finished + 1)
        if self._mark.segment <= finished:
            self._older_waiting += size - (self._mark.offset if self._mark.segment == finished else 0)

    def _refresh(self) -> None:
        """Read the reader's mark and the older segments' sizes (a few stat calls)."""
        self._next_mark_read = self.clock() + MARK_READ_SECONDS
        self._mark = mark = read_mark(self.directory)
        waiting = 0
        for number in segments(self.directory):
            if number >= self.segment or number < mark.segment:
                continue
            try:
                size = os.stat(self.directory / segment_name(number)).st_size
            except OSError:
                continue  # deleted by the reader meanwhile: done
            waiting += size - (mark.offset if number == mark.segment else 0)
        self._older_waiting = max(0, waiting)


class SpoolReader:
    """The follower's end: reads complete records after the done mark, marks them done, deletes done segments."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        _make_directory(directory)
        self.mark = read_mark(directory)

    def read(self, limit: int = 500) -> Batch:
        """Up to *limit* records after the mark, in the order they were appended."""
        numbers = segments(self.directory)  # listed BEFORE reading: a segment older than the newest is final
        records: list[dict[str, Any]] = []
        skipped: list[str] = []
        mark = self.mark
        for index, number in enumerate(numbers):
            if number < mark.segment:
                continue
            offset = mark.offset if number == mark.segment else 0
            newest = index == len(numbers) - 1
            offset, complete = self._read_segment(number, offset, limit - len(records), records, skipped, newest)
            mark = Mark(number, offset)
            if not complete or len(records) >= limit:
                break
            if not newest:
                mark = Mark(numbers[index + 1], 0)
        return Batch(tuple(records), mark, tuple(skipped))

    def count(self) -> int:
        """How many complete record lines wait after the mark (counted, not parsed)."""
        total = 0
        for number in segments(self.directory):
            if number < self.mark.segment:
                continue
            try:
                with open(self.directory / segment_name(number), "rb") as file:
                    file.seek(self.mark.offset if number == self.mark.segment else 0)
                    start = file.tell()
                    while chunk := file.read(1 << 20):
                        total += chunk.count(b"\n")
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise SpoolProblem(f"cannot read the spool {self.directory}: {exc.strerror}") from None
            if start == 0:
                total -= 1  # the header line
        return max(0, total)

    def mark_done(self, end: Mark) -> None:
        """Everything before *end* is in the store: save the mark and delete the segments wholly before it."""
        temporary = self.directory / f".{DONE}.tmp"
        try:
            with open(temporary, "w", encoding="ascii") as out:
                out.write(end.render())
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.directory / DONE)
        except OSError as exc:
            raise SpoolProblem(f"cannot write the spool mark {self.directory / DONE}: {exc.strerror}") from None
        self.mark = end
        for number in segments(self.directory):
            if number >= end.segment:
                break
            try:
                os.unlink(self.directory / segment_name(number))
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise SpoolProblem(f"cannot delete the done spool segment {number}: {exc.strerror}") from None

    def _read_segment(
        self,
        number: int,
        offset: int,
        limit: int,
        records: list[dict[str, Any]],
        skipped: list[str],
        newest: bool,
    ) -> tuple[int, bool]:
        """Read lines of one segment from *offset*; returns the offset after the last line taken and
        whether the segment was read to its end."""
        path = self.directory / segment_name(number)
        try:
            file = open(path, "rb")
        except FileNotFoundError:
            return 0, True
        except OSError as exc:
            raise SpoolProblem(f"cannot read the spool segment {path}: {exc.strerror}") from None
        with file:
            file.seek(offset)
            taken = 0
            while taken < limit:
                line = file.readline()
                if not line:
                    return offset, True
                if not line.endswith(b"\n"):
                    if newest:
                        return offset, False  # may still be completed: wait for it
                    skipped.append(f"segment {number} offset {offset}: a partial last line ({len(line)} bytes)")
                    return offset + len(line), True
                if offset == 0:
                    self._check_header(path, line)
                else:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        record = None
                    if isinstance(record, dict):
                        records.append(record)
                        taken += 1
                    else:
                        skipped.append(f"segment {number} offset {offset}: not a JSON object")
                offset += len(line)
            # The limit was reached: complete if nothing follows.
            return offset, file.read(1) == b""

    @staticmethod
    def _check_header(path: Path, line: bytes) -> None:
        try:
            header = json.loads(line)
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise SpoolProblem(f"{path} is not a tracking spool segment (its first line is not the spool's header)")
        if header.get("version") != VERSION:
            raise SpoolProblem(
                f"{path} was written in spool format version {header.get('version')}, this program reads "
                f"version {VERSION}: run the same version of the milter and the follower"
            )
