"""Safe replacement of the files the CLI edits (users file, Dovecot passwd-file).

Two rules, so that neither the milter nor Dovecot ever reads half a file and two operators never
lose each other's change:

* :func:`locked` holds an exclusive ``flock`` on ``.NAME.lock`` next to the file for the whole
  read-modify-write. A separate lock file, because the file itself is replaced by a rename and a
  lock on the old inode would not stop the next writer. The lock file is opened without following
  a symbolic link: root must never create or open a file somebody else pointed it at.
* :func:`replace_atomically` writes a temporary file in the same directory, gives it the old
  file's mode and owner, ``fsync``\\ s it, renames it over the file and ``fsync``\\ s the directory.
  On any failure the temporary file is removed: it holds the whole new content (password hashes).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class FileProblem(Exception):
    """A file could not be locked, read or written; the message says which and why."""


@dataclass(frozen=True)
class Ownership:
    mode: int
    uid: int
    gid: int


def lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def locked(path: Path, *, timeout: float = 10.0) -> Iterator[None]:
    """Hold the writers' lock of *path*; wait up to *timeout* seconds for another writer."""
    lock = lock_path(path)
    try:
        # O_NOFOLLOW: a link planted as the lock file would make root create or open its target.
        # O_NONBLOCK: nor may a FIFO or device planted there hang the open before the check below.
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileProblem(
                f"the lock file {lock} is a symbolic link; a lock file never is one: remove it and try again"
            ) from None
        raise FileProblem(f"cannot create the lock file {lock}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileProblem(f"the lock file {lock} is not a regular file; remove it and try again")
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise FileProblem(
                        f"{path} is being changed by another process (lock {lock} held for {timeout:.0f}s); "
                        "try again when it has finished"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def replace_atomically(
    path: Path, data: bytes, *, new_file: Ownership | None = None, newer_mtime: bool = False
) -> None:
    """Replace *path* with *data*, keeping its mode and owner (or *new_file*'s when it is new).

    *newer_mtime* makes the new file's mtime at least one second later than the old one's.
    Dovecot rereads a passwd-file only when its mtime (whole seconds) or size changed, and a
    password reset changes neither the size nor, within the same second, the mtime.
    """
    try:
        old = os.stat(path)
    except FileNotFoundError:
        old = None
    except OSError as exc:
        raise FileProblem(f"cannot read {path}: {exc.strerror}") from None
    ownership = Ownership(old.st_mode & 0o7777, old.st_uid, old.st_gid) if old else new_file
    directory = path.parent
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise FileProblem(f"cannot write in {directory}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if ownership is not None:
                _own(handle.fileno(), ownership)
            os.fsync(handle.fileno())
        if newer_mtime and old is not None:
            now = time.time_ns()
            floor = (int(old.st_mtime) + 1) * 1_000_000_000
            stamp = max(now, floor)
            os.utime(temporary, ns=(stamp, stamp))
        os.replace(temporary, path)
    except BaseException as exc:
        # Every failure, not only OSError (_own raises FileProblem, a signal raises
        # KeyboardInterrupt): the temporary file holds the complete new content.
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(exc, OSError):
            raise FileProblem(f"cannot replace {path}: {exc.strerror}") from None
        raise
    sync_directory(directory)


def _own(fd: int, ownership: Ownership) -> None:
    # Owner first: chown clears the setuid/setgid bits that chmod then restores.
    if (ownership.uid, ownership.gid) != (os.geteuid(), os.getegid()):
        try:
            os.fchown(fd, ownership.uid, ownership.gid)
        except PermissionError:
            # Not root: keep what we may. A file we cannot give away stays ours; say so.
            raise FileProblem(f"cannot give the new file owner {ownership.uid}:{ownership.gid} (run as root)") from None
    os.fchmod(fd, ownership.mode)


def sync_directory(directory: Path) -> None:
    """fsync a directory: a new or renamed file survives a power cut only once its entry is on disk."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_text(path: Path, *, missing_ok: bool = False) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return None
        raise FileProblem(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise FileProblem(f"cannot read {path}: {reason}") from None
