"""Postfix's queue as the preemption component sees it: which messages are where, and of which queue.

Two things are read straight from the queue directory (as root, like ``postsuper``):

* **Where each message is**: the file names under ``incoming``, ``active``, ``deferred`` (hashed
  sub-directories) and ``hold``. A file in ``incoming`` or ``deferred`` without the owner-execute
  bit is still being written by cleanup (Postfix's own "ready" mark) and is not a message yet.
* **Which SMTP+ queue a message is in**: the ``X-SMTPPlus-Queue`` header the milter added, read from
  the queue file. ``postqueue -j`` names neither the transport nor the headers; ``postcat -q`` does,
  but it is a process per file (about 5 ms: 10 s for a 2,000-message backlog) and it gives up on
  the whole batch when one file leaves the queue while it reads. The header is read once per queue
  id and cached by the caller.

The queue file format (Postfix's ``rec_type.h``/``record.c``, stable since Postfix 2.x): a sequence
of records, each one type octet, the data length in 7-bit groups (least significant first, the high
bit set on every group but the last), then the data. The first record (``C``) holds the content's
size and offset; ``T`` the arrival time; ``M`` starts the content, whose header lines are ``N``
(a line) and ``L`` (a piece of a line longer than Postfix's record size) records, a short header
line followed by a ``w`` (padding) record when milters are on; a ``p`` record
is a pointer (a decimal file offset, 0 = none) to where reading goes on: the milter's added
headers are written at the end of the file and linked in by pointers, exactly like this header.

Every read is bounded (records, header bytes, pointer jumps): a file that does not parse, or a
header section past the bound, is "unknown", which the component never holds and never counts as
urgent. The file's contents are partly the client's (the message), so nothing else is trusted.
"""

from __future__ import annotations

import os
import re
import signal
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# Postfix's message queues, in the order qmgr works through them.
MESSAGE_QUEUES = ("incoming", "active", "deferred", "hold")
# The header the milter adds (core.priority.QUEUE_HEADER), as bytes, with the colon.
QUEUE_HEADER = b"x-smtpplus-queue:"

# Bounds per file. Our header is the milter's last addition, so the whole header section is read;
# Postfix itself caps one header at header_size_limit (100 KiB by default), not the section.
MAX_HEADER_BYTES = 1024 * 1024
MAX_RECORDS = 50_000
MAX_JUMPS = 10_000
MAX_RECORD_BYTES = 1024 * 1024

# What Postfix takes for the start of a header (is_header.c): a name of printable ASCII other
# than space and colon, optional blanks (obsolete syntax), then the colon.
_HEADER_START = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")

# Postfix's file mode bit for "complete" (MAIL_QUEUE_STAT_READY = 0700 on the owner bits).
_READY = 0o100


class QueueFileError(Exception):
    """The file is not a Postfix queue file we can read (or stopped being one while we read)."""


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """One message file as a scan found it."""

    queue_id: str
    postfix_queue: str  # incoming, active, deferred or hold
    path: str  # a str, not a Path: a scan makes one per file several times a second
    mtime: float  # for deferred mail: the time Postfix will try it again (qmgr sets it)
    inode: int = 0


@dataclass(frozen=True, slots=True)
class QueueFileInfo:
    """What the preemption component needs from one queue file."""

    arrival: float  # Postfix's arrival time (the T record), for the order of release
    queue: str | None  # the X-SMTPPlus-Queue value (lower case); None: not SMTP+ mail, or unknown


def scan(queue_dir: Path, queues: tuple[str, ...] = MESSAGE_QUEUES) -> Iterator[QueuedMessage]:
    """Every complete message file in *queues* of the Postfix queue directory *queue_dir*.

    A file that disappears while we look is skipped (it moved; the next scan finds it).
    """
    for name in queues:
        yield from _scan_dir(queue_dir / name, name, depth=0)


def queued_file(queue_dir: Path, queue: str, name: str) -> QueuedMessage | None:
    """One file of an unhashed queue (incoming, active) as :func:`scan` would report it, or None
    (gone, not a queue id, or still being written)."""
    if not _is_queue_id(name):
        return None
    path = os.path.join(queue_dir, queue, name)
    try:
        info = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode) or (queue not in ("active", "hold") and not info.st_mode & _READY):
        return None
    return QueuedMessage(name, queue, path, info.st_mtime, info.st_ino)


def scan_names(directory: Path) -> list[str]:
    """The file names in one unhashed queue directory (incoming, active): no stat, no objects."""
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def _scan_dir(directory: Path, queue: str, depth: int) -> Iterator[QueuedMessage]:
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                # hash_queue_names: deferred (and any other hashed queue) has one level per
                # hash_queue_depth; Postfix allows at most 16 but a depth of 1-2 is what is used.
                if depth < 4 and len(entry.name) == 1:
                    yield from _scan_dir(Path(entry.path), queue, depth + 1)
                continue
            if not _is_queue_id(entry.name):
                continue
            if queue in ("active", "hold"):
                # Complete by definition (qmgr and postsuper only move complete files there);
                # no stat: these are the queues looked at on every quick scan.
                yield QueuedMessage(entry.name, queue, entry.path, 0.0, entry.inode())
                continue
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        # incoming/deferred files without the ready bit are still being written (or were left by
        # a crash before they were complete): qmgr skips them, and so do we.
        if not info.st_mode & _READY:
            continue
        yield QueuedMessage(entry.name, queue, entry.path, info.st_mtime, entry.inode())


def locked_inodes(queue_dir: Path, locks: Path = Path("/proc/locks")) -> frozenset[int]:
    """Inodes of files on *queue_dir*'s file system that some process holds a flock on.

    A Postfix delivery agent holds a (shared) flock on the queue file while it delivers (Postfix's
    internal lock style on Linux). Reading ``/proc/locks`` sees those locks without taking one: a
    lock of ours could make an agent's own non-blocking lock attempt fail, and the agent would die.
    """
    try:
        device = os.stat(queue_dir).st_dev
        text = locks.read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    wanted = f"{os.major(device):02x}:{os.minor(device):02x}:"
    found = set()
    for line in text.splitlines():
        # "12: FLOCK  ADVISORY  READ  3456 08:01:789012 0 EOF"; a "->" line is a waiter, not a holder.
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        where = fields[5]
        if where.startswith(wanted):
            tail = where[len(wanted) :]
            if tail.isdigit():
                found.add(int(tail))
    return frozenset(found)


def _is_queue_id(name: str) -> bool:
    # Short ids are hex, long ids are base-52-ish with letters and digits; both are alphanumeric.
    return 5 <= len(name) <= 40 and name.isascii() and name.isalnum()


def read_info(path: str | Path) -> QueueFileInfo:
    """Arrival time and SMTP+ queue of the queue file at *path*.

    Raises FileNotFoundError when the file left (delivered or moved: look again where it went) and
    :class:`QueueFileError` when it cannot be read as a queue file.
    """
    with open(path, "rb") as handle:
        return _Reader(handle).read()


class _Reader:
    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.records = 0
        self.jumps = 0

    def record(self) -> tuple[int, bytes]:
        """The next record in reading order (pointers followed); (-1, b"") at the end of the file."""
        while True:
            self.records += 1
            if self.records > MAX_RECORDS:
                raise QueueFileError(f"more than {MAX_RECORDS} records")
            kind = self.handle.read(1)
            if not kind:
                return -1, b""
            length = 0
            shift = 0
            while True:
                octet = self.handle.read(1)
                if not octet:
                    raise QueueFileError("the file ends inside a record length")
                length |= (octet[0] & 0x7F) << shift
                if not octet[0] & 0x80:
                    break
                shift += 7
                if shift > 28:
                    raise QueueFileError("a record length with too many bits")
            if length > MAX_RECORD_BYTES:
                raise QueueFileError(f"a record of {length} bytes")
            data = self.handle.read(length)
            if len(data) != length:
                raise QueueFileError("the file ends inside a record")
            if kind == b"p":
                self._jump(data)
                continue
            return kind[0], data

    def _jump(self, data: bytes) -> None:
        try:
            offset = int(data.strip() or b"0")
        except ValueError:
            raise QueueFileError(f"a pointer record {data[:20]!r}") from None
        if offset == 0:  # a placeholder for records appended later
            return
        self.jumps += 1
        if offset < 0 or self.jumps > MAX_JUMPS:
            raise QueueFileError("pointer records that do not end")
        self.seek(offset)

    def seek(self, offset: int) -> None:
        # An offset past what the platform can seek to raises OSError or ValueError (not a
        # queue file, not a vanished one); an offset past the end reads as the end of the file.
        try:
            self.handle.seek(offset)
        except (OSError, ValueError, OverflowError):
            raise QueueFileError(f"an offset of {str(offset)[:20]} bytes") from None

    def read(self) -> QueueFileInfo:
        arrival: float | None = None
        data_offset: int | None = None
        # The envelope: up to the M record (the content follows it).
        while True:
            kind, data = self.record()
            if kind == -1:
                raise QueueFileError("no message content")
            if kind == ord("C") and data_offset is None:
                fields = data.split()
                if len(fields) < 2 or not fields[1].isdigit():
                    raise QueueFileError(f"a size record {data[:60]!r}")
                data_offset = int(fields[1])
            elif kind == ord("T") and arrival is None:
                fields = data.split()
                try:
                    arrival = int(fields[0]) + (int(fields[1]) / 1e6 if len(fields) > 1 else 0.0)
                except (ValueError, IndexError, OverflowError):  # OverflowError: too many digits for a float
                    raise QueueFileError(f"a time record {data[:60]!r}") from None
            elif kind == ord("M"):
                break
        if arrival is None:
            raise QueueFileError("no arrival time")
        if data_offset is not None:
            # The content starts at data_offset (the M record's pointers already lead there; this
            # is where qmgr itself starts reading).
            self.seek(data_offset)
        return QueueFileInfo(arrival, self._queue_header())

    def _queue_header(self) -> str | None:
        """The value of the last X-SMTPPlus-Queue header (the milter deletes a client's own)."""
        found: str | None = None
        line = b""
        seen = 0
        while True:
            kind, data = self.record()
            if kind == ord("w"):
                # Padding: with milters on, cleanup writes one after every header line shorter than
                # a pointer record, so that a header change can overwrite the line with a pointer.
                continue
            if kind not in (ord("N"), ord("L")):
                # X (extracted segment), E or the end: the content ended inside the header section.
                return found
            seen += len(data)
            if seen > MAX_HEADER_BYTES:
                return None  # unknown: too much to read for one header we look for
            line += data
            if kind == ord("L"):  # the line continues in the next record
                continue
            if not line:
                return found  # the empty line: end of the header section
            if line[:1] in (b" ", b"\t"):
                line = b""  # a folded continuation; our header is never folded
                continue
            if line[: len(QUEUE_HEADER)].lower() == QUEUE_HEADER:
                value = line[len(QUEUE_HEADER) :].strip().lower()
                found = value.decode("ascii", "replace")
            elif not _HEADER_START.match(line):
                # Not a header for Postfix: its header section ended here without an empty line,
                # and this is the first body line (the milter saw it as body and deleted nothing
                # after it). Reading on would take a client's body text for our header.
                return found
            line = b""


class PostfixCommandError(Exception):
    """postconf, postsuper or postkick failed; the message says which and why."""


class PostfixTools:
    """Postfix's own commands for one instance (``-c`` its config directory), run as root."""

    TIMEOUT = 120.0
    CHUNK = 5000  # queue ids per postsuper call (they go on its standard input)

    def __init__(self, config_dir: Path, sbin: Path | None = None) -> None:
        self.config_dir = config_dir
        self._sbin = sbin

    def _command(self, name: str) -> str:
        return str(self._sbin / name) if self._sbin is not None else name

    def _run(self, argv: list[str], stdin: str | None = None, *, sigpipe_ok: bool = False) -> str:
        import subprocess

        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=self.TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PostfixCommandError(f"{argv[0]}: {exc}") from None
        if sigpipe_ok and done.returncode == -signal.SIGPIPE:
            return done.stdout
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()
            raise PostfixCommandError(
                f"{' '.join(argv[:4])} exited {done.returncode}: {detail[-1] if detail else 'no message'}"
            )
        return done.stdout

    def queue_directory(self) -> Path:
        out = self._run([self._command("postconf"), "-c", str(self.config_dir), "-h", "queue_directory"])
        return Path(out.strip())

    def hold(self, queue_ids: list[str]) -> None:
        """``postsuper -h``: from incoming, active or deferred into hold (an id no longer there: skipped)."""
        self._super("-h", queue_ids)

    def release(self, queue_ids: list[str]) -> None:
        """``postsuper -H``: from hold back to deferred, retry time unchanged (an id not on hold: skipped)."""
        self._super("-H", queue_ids)

    def _super(self, flag: str, queue_ids: list[str]) -> None:
        for start in range(0, len(queue_ids), self.CHUNK):
            chunk = queue_ids[start : start + self.CHUNK]
            self._run(
                [self._command("postsuper"), "-c", str(self.config_dir), flag, "-"], stdin="\n".join(chunk) + "\n"
            )

    def kick_deferred(self) -> None:
        """Ask the queue manager to scan the deferred queue now (``postkick public qmgr D``).

        It takes the released messages whose time has come, honouring every other message's retry
        time (unlike ``postqueue -f``, which retries all deferred mail at once).
        """
        # postkick writes the request, then one more byte; the queue manager may close the
        # connection after the request, and the second write then ends postkick with SIGPIPE
        # (Postfix's unix_trigger): the request itself arrived.
        self._run([self._command("postkick"), "-c", str(self.config_dir), "public", "qmgr", "D"], sigpipe_ok=True)
