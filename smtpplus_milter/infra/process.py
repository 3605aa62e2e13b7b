"""Looking at and signalling other processes: pid files, systemd's MainPID, sockets in /proc, pidfds.

Only passive looks (no connection to a socket) and one signal; deciding whether a process is the
running milter is :mod:`smtpplus_milter.admin.reload`'s job.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from smtpplus_milter.config.values import SocketSpec

SYSTEMCTL_TIMEOUT = 5


def read_pid(path: Path) -> int | None:
    """The pid a pid file holds, or None when it is missing, unreadable or not a number."""
    try:
        return int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def cmdline(pid: int) -> bytes:
    """The command line of *pid* (NUL-separated), or b"" when it cannot be read (gone, not ours)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def systemd_main_pid(unit: str) -> int | None:
    """The main process of the systemd *unit*, or None (no systemd, unit not running, no answer)."""
    if not Path("/run/systemd/system").is_dir():  # systemd is not the init: no unit to ask
        return None
    try:
        done = subprocess.run(
            ["systemctl", "show", "-p", "MainPID", "--value", unit],
            capture_output=True,
            text=True,
            timeout=SYSTEMCTL_TIMEOUT,
            check=False,
        )
        main = int(done.stdout.strip())
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return main if done.returncode == 0 and main > 0 else None


def listening_socket_inodes(spec: SocketSpec) -> set[int]:
    """Inodes of the listening sockets behind a milter socket (unix:PATH, inet[6]:PORT@HOST)."""
    inodes: set[int] = set()
    try:
        if spec.path is not None:
            wanted = os.path.normpath(spec.path)
            for fields in _proc_table("/proc/net/unix", 7):
                # Num RefCount Protocol Flags Type St Inode Path; flag 0x10000 = listening (__SO_ACCEPTCON)
                if len(fields) == 8 and os.path.normpath(fields[7]) == wanted and int(fields[3], 16) & 0x10000:
                    inodes.add(int(fields[6]))
            return inodes
        port = spec.port
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for fields in _proc_table(table, None):
                # sl local_address rem_address st ... inode; st 0A = LISTEN
                if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                    inodes.add(int(fields[9]))
    except ValueError:
        return set()  # a line we cannot read confirms nothing
    return inodes


def _proc_table(path: str, maxsplit: int | None) -> list[list[str]]:
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[1:]
    except OSError:
        return []
    return [line.split(None, -1 if maxsplit is None else maxsplit) for line in lines]


def socket_inodes_of(pid: int) -> set[int]:
    """Inodes of the sockets *pid* has open (as far as /proc lets us see)."""
    inodes: set[int] = set()
    directory = f"/proc/{pid}/fd"
    try:
        names = os.listdir(directory)
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(f"{directory}/{name}")
        except OSError:
            continue
        if target.startswith("socket:[") and target.endswith("]") and target[8:-1].isdigit():
            inodes.add(int(target[8:-1]))
    return inodes


@contextlib.contextmanager
def pinned(pid: int) -> Iterator[int | None]:
    """A pidfd for *pid* while the caller checks it: if it ends and the pid is reused meanwhile, a
    signal through the pidfd fails instead of reaching the newcomer.

    Yields None on a kernel without pidfds (signals then go by pid); raises ProcessLookupError
    when *pid* does not run.
    """
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        raise
    except (OSError, AttributeError):
        pidfd = None  # an old kernel: fall back to kill()
    try:
        yield pidfd
    finally:
        if pidfd is not None:
            os.close(pidfd)


def send_sighup(pid: int, pidfd: int | None) -> None:
    """SIGHUP to *pid*, through its pidfd when there is one; OSError when it cannot be sent."""
    if pidfd is not None:
        signal.pidfd_send_signal(pidfd, signal.SIGHUP)
    else:
        os.kill(pid, signal.SIGHUP)
