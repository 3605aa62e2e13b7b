"""Telling the running milter to reread the users file (SIGHUP), and only the running milter.

The pid file is written by the service user and any process can call itself "smtpplus...", so
neither is proof: root signals a process only when it is the MainPID of the systemd unit or holds
the milter's listening socket. :func:`seems_running` only chooses the words of a note and never
signals anything. The outcomes are values (:class:`Reloaded`); the command line words them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from smtpplus_milter.config import Config
from smtpplus_milter.config.values import SocketSpec
from smtpplus_milter.infra import process

DEFAULT_PID_FILE = Path("/run/smtpplus/milter.pid")
SERVICE = "smtpplus-milter.service"
RELOAD_HINT = "systemctl reload smtpplus-milter"
OUR_NAME = b"smtpplus"


def milter_socket(config: Config) -> SocketSpec:
    """The milter's listening socket (``milter.socket``)."""
    return config.settings.milter.socket


class Outcome(StrEnum):
    SENT = "sent"
    NOT_RUNNING = "not_running"  # no pid, and nothing else says a milter runs
    NO_PID = "no_pid"  # a milter seems to run, but the pid file names none
    NOT_A_PID = "not_a_pid"  # the pid file holds 0, 1 or a negative number
    GONE = "gone"  # the pid does not run
    FOREIGN = "foreign"  # the pid runs, but is no smtpplus-milter (a stale pid file)
    UNCONFIRMED = "unconfirmed"  # calls itself smtpplus, but neither systemd nor the socket says it is ours
    FAILED = "failed"  # the signal could not be sent


@dataclass(frozen=True)
class Reloaded:
    outcome: Outcome
    pid: int | None = None
    proof: str = ""  # SENT: how we know the pid is the milter
    error: str = ""  # FAILED: why the signal could not be sent


def seems_running(pid_file: Path, socket: SocketSpec) -> bool:
    """Whether a milter appears to run: only to choose the words of a note, never to signal anything.

    Passive looks only (no connection to the milter socket, which would be a milter session):
    the pid file names a live smtpplus process, something listens on the milter socket, or
    systemd has a main process for the unit.
    """
    pid = process.read_pid(pid_file)
    if pid is not None and pid > 1 and OUR_NAME in process.cmdline(pid):
        return True
    if process.listening_socket_inodes(socket):
        return True
    return process.systemd_main_pid(SERVICE) is not None


def reload(pid_file: Path, socket: SocketSpec) -> Reloaded:
    """SIGHUP to the milter the pid file names, if it is confirmed as the running milter."""
    pid = process.read_pid(pid_file)
    if pid is None:
        return Reloaded(Outcome.NO_PID if seems_running(pid_file, socket) else Outcome.NOT_RUNNING)
    if pid <= 1:
        return Reloaded(Outcome.NOT_A_PID, pid)
    try:
        with process.pinned(pid) as pidfd:
            # A stale pid file may name a process that is not ours any more: never signal that.
            if OUR_NAME not in process.cmdline(pid):
                return Reloaded(Outcome.FOREIGN, pid)
            proof = _confirmed(pid, socket)
            if proof is None:
                return Reloaded(Outcome.UNCONFIRMED, pid)
            try:
                process.send_sighup(pid, pidfd)
            except OSError as exc:
                return Reloaded(Outcome.FAILED, pid, error=exc.strerror or str(exc))
            return Reloaded(Outcome.SENT, pid, proof=proof)
    except ProcessLookupError:
        return Reloaded(Outcome.GONE, pid)


def _confirmed(pid: int, socket: SocketSpec) -> str | None:
    """How we know *pid* is the running milter, or None if nothing says so."""
    if process.systemd_main_pid(SERVICE) == pid:
        return f"it is the MainPID of {SERVICE}"
    inodes = process.listening_socket_inodes(socket)
    if inodes and inodes & process.socket_inodes_of(pid):
        return f"it holds the milter socket {socket}"
    return None
