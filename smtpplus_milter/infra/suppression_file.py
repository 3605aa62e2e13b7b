"""The suppression list as a local file: the follower writes it, the milter reads it at RCPT.

The milter must not ask the store at every RCPT (the store may be slow, down, or on another
host), so the follower, which has the store, writes the entries in force to a snapshot file next
to the tracking spool every few seconds when they changed, and the milter re-reads the file when
its identity or size changes (checked at most once a second). Both processes already share that
directory.

Format (text, UTF-8): a first line ``# smtpplus-suppressions 1 generated=EPOCH entries=N``, then
one line per entry: ``address<TAB>scope<TAB>reason<TAB>created-epoch``. Replaced atomically, so a
reader sees the old or the new file, never half of one. A file that is missing, too big or
unreadable leaves the reader with what it had (nothing at first: "not suppressed") and says so.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

from smtpplus_milter.core.suppression import REASONS, Entry
from smtpplus_milter.infra.files import Ownership, replace_atomically

NAME = "suppressions.tsv"
VERSION = 1
MAX_BYTES = 256 * 1024 * 1024
CHECK_SECONDS = 1.0
_REASONS = frozenset(REASONS)


class SnapshotProblem(Exception):
    """The snapshot cannot be read; the message says why."""


@dataclass(frozen=True)
class Snapshot:
    index: Mapping[str, tuple[Entry, ...]] = field(default_factory=lambda: MappingProxyType({}))
    generated: datetime | None = None  # None: no snapshot read yet
    entries: int = 0


def render(entries: Iterable[tuple[str, str, str, datetime]], generated: datetime) -> bytes:
    """The file's bytes for (address, scope, reason, created) entries."""
    lines = []
    for address, scope, reason, created in entries:
        if any(ch in value for value in (address, scope, reason) for ch in "\t\n\r"):
            continue  # cannot be written safely (and cannot be a real address or scope)
        lines.append(f"{address.lower()}\t{scope}\t{reason}\t{created.timestamp():.0f}\n")
    head = f"# smtpplus-suppressions {VERSION} generated={generated.timestamp():.3f} entries={len(lines)}\n"
    return (head + "".join(lines)).encode("utf-8")


def write(path: Path, data: bytes) -> None:
    """Replace the snapshot atomically (mode 0640: the milter runs as the same user)."""
    replace_atomically(path, data, new_file=Ownership(0o640, os.getuid(), os.getgid()))


def parse(data: bytes) -> Snapshot:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SnapshotProblem(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    head, _, body = text.partition("\n")
    fields = head.split()
    if len(fields) < 4 or fields[:3] != ["#", "smtpplus-suppressions", str(VERSION)]:
        raise SnapshotProblem(f"the first line is not '# smtpplus-suppressions {VERSION} ...'")
    try:
        generated = datetime.fromtimestamp(float(fields[3].removeprefix("generated=")), UTC)
    except (ValueError, OverflowError, OSError):
        raise SnapshotProblem("the first line has no generated=EPOCH") from None
    index: dict[str, list[Entry]] = {}
    count = 0
    for number, line in enumerate(body.splitlines(), start=2):
        parts = line.split("\t")
        if len(parts) != 4 or parts[2] not in _REASONS:
            raise SnapshotProblem(f"line {number} is not address, scope, reason, created")
        try:
            since = datetime.fromtimestamp(float(parts[3]), UTC)
        except (ValueError, OverflowError, OSError):
            raise SnapshotProblem(f"line {number}: created is not a time") from None
        index.setdefault(parts[0], []).append(Entry(parts[1], parts[2], since))
        count += 1
    frozen = MappingProxyType({address: tuple(entries) for address, entries in index.items()})
    return Snapshot(frozen, generated, count)


class Reader:
    """The milter's view of the snapshot: :meth:`current` is cheap and thread-safe."""

    def __init__(
        self,
        path: Path,
        *,
        on_problem: Callable[[str], None] = lambda reason: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.on_problem = on_problem
        self.clock = clock
        self._snapshot = Snapshot()
        self._seen: tuple[int, int, int] | None = None
        self._missing_said = False
        self._next_check = 0.0
        self._lock = threading.Lock()

    def current(self) -> Snapshot:
        now = self.clock()
        if now < self._next_check:
            return self._snapshot
        with self._lock:
            if now >= self._next_check:
                self._next_check = now + CHECK_SECONDS
                self._refresh()
        return self._snapshot

    def _refresh(self) -> None:
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            if not self._missing_said:  # once until it appears again, not every second
                self._missing_said = True
                self._problem(f"{self.path} is missing (is `smtpplus-milter follow` running?); kept what was read")
            self._seen = None
            return
        except OSError as exc:
            self._problem(f"cannot read {self.path}: {exc.strerror}")
            return
        self._missing_said = False
        identity = (info.st_ino, info.st_size, info.st_mtime_ns)
        if identity == self._seen:
            return
        self._seen = identity
        if info.st_size > MAX_BYTES:
            self._problem(f"{self.path} is {info.st_size} bytes, over {MAX_BYTES}: kept the previous list")
            return
        try:
            self._snapshot = parse(self.path.read_bytes())
        except Exception as exc:  # whatever the file holds, RCPT goes on with the last good list
            self._problem(f"{self.path}: {exc}; kept the previous list")

    def _problem(self, reason: str) -> None:
        try:
            self.on_problem(reason)
        except Exception:  # a reporting failure must not break the RCPT check
            pass


class Writer:
    """The follower's side: rewrite the snapshot when the entries in force changed (or it is gone)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: bytes | None = None

    def update(self, entries: Iterable[tuple[str, str, str, datetime]], now: datetime) -> bool:
        """Write the snapshot of *entries* unless the file already holds them; True when written."""
        body = render(entries, now)
        _, _, lines = body.partition(b"\n")
        if self._last == lines and self.path.exists():
            return False
        write(self.path, body)
        self._last = lines
        return True
