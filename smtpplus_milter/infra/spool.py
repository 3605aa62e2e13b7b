"""A bounded, append-only spool on disk: records that must reach a store, kept until they have.

The tracking writer appends every batch of records here (one JSON line each) and ``fsync``\\ s
before it tries the store; once the store has taken them it marks them done. So the store may be
slow or down: records wait here, in order, and go in later. After a crash the records after the
last "done" mark are replayed; the store's writes are idempotent, so a record the store took just
before the crash is not counted twice.

Layout, in one directory: ``records.jsonl`` (the lines) and ``done`` (the byte offset up to which
lines are in the store, replaced atomically). When everything is done the file is emptied, so the
spool stays small while the store keeps up. It never grows beyond *max_bytes*: a batch that does
not fit is refused (:class:`SpoolFull`) and the caller counts what it loses.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RECORDS = "records.jsonl"
DONE = "done"


class SpoolFull(Exception):
    """The batch would take the spool over its size bound; nothing of it was written."""


class SpoolProblem(Exception):
    """The spool directory or a file in it cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Pending:
    """Records not yet in the store, and the offset that marks them done."""

    records: tuple[dict[str, Any], ...]
    end: int


class Spool:
    """Not thread-safe: one writer thread owns it."""

    def __init__(self, directory: Path, *, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o750)
            self._file = open(directory / RECORDS, "ab+")
        except OSError as exc:
            raise SpoolProblem(f"cannot open the spool in {directory}: {exc.strerror}") from None
        self.done = self._read_done()
        size = self.size
        if self.done > size:  # the file was emptied after the mark was written: start afresh
            self._mark(0)

    @property
    def size(self) -> int:
        return os.fstat(self._file.fileno()).st_size

    @property
    def waiting_bytes(self) -> int:
        return self.size - self.done

    def append(self, records: Sequence[dict[str, Any]]) -> int:
        """Write *records* durably (fsync) or raise; all or nothing. Returns the offset after them."""
        data = b"".join(
            json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n" for record in records
        )
        start = self.size
        if start + len(data) > self.max_bytes:
            raise SpoolFull(f"{len(records)} record(s) would take the spool over {self.max_bytes} bytes")
        try:
            self._file.seek(0, os.SEEK_END)
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            self._cut(start)
            raise SpoolProblem(f"cannot write the spool {self.directory / RECORDS}: {exc.strerror}") from None
        return start + len(data)

    def pending(self, limit: int = 1000) -> Pending:
        """Up to *limit* records after the done mark, in the order they were appended."""
        self._file.seek(self.done)
        records: list[dict[str, Any]] = []
        end = self.done
        for line in self._lines():
            if len(records) >= limit:
                break
            end += len(line)
            if not line.endswith(b"\n"):  # a torn last line (crash mid-write): never fsynced, so never acknowledged
                end -= len(line)
                break
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # unreadable: skipped (the bytes were not what we wrote), the mark moves past it
        return Pending(tuple(records), end)

    def count_pending(self) -> int:
        """How many complete lines wait after the done mark (counted, not parsed)."""
        self._file.seek(self.done)
        return sum(1 for line in self._lines() if line.endswith(b"\n"))

    def mark_done(self, end: int) -> None:
        """The records up to *end* are in the store. Empties the spool once all of it is done."""
        if end >= self.size:
            self._cut(0)
            self._mark(0)
        else:
            self._mark(end)

    def close(self) -> None:
        self._file.close()

    def _lines(self) -> Iterator[bytes]:
        while True:
            line = self._file.readline()
            if not line:
                return
            yield line

    def _cut(self, size: int) -> None:
        try:
            self._file.truncate(size)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError:
            pass

    def _read_done(self) -> int:
        try:
            return int((self.directory / DONE).read_text(encoding="ascii").strip() or 0)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError):
            return 0  # an unreadable mark replays everything: the store's writes are idempotent

    def _mark(self, offset: int) -> None:
        temporary = self.directory / f".{DONE}.tmp"
        try:
            with open(temporary, "w", encoding="ascii") as out:
                out.write(f"{offset}\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.directory / DONE)
        except OSError as exc:
            raise SpoolProblem(f"cannot write the spool mark {self.directory / DONE}: {exc.strerror}") from None
        self.done = offset
