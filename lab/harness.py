"""Private, throw-away mail infrastructure on loopback: an SMTP sink, Dovecot SASL and Postfix.

This module owns starting and stopping *real* Postfix and Dovecot instances for the lab demo, the
end-to-end tests and the benchmarks. Every instance lives in its own directory (its own
``config_directory``, queue, data, sockets and logs), listens only on 127.0.0.1 and hands all mail
to a :class:`Sink` on loopback, so nothing here touches the machine's default Postfix, port 25, or
anything off the host.

Rules every class follows:

* ``start()`` either leaves the component running or stops whatever it had started and raises;
  ``stop()`` is idempotent, safe on an object that never started, and always bounded.
* Every wait has a deadline; a timeout names what was awaited and includes the tail of the
  component's log, because "timed out" alone never says why.
* Use as context managers so failure paths stop the processes too.

Requires root (Postfix's master and Dovecot drop privileges themselves) and the Debian packages
postfix, dovecot-core and openssl (and dnsmasq-base for :class:`DnsServer`). The TLS certificate
is made with the ``openssl`` command line tool, so the lab needs no Python crypto library.
"""

from __future__ import annotations

import asyncio
import grp
import ipaddress
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Self

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

LOOPBACK = "127.0.0.1"

# Where make_workdir() puts lab directories. Not $TMPDIR: pytest and systemd often point that at a
# 0700 directory, which user postfix (smtpd) and user dovecot (auth) could not traverse.
LAB_ROOT = Path(os.environ.get("SMTPPLUS_LAB_ROOT", "/tmp"))

POSTFIX_START_TIMEOUT = 30.0
POSTFIX_STOP_TIMEOUT = 20.0
DOVECOT_START_TIMEOUT = 15.0
# Dovecot's master waits about a second for its children before it exits on SIGTERM.
DOVECOT_STOP_TIMEOUT = 15.0
COMMAND_TIMEOUT = 30.0

# Unix socket paths longer than this do not fit in sockaddr_un.
_MAX_UNIX_PATH = 107


class LabError(RuntimeError):
    """A lab component failed to start, stop or answer; the message says which and shows its log."""


# --- small helpers -------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def _distinct_free_ports(count: int, *, taken: Sequence[int] = ()) -> list[int]:
    # free_port() may hand out a port that a component has been given but not yet bound.
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports and port not in taken:
            ports.append(port)
    return ports


def _check_socket_room(directory: Path, longest_name: int, what: str) -> None:
    # Postfix and Dovecot create their own unix sockets below these directories; a lab nested too
    # deep fails at start with "File name too long". Say so before anything is started.
    if len(str(directory)) + 1 + longest_name > _MAX_UNIX_PATH:
        raise LabError(
            f"{directory} is too long for the unix sockets {what} creates in it (at most "
            f"{_MAX_UNIX_PATH - 1 - longest_name} characters); use a shorter lab directory"
        )


def _ensure_traversable(path: Path) -> None:
    # Postfix's smtpd runs as user postfix and Dovecot's auth as user dovecot: both must be able to
    # walk from / to the sockets and files of the lab.
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            raise LabError(
                f"{parent} is not traversable by other users (mode {stat.filemode(mode)}); users postfix "
                f"and dovecot must reach {path}. Put the lab elsewhere (SMTPPLUS_LAB_ROOT, default /tmp)."
            )


def make_workdir(prefix: str) -> Path:
    """Create a fresh mode-0755 directory under /tmp (or $SMTPPLUS_LAB_ROOT) for one lab.

    ``make_workdir("smtpplus-lab")`` gives ``/tmp/smtpplus-lab-XXXXXXXX``; other prefixes are put
    behind ``smtpplus-lab-`` so leftovers are easy to recognise. The caller removes it
    (:func:`remove_workdir`).
    """
    name = prefix if prefix.startswith("smtpplus-") else f"smtpplus-lab-{prefix}"
    LAB_ROOT.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=LAB_ROOT))
    # mkdtemp makes it 0700, which would lock out users postfix and dovecot.
    path.chmod(0o755)
    _ensure_traversable(path)
    return path


def remove_workdir(path: Path) -> None:
    """Delete a lab directory, unless SMTPPLUS_LAB_KEEP is set (to read the logs after a failure)."""
    if os.environ.get("SMTPPLUS_LAB_KEEP"):
        return
    shutil.rmtree(path, ignore_errors=True)


def _prepare_dir(path: Path) -> Path:
    # The directory may be given by a caller as "not yet created"; umask must not make it 0700.
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    return path


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc.strerror})"
    kept = text.splitlines()[-lines:]
    return "\n".join(kept) if kept else f"(log {path} is empty)"


def _run(command: Sequence[str], *, timeout: float = COMMAND_TIMEOUT) -> tuple[int, str]:
    """Run a command to completion; return its exit status and combined output.

    Output goes through a temporary file, not a pipe: ``postfix start`` leaves a daemon behind
    that may inherit the pipe, and reading a pipe until EOF would then never return.
    """
    with tempfile.TemporaryFile() as output:
        try:
            completed = subprocess.run(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            output.seek(0)
            text = output.read().decode("utf-8", "replace")
            raise LabError(f"{' '.join(command)} did not finish within {timeout:.0f}s; output:\n{text}") from None
        output.seek(0)
        return completed.returncode, output.read().decode("utf-8", "replace")


def _backdate(path: Path) -> None:
    # Postfix treats a configuration file changed within the last second or two as "hot": every
    # program that reads it (postfix, master, each daemon) re-reads it every 300 ms until it has
    # cooled down. A freshly written main.cf made `postfix start` take 2.4 s instead of 0.2 s.
    past = time.time() - 10
    os.utime(path, (past, past))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is as good as gone.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as status:
            return status.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# Written into an instance's directory while it runs: who started it. An instance whose owner died
# without stopping it (SIGKILL, a killed CI job) is an orphan for stop_orphans().
_OWNER_FILE = "lab-owner.json"


def _process_start_time(pid: int) -> int | None:
    # Field 22 of /proc/PID/stat: with the pid, it identifies a process even after pid reuse.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as status:
            return int(status.read().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _write_owner(directory: Path, kind: str, **extra: Any) -> None:
    owner = {"kind": kind, "pid": os.getpid(), "start_time": _process_start_time(os.getpid()), **extra}
    (directory / _OWNER_FILE).write_text(json.dumps(owner), encoding="utf-8")


def _owner_alive(owner: dict[str, Any]) -> bool:
    pid = owner.get("pid")
    return isinstance(pid, int) and _pid_alive(pid) and _process_start_time(pid) == owner.get("start_time")


def stop_orphans(root: Path = LAB_ROOT) -> list[Path]:
    """Stop lab instances under *root* whose owning process died without stopping them.

    *root* is a directory of labs (default: where make_workdir() puts them) or one lab directory.

    Context managers cannot run when the owner is SIGKILLed; this finds such Postfix, Dovecot and
    OpenDKIM instances by the owner file each one keeps while running, and stops exactly those (by their
    own pid files and config paths, never by process name). Instances of live owners are left
    alone. Returns the instance directories it stopped.
    """
    # In a shared directory such as /tmp only look inside lab directories (smtpplus-*).
    first = "*" if root.name.startswith("smtpplus-") else "smtpplus-*"
    patterns = [f"{first}/{_OWNER_FILE}", f"{first}/*/{_OWNER_FILE}", f"{first}/*/*/{_OWNER_FILE}"]
    if root.name.startswith("smtpplus-"):
        patterns.append(_OWNER_FILE)
    stopped: list[Path] = []
    for pattern in patterns:
        for owner_file in root.glob(pattern):
            try:
                owner = json.loads(owner_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if not isinstance(owner, dict) or _owner_alive(owner):
                continue
            directory = owner_file.parent
            if owner.get("kind") == "postfix":
                _stop_postfix(directory / "etc", directory / "queue")
            elif owner.get("kind") == "dovecot" and isinstance(owner.get("pgid"), int):
                _stop_dovecot_group(owner["pgid"], directory / "dovecot.conf")
            elif owner.get("kind") == "opendkim" and isinstance(owner.get("pgid"), int):
                _stop_dovecot_group(owner["pgid"], directory / "opendkim.conf")  # lab/dkim.py
            owner_file.unlink(missing_ok=True)
            stopped.append(directory)
    return stopped


def make_tls_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate and key for ``relay.test`` (made with the openssl CLI).

    The key is 0600 root: Postfix's smtpd reads it as root before it drops privileges.
    """
    _prepare_dir(directory)
    cert, key = directory / "relay.test.crt", directory / "relay.test.key"
    status, output = _run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-days",
            "3650",
            "-subj",
            "/CN=relay.test",
            "-addext",
            "subjectAltName=DNS:relay.test",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ]
    )
    if status != 0:
        raise LabError(f"openssl could not make a test certificate in {directory}:\n{output}")
    key.chmod(0o600)
    cert.chmod(0o644)
    return cert, key


# --- the sink ------------------------------------------------------------------------------------


@dataclass
class ReceivedMessage:
    """One message as the sink received it.

    ``data`` is exactly what came over the wire after SMTP dot-unstuffing: CRLF line ends, no
    decoding. ``received_at`` (time.time()) is when the sink answered 250, i.e. after any
    ``slow_seconds`` delay: the moment Postfix counts the message as delivered.
    """

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    received_at: float
    mail_options: list[str] = field(default_factory=list)


# Large enough for anything the lab sends (messages above max_message_bytes included). aiosmtpd
# refuses lines over 1001 octets by default; Postfix (smtp_line_length_limit = 0) sends long lines
# unfolded, and the tests must see them as they are.
_SINK_LIMIT = 256 * 1024 * 1024


class _LongLineSMTP(SMTP):
    line_length_limit = _SINK_LIMIT


class _LimitedSMTP(_LongLineSMTP):
    """A session that waits for one of the sink's ``max_sessions`` places before its greeting, like
    a relay host that serves a few connections per client at a time and leaves the others waiting."""

    async def _handle_client(self) -> None:
        sink = self.event_handler._sink
        if sink._places is None:  # created on the server's own event loop
            sink._places = asyncio.Semaphore(sink.max_sessions)
        async with sink._places:
            await super()._handle_client()


class _SinkController(Controller):
    def factory(self) -> SMTP:
        if self.handler._sink.max_sessions is not None:
            return _LimitedSMTP(self.handler, **self.SMTP_kwargs)
        return _LongLineSMTP(self.handler, **self.SMTP_kwargs)


# What the sink answers at RCPT TO, by the recipient's local part (its start), so a test or the lab
# can make one message meet every delivery outcome: delivered, deferred (Postfix retries), bounced
# as an unknown user, bounced as blocked. Every other recipient is accepted.
SINK_ANSWERS: Mapping[str, str] = MappingProxyType(
    {
        "unknown": "550 5.1.1 Recipient address rejected: User unknown in the lab sink",
        "blocked": "550 5.7.1 Message refused by the lab sink's policy",
        "busy": "450 4.2.0 Mailbox busy in the lab sink, try again later",
    }
)


def sink_answer(address: str) -> str | None:
    """The lab sink's refusal for ``address`` (see SINK_ANSWERS), or None when it accepts it."""
    local = address.rpartition("@")[0].lower()
    for start, reply in SINK_ANSWERS.items():
        if local.startswith(start):
            return reply
    return None


class _SinkHandler:
    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        refusal = sink_answer(address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self._sink.slow_seconds > 0:
            # asyncio.sleep, not time.sleep: other sessions keep being served meanwhile, like a
            # real slow server with many connections.
            await asyncio.sleep(self._sink.slow_seconds)
        content = envelope.original_content
        self._sink._record(
            ReceivedMessage(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                data=bytes(content) if content is not None else b"",
                received_at=time.time(),
                mail_options=list(envelope.mail_options),
            )
        )
        return "250 2.0.0 Ok: stored by the smtpplus lab sink"


class Sink:
    """An SMTP server on 127.0.0.1 that records every message it accepts (aiosmtpd, own thread).

    It accepts every recipient except those SINK_ANSWERS names by local part (``unknown…@``: 550
    5.1.1, ``blocked…@``: 550 5.7.1, ``busy…@``: 450 4.2.0).

    ``slow_seconds`` delays every 250 after DATA, for benchmarks that need a slow next hop;
    ``max_sessions`` serves at most that many connections at a time (the others wait, connected,
    for their greeting), for a shared relay host whose connection limit bulk mail can hold.
    """

    def __init__(self, port: int | None = None, *, slow_seconds: float = 0.0, max_sessions: int | None = None) -> None:
        self._fixed_port = port
        self.port: int = port if port is not None else free_port()
        self.slow_seconds = slow_seconds
        self.max_sessions = max_sessions
        self._places: asyncio.Semaphore | None = None
        self._messages: list[ReceivedMessage] = []
        self._arrived = threading.Condition()
        self._controller: _SinkController | None = None

    @property
    def messages(self) -> list[ReceivedMessage]:
        """A snapshot: later arrivals do not change the returned list."""
        with self._arrived:
            return list(self._messages)

    def _record(self, message: ReceivedMessage) -> None:
        with self._arrived:
            self._messages.append(message)
            self._arrived.notify_all()

    def clear(self) -> None:
        with self._arrived:
            self._messages.clear()

    def start(self) -> None:
        if self._controller is not None:
            return
        # A port picked by free_port() can be taken by someone else before we bind it: pick again.
        attempts = 1 if self._fixed_port is not None else 5
        for attempt in range(attempts):
            controller = _SinkController(
                _SinkHandler(self),
                hostname=LOOPBACK,
                port=self.port,
                ready_timeout=10.0,
                server_hostname="sink.test",
                data_size_limit=_SINK_LIMIT,
                enable_SMTPUTF8=True,
            )
            try:
                controller.start()
            except OSError:
                if attempt + 1 >= attempts:
                    raise
                self.port = free_port()
                continue
            self._controller = controller
            return

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def wait_for(self, count: int, timeout: float = 20.0) -> list[ReceivedMessage]:
        """Wait until at least *count* messages have arrived; return them all (a snapshot)."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self._messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    arrived = "\n".join(
                        f"  from=<{m.mail_from}> to={m.rcpt_tos} {len(m.data)} bytes: {m.data[:200]!r}"
                        for m in self._messages
                    )
                    raise TimeoutError(
                        f"sink 127.0.0.1:{self.port}: expected {count} message(s) within {timeout}s, "
                        f"{len(self._messages)} arrived" + (f":\n{arrived}" if arrived else "")
                    )
                self._arrived.wait(remaining)
            return list(self._messages)

    def __enter__(self) -> Sink:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --- Dovecot -------------------------------------------------------------------------------------


_NO_AUTH_PENALTY = """\
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
"""


class Dovecot:
    """A private Dovecot that only authenticates (no IMAP/POP3), for Postfix's Dovecot SASL.

    Everything (config, base_dir, state_dir, log, the auth socket) lives in *workdir*, which is
    created if needed. The passdb is the caller's passwd-file, read the way production reads it
    (deploy/dovecot/10-smtpplus-auth.conf): default SHA512-CRYPT scheme, lowercased logins, auth
    process running as user dovecot. ``extra_config`` is appended to dovecot.conf.

    Unlike production, failed logins are not penalised (``auth_penalty=False``): Dovecot's penalty
    delays every later login from the same IP, even a correct one, by 2 s doubling up to 15 s, and
    every lab client is 127.0.0.1, so one wrong-password test would slow down unrelated tests.
    """

    def __init__(self, workdir: Path, passwd_file: Path, *, extra_config: str = "", auth_penalty: bool = False) -> None:
        self.workdir = Path(workdir)
        self.passwd_file = Path(passwd_file)
        self.extra_config = extra_config
        self.auth_penalty = auth_penalty
        self.config_file = self.workdir / "dovecot.conf"
        self.base_dir = self.workdir / "run"
        self.state_dir = self.workdir / "state"
        self.log_file = self.workdir / "dovecot.log"
        self.stdout_file = self.workdir / "dovecot.stdout"
        self.auth_socket = self.workdir / "auth-postfix"
        # The longest socket Dovecot makes in base_dir is replication-notify-fifo (23 characters).
        _check_socket_room(self.base_dir, 24, "Dovecot")
        self._process: subprocess.Popen[bytes] | None = None
        self._pgid: int | None = None

    # Dovecot's own tool makes the hash, so the lab proves Dovecot can read what is written.
    @staticmethod
    def hash_password(password: str) -> str:
        """``{SHA512-CRYPT}$6$...`` via ``doveadm pw`` (the password is briefly visible in argv)."""
        # -c /dev/null: hashing needs no configuration, and a half-edited /etc/dovecot must not
        # break the lab.
        status, output = _run(["doveadm", "-c", "/dev/null", "pw", "-s", "SHA512-CRYPT", "-p", password])
        hashed = output.strip()
        if status != 0 or not hashed.startswith("{SHA512-CRYPT}$6$"):
            raise LabError(f"doveadm pw failed (exit {status}): {output.strip()}")
        return hashed

    @staticmethod
    def write_passwd_file(path: Path, users: dict[str, str]) -> None:
        """Write a passwd-file of *users* (login -> plaintext password) with hashed passwords.

        Logins are lowercased because Dovecot lowercases the login before the lookup (default
        auth_username_format = %Lu). The file is root:dovecot 0640, replaced atomically.
        """
        lines = []
        for login, password in users.items():
            if not login or any(c in login for c in ":\n\r\t ") or "\n" in password:
                raise ValueError(f"login {login!r} cannot be written to a passwd-file")
            lines.append(f"{login.lower()}:{Dovecot.hash_password(password)}\n")
        path = Path(path)
        _ensure_dir_for(path)
        temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
        temporary.write_text("".join(lines), encoding="utf-8")
        os.chown(temporary, 0, grp.getgrnam("dovecot").gr_gid)
        temporary.chmod(0o640)
        temporary.replace(path)

    def _config_text(self) -> str:
        # Without its anvil socket the auth process disables the penalty (mode 0: not created).
        no_penalty = _NO_AUTH_PENALTY if not self.auth_penalty else ""
        return f"""\
# Written by lab.harness: a private auth-only Dovecot for one lab.
protocols =
# Nothing listens on the network (Dovecot refuses an empty listen).
listen = {LOOPBACK}
base_dir = {self.base_dir}
state_dir = {self.state_dir}
# Shows in ps as dovecot-<instance_name>/auth etc.: which lab a process belongs to.
instance_name = {self.workdir.parent.name}-{self.workdir.name}
log_path = {self.log_file}
ssl = no
auth_mechanisms = plain login
# Tests try wrong passwords on purpose; the default 2 s delay only slows them down.
auth_failure_delay = 0
{no_penalty}passdb {{
  driver = passwd-file
  args = scheme=SHA512-CRYPT {self.passwd_file}
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
service auth {{
  unix_listener {self.auth_socket} {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
{self.extra_config}
"""

    def _check_passwd_file(self) -> None:
        if not self.passwd_file.exists():
            # The product's CLI may write it only later; Dovecot rereads it when it changes.
            Dovecot.write_passwd_file(self.passwd_file, {})
        # Dovecot would only log "Permission denied" at the first login attempt; say it now.
        status, _ = _run(["runuser", "-u", "dovecot", "--", "test", "-r", str(self.passwd_file)])
        if status != 0:
            raise LabError(
                f"user dovecot cannot read {self.passwd_file} (mode "
                f"{stat.filemode(self.passwd_file.stat().st_mode)}); make it root:dovecot 0640"
            )

    def _answers(self) -> bool:
        # A real handshake, not just connect(): Dovecot's master accepts on behalf of an auth
        # process that may still fail to start; DONE means the auth process read its config.
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(2.0)
                client.connect(str(self.auth_socket))
                client.sendall(f"VERSION\t1\t2\nCPID\t{os.getpid()}\n".encode())
                received = b""
                while b"\nDONE\n" not in b"\n" + received:
                    chunk = client.recv(4096)
                    if not chunk:
                        return False
                    received += chunk
                return True
        except OSError:
            return False

    def start(self) -> None:
        if self._process is not None:
            return
        _prepare_dir(self.workdir)
        _ensure_traversable(self.workdir)
        self._check_passwd_file()
        self.config_file.write_text(self._config_text(), encoding="utf-8")
        self.auth_socket.unlink(missing_ok=True)
        with self.stdout_file.open("ab") as stdout:
            # Own session: if the master must be killed, its children go with the process group.
            self._process = subprocess.Popen(
                ["dovecot", "-F", "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._pgid = self._process.pid
        _write_owner(self.workdir, "dovecot", pgid=self._pgid)
        try:
            process = self._process
            deadline = time.monotonic() + DOVECOT_START_TIMEOUT
            while not self._answers():
                if process.poll() is not None:
                    raise LabError(
                        f"dovecot -F -c {self.config_file} exited with status {process.returncode}:\n"
                        f"{_tail(self.stdout_file)}\n{_tail(self.log_file)}"
                    )
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"Dovecot auth socket {self.auth_socket} did not answer within "
                        f"{DOVECOT_START_TIMEOUT:.0f}s; {self.log_file}:\n{_tail(self.log_file)}"
                    )
                time.sleep(0.02)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(DOVECOT_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                _kill_group(process.pid)
                process.wait(5)
        # Children normally exit with the master; make sure none outlives it.
        if not _wait_until(lambda: not self.pids(), 2.0):
            _kill_group(process.pid)
            if not _wait_until(lambda: not self.pids(), 5.0):
                raise LabError(f"Dovecot processes of {self.config_file} survived SIGKILL: {self.pids()}")
        (self.workdir / _OWNER_FILE).unlink(missing_ok=True)

    def pids(self) -> list[int]:
        """Live processes of this instance (its process group), also after stop(): should be none."""
        if self._pgid is None:
            return []
        return _group_pids(self._pgid)

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Dovecot:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _ensure_dir_for(path: Path) -> None:
    if not path.parent.exists():
        _prepare_dir(path.parent)


def _all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _pgid_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as status:
            return int(status.read().rpartition(")")[2].split()[2])
    except (OSError, ValueError, IndexError):
        return None


def _group_pids(pgid: int) -> list[int]:
    return [pid for pid in _all_pids() if _pgid_of(pid) == pgid and _pid_alive(pid)]


def _stop_dovecot_group(pgid: int, config_file: Path) -> None:
    # Only if the group leader still is that Dovecot (or OpenDKIM, started the same way, in a
    # session of its own with its config file in argv): the pgid may have been reused since.
    try:
        command = Path(f"/proc/{pgid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        command = []
    if str(config_file).encode() not in command:
        return
    _signal(pgid, signal.SIGTERM)
    if not _wait_until(lambda: not _group_pids(pgid), DOVECOT_STOP_TIMEOUT):
        _kill_group(pgid)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# --- Postfix -------------------------------------------------------------------------------------


# Postfix's queue subdirectories that hold messages (not logs such as defer/ or bounce/).
_MESSAGE_QUEUES = ("maildrop", "incoming", "active", "deferred", "hold", "corrupt")


class Postfix:
    """A private Postfix instance in *workdir*: own config_directory, queue and data directories.

    Two smtpd listeners on 127.0.0.1: ``smtp_port`` plays port 25 (STARTTLS offered, AUTH after
    STARTTLS, unauthenticated mail accepted only for relay_domains = example.net) and
    ``submission_port`` plays port 587 (STARTTLS required, only SASL-authenticated clients may
    send). Everything is delivered to ``[127.0.0.1]:relayhost_port``. master.cf is written here
    with only the services the lab needs, none chrooted, so absolute socket paths work.

    The configuration is written by the constructor, so :meth:`set_main_cf` works before
    :meth:`start`; *main_cf* overrides or extends main.cf, *master_cf_extra* is appended to
    master.cf.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        relayhost_port: int,
        sasl_socket: Path | None,
        milter: str | None = None,
        main_cf: dict[str, str] | None = None,
        master_cf_extra: str = "",
    ) -> None:
        self.workdir = Path(workdir)
        self.queue_dir = self.workdir / "queue"
        # The longest socket in the queue directory is private/proxywrite (18 characters).
        _check_socket_room(self.queue_dir, 20, "Postfix")
        _prepare_dir(self.workdir)
        _ensure_traversable(self.workdir)
        self.config_dir = _prepare_dir(self.workdir / "etc")
        self.data_dir = self.workdir / "data"
        self.log_file = self.workdir / "postfix.log"
        self.relayhost_port = relayhost_port
        self.sasl_socket = Path(sasl_socket) if sasl_socket is not None else None
        self.milter = milter
        self.smtp_port, self.submission_port = _distinct_free_ports(2, taken=[relayhost_port])
        self.tls_cert, self.tls_key = make_tls_cert(self.workdir / "tls")
        self._started = False
        self._prepare_directories()
        self._write_main_cf(main_cf or {})
        self.write_config_file("master.cf", self._master_cf() + master_cf_extra + "\n")

    # --- configuration -------------------------------------------------------------------

    def _prepare_directories(self) -> None:
        # The queue directory belongs to root (postfix check insists); `postfix start` creates
        # and owns its subdirectories. The master dies on master.lock unless data_directory
        # belongs to postfix.
        _prepare_dir(self.queue_dir)
        _prepare_dir(self.data_dir)
        postfix_user = pwd.getpwnam("postfix")
        os.chown(self.data_dir, postfix_user.pw_uid, postfix_user.pw_gid)
        self.data_dir.chmod(0o700)

    def _main_cf(self) -> dict[str, str]:
        sasl = self.sasl_socket is not None
        params = {
            "compatibility_level": "3.6",
            # Long queue ids never repeat, so a queue id names one message for good (delivery
            # tracking keys on it; postfix-config prints the same line for production).
            "enable_long_queue_ids": "yes",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "myhostname": "relay.test",
            "mydomain": "relay.test",
            "inet_interfaces": LOOPBACK,
            "inet_protocols": "ipv4",
            "mydestination": "",
            # Loopback is where every test client comes from: nobody is trusted for its address
            # (the restrictions below never use permit_mynetworks), but the lab's own load
            # generators are exempt from connection-rate limits (anvil).
            "mynetworks": "127.0.0.0/8",
            "smtpd_client_event_limit_exceptions": "127.0.0.0/8",
            "local_transport": "error:local delivery is disabled in the smtpplus lab",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "relay_domains": "example.net",
            "relayhost": f"[{LOOPBACK}]:{self.relayhost_port}",
            "smtpd_relay_restrictions": "permit_sasl_authenticated, reject_unauth_destination",
            "smtpd_recipient_restrictions": "",
            # Without this, Postfix treats 127.0.0.1 as local and adds a missing From:/Date:/
            # Message-ID: itself, hiding what a remote client really sent.
            "local_header_rewrite_clients": "",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": str(self.tls_cert),
            "smtpd_tls_key_file": str(self.tls_key),
            "smtpd_tls_auth_only": "yes",
            "smtpd_sasl_auth_enable": "yes" if sasl else "no",
            # There is no syslog daemon: postlogd writes here (maillog_file must lie under a
            # listed prefix).
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": f"/var, /dev/stdout, {self.workdir}",
            # Default 1 s: would throttle benchmarks that submit faster than Postfix delivers.
            "in_flow_delay": "0",
            # Keep long lines long: Postfix folds at 998 octets otherwise.
            "smtp_line_length_limit": "0",
            # Room for messages above the milter's own 20 MiB limit, so the milter decides.
            "message_size_limit": "52428800",
            "mailbox_size_limit": "0",
            # A failed delivery is retried soon and given up quickly: tests wait seconds, not days.
            "queue_run_delay": "2s",
            "minimal_backoff_time": "2s",
            "maximal_backoff_time": "10s",
            "maximal_queue_lifetime": "10m",
            "bounce_queue_lifetime": "10m",
            "delay_warning_time": "0",
            # No postmaster notices: they would show up at the sink as unexpected messages.
            "notify_classes": "",
            "biff": "no",
            "append_dot_mydomain": "no",
            "readme_directory": "no",
        }
        if self.sasl_socket is not None:
            params.update(
                {
                    "smtpd_sasl_type": "dovecot",
                    # Absolute: smtpd is not chrooted here (production uses private/auth).
                    "smtpd_sasl_path": str(self.sasl_socket),
                    "smtpd_sasl_security_options": "noanonymous",
                    "smtpd_sasl_tls_security_options": "noanonymous",
                    "broken_sasl_auth_clients": "yes",
                }
            )
        if self.milter:
            params.update(
                {
                    "smtpd_milters": self.milter,
                    "non_smtpd_milters": "",
                    "milter_default_action": "tempfail",
                    "milter_protocol": "6",
                }
            )
        return params

    def _write_main_cf(self, overrides: dict[str, str]) -> None:
        params = self._main_cf()
        params.update(overrides)
        lines = ["# Written by lab.harness: a private Postfix for one lab."]
        for name, value in params.items():
            if "\n" in value:
                raise ValueError(f"main.cf value for {name} contains a newline")
            lines.append(f"{name} = {value}")
        self.write_config_file("main.cf", "\n".join(lines) + "\n")

    def _master_cf(self) -> str:
        # chroot = n everywhere: `postfix start` does not populate a chroot, and absolute socket
        # paths (Dovecot, the milter) only work unchrooted.
        return f"""\
# Written by lab.harness. Only the services the lab needs, none chrooted.
# service type  private unpriv  chroot  wakeup  maxproc command + args
{LOOPBACK}:{self.smtp_port} inet n - n - - smtpd
  -o syslog_name=postfix/smtp-in
{LOOPBACK}:{self.submission_port} inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable={"yes" if self.sasl_socket is not None else "no"}
  -o smtpd_tls_auth_only=yes
  -o smtpd_reject_unlisted_recipient=no
  -o smtpd_client_restrictions=
  -o smtpd_helo_restrictions=
  -o smtpd_sender_restrictions=
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o milter_macro_daemon_name=ORIGINATING
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
  -o syslog_name=postfix/$service_name
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

    def write_config_file(self, name: str, text: str) -> Path:
        """Write a file into config_dir (e.g. a header_checks table) so Postfix reads it at once."""
        path = self.config_dir / name
        path.write_text(text, encoding="utf-8")
        _backdate(path)
        return path

    def set_main_cf(self, params: dict[str, str]) -> None:
        """Change main.cf with ``postconf -e``; call :meth:`reload` for a running instance."""
        if not params:
            return
        status, output = _run(
            ["postconf", "-c", str(self.config_dir), "-e", *(f"{name}={value}" for name, value in params.items())]
        )
        if status != 0:
            raise LabError(f"postconf -c {self.config_dir} -e failed (exit {status}):\n{output}")
        _backdate(self.config_dir / "main.cf")

    # --- lifecycle -----------------------------------------------------------------------

    def _postfix(self, action: str, timeout: float) -> tuple[int, str]:
        return _run(["postfix", "-c", str(self.config_dir), action], timeout=timeout)

    def start(self) -> None:
        """``postfix -c DIR start``, then wait until both listeners answer with an SMTP banner."""
        if self._started:
            return
        self._started = True
        _write_owner(self.workdir, "postfix")
        try:
            log_offset = self._log_size()
            status, output = self._postfix("start", POSTFIX_START_TIMEOUT)
            if status != 0:
                raise LabError(
                    f"postfix -c {self.config_dir} start failed (exit {status}):\n{output}\n"
                    f"{self.log_file}:\n{_tail(self.log_file)}"
                )
            self._wait_for_listeners(POSTFIX_START_TIMEOUT, log_offset)
        except BaseException:
            self.stop()
            raise

    def _log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except FileNotFoundError:
            return 0

    def _new_fatal_log_line(self, offset: int) -> str | None:
        try:
            with self.log_file.open("rb") as log:
                log.seek(offset)
                new = log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return None
        for line in new.splitlines():
            if " fatal: " in line or "bad command startup" in line:
                return line
        return None

    def _wait_for_listeners(self, timeout: float, log_offset: int) -> None:
        # A banner, not just connect(): the master accepts on behalf of smtpd, which can still die
        # on a configuration error (bad certificate, unreadable file) after the port is open.
        # The master then retries forever, throttled: a fatal log line ends the wait at once.
        deadline = time.monotonic() + timeout
        for port in (self.smtp_port, self.submission_port):
            while _smtp_banner(port, timeout=1.0) is None:
                fatal = self._new_fatal_log_line(log_offset)
                if fatal is not None:
                    raise LabError(
                        f"Postfix on 127.0.0.1:{port} failed: {fatal}\n{self.log_file}:\n{_tail(self.log_file)}"
                    )
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"Postfix on 127.0.0.1:{port} gave no SMTP banner within {timeout:.0f}s; "
                        f"{self.log_file}:\n{_tail(self.log_file)}"
                    )
                time.sleep(0.05)

    def pids(self) -> list[int]:
        """Live processes of this instance (also after stop(): should be none)."""
        return _postfix_pids(self.config_dir)

    def stop(self) -> None:
        """``postfix -c DIR stop``, then wait until no process of this instance is left (bounded)."""
        if not self._started:
            return
        self._started = False
        _stop_postfix(self.config_dir, self.queue_dir)
        (self.workdir / _OWNER_FILE).unlink(missing_ok=True)

    def logrotate(self) -> None:
        """``postfix logrotate``: postlogd renames maillog_file (with a time suffix) and starts a new one."""
        status, output = self._postfix("logrotate", COMMAND_TIMEOUT)
        if status != 0:
            raise LabError(f"postfix -c {self.config_dir} logrotate failed (exit {status}):\n{output}")

    def delete_queue(self) -> None:
        """``postsuper -d ALL``: drop every queued message (a deferred one would otherwise stay)."""
        status, output = _run(["postsuper", "-c", str(self.config_dir), "-d", "ALL"])
        if status != 0:
            raise LabError(f"postsuper -c {self.config_dir} -d ALL failed (exit {status}):\n{output}")

    def reload(self) -> None:
        """``postfix -c DIR reload`` and wait until both listeners answer again."""
        log_offset = self._log_size()
        status, output = self._postfix("reload", COMMAND_TIMEOUT)
        if status != 0:
            raise LabError(f"postfix -c {self.config_dir} reload failed (exit {status}):\n{output}")
        self._wait_for_listeners(POSTFIX_START_TIMEOUT, log_offset)

    def flush(self) -> None:
        """``postqueue -f``: retry everything deferred now."""
        status, output = _run(["postqueue", "-c", str(self.config_dir), "-f"])
        if status != 0:
            raise LabError(f"postqueue -c {self.config_dir} -f failed (exit {status}):\n{output}")

    # --- looking inside ------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_file, lines)

    def wait_for_log(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """The first match of ``pattern`` in the log, waiting for it.

        postlogd writes a delivery's line a moment after the queue file is gone, so a test that
        reads the log right after ``wait_for_empty_queue`` can miss it: wait for the line itself.
        """
        found: list[re.Match[str]] = []

        def seen() -> bool:
            match = re.search(pattern, self.log_text())
            if match:
                found.append(match)
            return match is not None

        if not _wait_until(seen, timeout, interval=0.1):
            raise TimeoutError(
                f"no line matching {pattern!r} in {self.log_file} after {timeout}s:\n{_tail(self.log_file)}"
            )
        return found[0]

    def queue_ids(self) -> list[str]:
        """Queue ids of every message still in the queue (maildrop to hold), sorted.

        Reads the queue directories directly rather than asking showq (postqueue -j): it works
        whether or not the instance is running.
        """
        found: set[str] = set()
        for queue in _MESSAGE_QUEUES:
            for _dirpath, _dirnames, filenames in os.walk(self.queue_dir / queue):
                found.update(filenames)
        return sorted(found)

    def queue_json(self) -> list[dict[str, Any]]:
        """``postqueue -j`` of a running instance: one dict per message (recipients, reasons...)."""
        status, output = _run(["postqueue", "-c", str(self.config_dir), "-j"])
        if status != 0:
            raise LabError(f"postqueue -c {self.config_dir} -j failed (exit {status}):\n{output}")
        return [json.loads(line) for line in output.splitlines() if line.startswith("{")]

    def wait_for_empty_queue(self, timeout: float = 20.0) -> None:
        if not _wait_until(lambda: not self.queue_ids(), timeout, interval=0.1):
            raise TimeoutError(
                f"Postfix queue {self.queue_dir} still holds {self.queue_ids()} after {timeout}s; "
                f"{self.log_file}:\n{_tail(self.log_file)}"
            )

    def __enter__(self) -> Postfix:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _postfix_pids(config_dir: Path) -> list[int]:
    """Processes of one Postfix instance: its master exports MAIL_CONFIG to every daemon it runs."""
    marker = f"MAIL_CONFIG={config_dir}".encode()
    found = []
    for pid in _all_pids():
        if pid == os.getpid():
            continue
        try:
            environment = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if marker in environment.split(b"\0") and _pid_alive(pid):
            found.append(pid)
    return found


def _stop_postfix(config_dir: Path, queue_dir: Path) -> None:
    try:
        master: int | None = int((queue_dir / "pid" / "master.pid").read_text().strip())
    except (OSError, ValueError):
        master = None
    if master is not None and master in _postfix_pids(config_dir):
        try:
            # It waits up to 5 s for the master itself, then kills the master's process group.
            _run(["postfix", "-c", str(config_dir), "stop"], timeout=POSTFIX_STOP_TIMEOUT)
        except LabError:
            pass  # escalated below
        if not _wait_until(lambda: not _pid_alive(master), POSTFIX_STOP_TIMEOUT):
            _signal(master, signal.SIGKILL)
    # Daemons notice the master is gone and exit on their own, within about a second.
    if not _wait_until(lambda: not _postfix_pids(config_dir), 10.0):
        for pid in _postfix_pids(config_dir):
            _signal(pid, signal.SIGKILL)
        if not _wait_until(lambda: not _postfix_pids(config_dir), 5.0):
            raise LabError(f"Postfix processes of {config_dir} survived SIGKILL: {_postfix_pids(config_dir)}")


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _smtp_banner(port: int, timeout: float = 2.0) -> str | None:
    """The first reply line of an SMTP server on 127.0.0.1:port, or None if there is none (yet)."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as client:
            line = client.makefile("rb").readline(1024)
            if len(line) < 4 or not line[:3].isdigit():
                return None
            try:
                # Say goodbye, so smtpd logs a clean disconnect rather than a lost connection.
                client.sendall(b"QUIT\r\n")
            except OSError:
                pass
            return line.decode("ascii", "replace").rstrip()
    except OSError:
        return None


# --- Alertmanager --------------------------------------------------------------------------------

ALERTMANAGER_START_TIMEOUT = 20.0
ALERTMANAGER_STOP_TIMEOUT = 10.0


class _ForegroundServer:
    """A server that runs in the foreground as our child, in a session of its own.

    Subclasses set the timeouts and ``log_file``, say how to tell it is ready (``_ready``) and
    call ``_launch`` from ``start``; stopping, context management and the log tail are shared.
    """

    NAME = "server"
    START_TIMEOUT = 10.0
    STOP_TIMEOUT = 5.0
    log_file: Path
    _process: subprocess.Popen[bytes] | None

    def _ready(self) -> bool:
        raise NotImplementedError

    def _launch(self, command: list[str], output: Path) -> None:
        with output.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            process = self._process
            deadline = time.monotonic() + self.START_TIMEOUT
            while not self._ready():
                if process.poll() is not None:
                    raise LabError(f"{command[0]} exited with status {process.returncode}:\n{_tail(output)}")
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"{self.NAME} was not ready within {self.START_TIMEOUT:.0f}s; "
                        f"{self.log_file}:\n{_tail(self.log_file)}"
                    )
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(self.STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            _kill_group(process.pid)
            process.wait(5)

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_file, lines)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        raise NotImplementedError


class Alertmanager(_ForegroundServer):
    """A private Prometheus Alertmanager on 127.0.0.1 (Debian prometheus-alertmanager).

    Its config, storage and log live in *workdir*; clustering is off (empty
    ``--cluster.listen-address``) and the only receiver is a null one, so alerts are kept and
    shown by ``GET /api/v2/alerts`` and never sent anywhere.
    """

    NAME = "Alertmanager"
    START_TIMEOUT = ALERTMANAGER_START_TIMEOUT
    STOP_TIMEOUT = ALERTMANAGER_STOP_TIMEOUT

    BINARY = "prometheus-alertmanager"

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.port = port if port is not None else free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.config_file = self.workdir / "alertmanager.yml"
        self.storage_dir = self.workdir / "data"
        self.log_file = self.workdir / "alertmanager.log"
        self._process: subprocess.Popen[bytes] | None = None

    def _config_text(self) -> str:
        return """\
# Written by lab.harness: keep every alert, send none.
route:
  receiver: "null"
  group_wait: 1s
receivers:
  - name: "null"
"""

    def _get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, b""

    def _ready(self) -> bool:
        try:
            return self._get("/-/ready", timeout=1.0)[0] == 200
        except OSError:
            return False

    def start(self) -> None:
        if self._process is not None:
            return
        _prepare_dir(self.workdir)
        _prepare_dir(self.storage_dir)
        self.config_file.write_text(self._config_text(), encoding="utf-8")
        self._launch(
            [
                self.BINARY,
                f"--config.file={self.config_file}",
                f"--storage.path={self.storage_dir}",
                f"--web.listen-address={LOOPBACK}:{self.port}",
                "--cluster.listen-address=",
            ],
            self.log_file,
        )

    def alerts(self) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts``: every alert Alertmanager currently holds."""
        status, body = self._get("/api/v2/alerts")
        if status != 200:
            raise LabError(f"GET {self.url}/api/v2/alerts answered {status}; {self.log_file}:\n{_tail(self.log_file)}")
        result: list[dict[str, Any]] = json.loads(body)
        return result


# --- DNS -------------------------------------------------------------------------------------------

DNS_START_TIMEOUT = 10.0
DNS_STOP_TIMEOUT = 5.0


def _strings_of(text: str, size: int = 255) -> list[str]:
    """*text* cut into TXT character-strings of at most *size* octets (one for a short text)."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class DnsServer(_ForegroundServer):
    """A private dnsmasq on 127.0.0.1:PORT (UDP and TCP) that knows only the records it is given.

    *txt* holds (name, text) pairs (one pair per TXT record; repeat a name for several records; a
    text over 255 octets, such as a 2048-bit DKIM key, is served as several character-strings of
    one record, which readers join), *hosts* (name, IPv4/IPv6) pairs (dnsmasq answers the PTR of
    each address with its name too), *mx* (domain, mail host) pairs, *ptr* (IP, name) pairs: a
    PTR record alone, with no address record for the name. Names below one of *local* domains
    that have no record get NXDOMAIN (give the reverse zone, e.g. ``2.0.192.in-addr.arpa``, to
    have an unknown PTR answered NXDOMAIN); nothing is forwarded anywhere (``--no-resolv``), and
    neither /etc/hosts nor /etc/dnsmasq.conf is read. Debian package dnsmasq-base.
    """

    NAME = "dnsmasq"
    START_TIMEOUT = DNS_START_TIMEOUT
    STOP_TIMEOUT = DNS_STOP_TIMEOUT

    BINARY = "dnsmasq"

    def __init__(
        self,
        workdir: Path,
        *,
        txt: Sequence[tuple[str, str]] = (),
        hosts: Sequence[tuple[str, str]] = (),
        mx: Sequence[tuple[str, str]] = (),
        ptr: Sequence[tuple[str, str]] = (),
        local: Sequence[str] = ("test",),
        port: int | None = None,
    ) -> None:
        for name, text in txt:
            if "," in text or "," in name:
                raise LabError(f"TXT {name} {text!r}: dnsmasq would split it at the ','; leave commas out")
        self.workdir = Path(workdir)
        self.port = port if port is not None else free_port()
        self.address = f"{LOOPBACK}:{self.port}"
        self.log_file = self.workdir / "dnsmasq.log"
        self.records = (tuple(txt), tuple(hosts), tuple(mx), tuple(local))
        self.ptr = tuple((ipaddress.ip_address(ip).reverse_pointer, name) for ip, name in ptr)
        self._process: subprocess.Popen[bytes] | None = None

    def _command(self) -> list[str]:
        txt, hosts, mx, local = self.records
        command = [
            self.BINARY,
            "--no-daemon",
            "--conf-file=/dev/null",
            f"--port={self.port}",
            f"--listen-address={LOOPBACK}",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--pid-file=",
            "--log-queries",
            f"--log-facility={self.log_file}",
        ]
        if os.geteuid() == 0:
            # dnsmasq would switch to user dnsmasq, which may not exist and could not write the log.
            command.append("--user=root")
        command += [f"--local=/{domain}/" for domain in local]
        # dnsmasq makes each ','-separated part one character-string (at most 255 octets).
        command += [f"--txt-record={name},{','.join(_strings_of(text))}" for name, text in txt]
        command += [f"--host-record={name},{address}" for name, address in hosts]
        command += [f"--mx-host={domain},{host},10" for domain, host in mx]
        command += [f"--ptr-record={reverse},{name}" for reverse, name in self.ptr]
        return command

    def _ready(self) -> bool:
        import dns.exception
        import dns.message
        import dns.query

        try:
            dns.query.udp(dns.message.make_query("ready.invalid.", "A"), LOOPBACK, port=self.port, timeout=0.3)
        except (dns.exception.DNSException, OSError):
            return False
        return True

    def start(self) -> None:
        if self._process is not None:
            return
        _prepare_dir(self.workdir)
        self._launch(self._command(), self.workdir / "dnsmasq.out")
