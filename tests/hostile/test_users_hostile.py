"""Hostile and careless inputs to the ``users`` / ``verify`` commands and the files they write.

Each test here stands for one way an operator's command, a stale file or a local user could make
the relay do more than it was told: widen an SMTP+ user to "any sender" as a side effect, leave
a copy of the passwd-file behind, follow a planted symbolic link, or SIGHUP a process that only
looks like the milter.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from smtpplus_milter import cli
from smtpplus_milter.config import load_config
from smtpplus_milter.config.rules import rules_of
from smtpplus_milter.core.explain import explain
from smtpplus_milter.infra import files
from smtpplus_milter.infra.files import FileProblem, Ownership, locked, replace_atomically

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
WIDENS = "would have no authorized domains or senders left and could then send as ANY sender"

# --- infra/files.py------------------------------------------------------------------------------------


def _no_fchown(fd: int, uid: int, gid: int) -> None:
    raise PermissionError(1, "Operation not permitted")


def _leftovers(directory: Path, name: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(f".{name}.") and p.name.endswith(".tmp"))


def test_no_temporary_copy_is_left_when_the_owner_cannot_be_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a non-root operator: the new passwd-file cannot be given root:dovecot. The temporary
    # file already holds every new hash; it must not stay behind next to the real one.
    target = tmp_path / "smtpplus.passwd"
    monkeypatch.setattr(os, "fchown", _no_fchown)
    owner = Ownership(0o640, os.geteuid() + 4242, os.getegid() + 4242)
    with pytest.raises(FileProblem, match="cannot give the new file owner"):
        replace_atomically(target, b"wp-site:{SHA512-CRYPT}$6$secret\n", new_file=owner)
    assert not target.exists()
    assert _leftovers(tmp_path, target.name) == []


def test_no_temporary_copy_is_left_when_an_existing_files_owner_cannot_be_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "smtpplus.passwd"
    target.write_bytes(b"old\n")
    # A file owned by someone else (as root we can make one; a non-root writer then cannot keep it).
    other = os.geteuid() + 4242
    if os.geteuid() == 0:
        os.chown(target, other, other)
    monkeypatch.setattr(os, "fchown", _no_fchown)
    monkeypatch.setattr(os, "geteuid", lambda: other + 1)
    with pytest.raises(FileProblem):
        replace_atomically(target, b"new\n")
    assert target.read_bytes() == b"old\n"
    assert _leftovers(tmp_path, target.name) == []


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"do not touch\n")
    before = victim.stat()
    users = tmp_path / "users.yaml"
    users.write_text("{}\n", encoding="utf-8")
    files.lock_path(users).symlink_to(victim)
    with pytest.raises(FileProblem, match="symbolic link"):
        with locked(users):
            pytest.fail("the lock was taken through a symbolic link")
    assert victim.read_bytes() == b"do not touch\n"
    assert victim.stat().st_mode == before.st_mode and victim.stat().st_mtime_ns == before.st_mtime_ns


def test_a_dangling_symlinked_lock_file_creates_nothing(tmp_path: Path) -> None:
    planted = tmp_path / "elsewhere" / "created-by-root"
    planted.parent.mkdir()
    users = tmp_path / "users.yaml"
    files.lock_path(users).symlink_to(planted)
    with pytest.raises(FileProblem, match="symbolic link"):
        with locked(users):
            pytest.fail("the lock was taken through a symbolic link")
    assert not planted.exists()


# --- no command widens a restricted user to "any sender" ------------------------------------------


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """The example config (verification.required on), a closed SMTP port, the example users."""
    shutil.copy(DEPLOY / "users.yaml", tmp_path / "users.yaml")
    settings = yaml.safe_load((DEPLOY / "smtpplus.yaml").read_text(encoding="utf-8"))
    settings["sasl"]["passwd_file"] = str(tmp_path / "smtpplus.passwd")
    settings["verification"]["smtp"] = "127.0.0.1:9"  # nothing listens: code mail fails at once
    (tmp_path / "smtpplus.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")
    (tmp_path / "smtpplus.passwd").write_text("app:{SHA512-CRYPT}$6$x$y\n", encoding="utf-8")
    return tmp_path / "smtpplus.yaml"


def run(conf: Path, *args: str) -> int:
    group, action, *rest = args
    return cli.main([group, action, "-c", str(conf), *rest])


def with_user(conf: Path, entry: str) -> None:
    """Append the SMTP+ user ``app`` with *entry* (YAML lines under it) to the users file."""
    users = conf.parent / "users.yaml"
    users.write_text(users.read_text(encoding="utf-8") + "\napp:\n  active: true\n" + entry, encoding="utf-8")


def snapshot(conf: Path) -> dict[str, bytes]:
    """Every file next to the config but the (empty) lock files, which a refused command may create."""
    return {p.name: p.read_bytes() for p in sorted(conf.parent.iterdir()) if p.is_file() and p.suffix != ".lock"}


def may_send_as(conf: Path, sender: str, login: str = "app") -> bool:
    """What the milter would decide for *login* sending as *sender* with the files as they are now."""
    return explain(rules_of(load_config(conf)), login, f"<{sender}>", [("From", sender)]).accepted


EDITS = [
    pytest.param('  authorized_domains: "bank.com"\n', ["--remove-authorized-domain", "bank.com"], id="last-domain"),
    pytest.param(
        "  authorized_senders: [pay@bank.com]\n", ["--remove-authorized-sender", "PAY@Bank.com"], id="last-sender"
    ),
    pytest.param(
        '  authorized_domains: "bank.com"\n  authorized_senders: "info@shop.example"\n',
        ["--remove-authorized-domain", "bank.com", "--remove-authorized-sender", "info@shop.example"],
        id="domain-and-sender-at-once",
    ),
    pytest.param('  pending_domains: "bank.com"\n', ["--remove-authorized-domain", "bank.com"], id="pending-domain"),
    pytest.param(
        '  pending_senders: "pay@bank.com"\n', ["--remove-authorized-sender", "pay@bank.com"], id="pending-sender"
    ),
    pytest.param(
        '  authorized_domains: "bank.com"\n  pending_senders: "pay@bank.com"\n',
        ["--remove-authorized-sender", "pay@bank.com", "--remove-authorized-domain", "bank.com", "--note", "x"],
        id="authorized-and-pending-with-other-changes",
    ),
    pytest.param(
        '  authorized_domains: "bank.com;bank.com"\n',
        ["--remove-authorized-domain", "bank.com", "--priority", "1"],
        id="a-duplicate-is-no-second-restriction",
    ),
]


@pytest.mark.parametrize(("entry", "options"), EDITS)
def test_edit_that_removes_the_last_restriction_is_refused_and_writes_nothing(
    conf: Path, capsys: pytest.CaptureFixture[str], entry: str, options: list[str]
) -> None:
    with_user(conf, entry)
    before = snapshot(conf)
    assert run(conf, "users", "edit", "app", *options) == 1
    err = capsys.readouterr().err
    assert f"app {WIDENS}" in err and "--allow-any-sender" in err and "nothing was changed" in err
    assert "Traceback" not in err
    assert snapshot(conf) == before
    assert not may_send_as(conf, "ceo@paypal.com")


@pytest.mark.parametrize(("entry", "options"), EDITS)
def test_edit_removes_the_last_restriction_only_when_told_so(
    conf: Path, capsys: pytest.CaptureFixture[str], entry: str, options: list[str]
) -> None:
    with_user(conf, entry)
    assert run(conf, "users", "edit", "app", *options, "--allow-any-sender") == 0
    err = capsys.readouterr().err
    assert "app may now send as ANY sender" in err and "--allow-any-sender" in err
    assert may_send_as(conf, "ceo@paypal.com")


def test_verify_cancel_of_the_last_pending_entry_is_refused(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The report's case: a user created restricted to one domain that still awaits verification.
    assert run(conf, "users", "add", "app2", "--authorized-domain", "bank.com;bank.example") == 0
    capsys.readouterr()
    assert run(conf, "verify", "cancel", "app2", "bank.example") == 0  # one is left: fine
    before = snapshot(conf)
    assert run(conf, "verify", "cancel", "app2", "bank.com") == 1
    err = capsys.readouterr().err
    assert f"app2 {WIDENS}" in err and "verify cancel app2 bank.com --allow-any-sender" in err
    assert "Traceback" not in err
    assert snapshot(conf) == before  # the users file and the token in verification.json
    assert cli.main(["explain", "-c", str(conf), "--user", "app2", "--mail-from", "ceo@paypal.com", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "rejected"


def test_verify_cancel_with_allow_any_sender_says_so(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(conf, "users", "add", "app2", "--authorized-domain", "bank.com") == 0
    capsys.readouterr()
    assert run(conf, "verify", "cancel", "app2", "bank.com", "--allow-any-sender") == 0
    err = capsys.readouterr().err
    assert "app2 may now send as ANY sender" in err and "any_sender_allowed" in err
    assert may_send_as(conf, "ceo@paypal.com", "app2")


# --- users --reload signals only the milter ----------------------------------------------------------

# A stand-in process: records every SIGHUP in RECORD; with unix:PATH it listens there (as the
# milter does), with connect:PATH it is only a client of that socket, with "-" it holds no socket. Its command line says "smtpplus", as a decoy's would.
STAND_IN = r"""
import signal, socket, sys, time
record, spec = sys.argv[1], sys.argv[2]
signal.signal(signal.SIGHUP, lambda *_: open(record, "a").write("HUP\n"))
kind, _, rest = spec.partition(":")
if kind == "unix":
    server = socket.socket(socket.AF_UNIX); server.bind(rest); server.listen()
elif kind == "connect":
    client = socket.socket(socket.AF_UNIX); client.connect(rest)
open(record + ".ready", "w").close()
while True:
    time.sleep(0.1)
"""


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a unix socket path must fit in 108 bytes."""
    directory = Path(tempfile.mkdtemp(prefix="sp-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def process(argv: list[str], ready: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run *argv* until the block ends; always killed and reaped, also when the test fails."""
    child = subprocess.Popen(argv)
    try:
        deadline = time.monotonic() + 10
        while ready is not None and not ready.exists():
            assert child.poll() is None and time.monotonic() < deadline, "the stand-in did not start"
            time.sleep(0.02)
        if ready is None:
            time.sleep(0.3)  # bash has to exec first
        yield child
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
        child.wait()


def stand_in(directory: Path, name: str, spec: str) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    record = directory / name
    return process([sys.executable, "-c", STAND_IN, str(record), spec, "smtpplus-milter"], directory / f"{name}.ready")


def reload_with_pid(conf: Path, directory: Path, pid: int) -> str:
    pid_file = directory / "milter.pid"
    pid_file.write_text(f"{pid}\n", encoding="ascii")
    args = ["users", "edit", "shop-frontend", "--note", "x", "--reload", "--pid-file", str(pid_file)]
    assert run(conf, *args) == 0
    time.sleep(0.3)  # a signal, had one been sent, has arrived by now
    return pid_file.read_text(encoding="ascii")


@pytest.fixture
def milter_conf(conf: Path, short_dir: Path) -> Path:
    settings = yaml.safe_load(conf.read_text(encoding="utf-8"))
    settings["milter"]["socket"] = f"unix:{short_dir}/milter.sock"
    conf.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return conf


def test_reload_does_not_signal_a_decoy_named_smtpplus(
    milter_conf: Path, short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The pid file is the service user's to write; a process of root's named "smtpplus..." must
    # not get root's SIGHUP because its pid was put there.
    with stand_in(short_dir, "decoy", "-") as decoy:
        reload_with_pid(milter_conf, short_dir, decoy.pid)
        err = capsys.readouterr().err
        assert f"pid {decoy.pid} from {short_dir / 'milter.pid'} is not confirmed as the running milter" in err
        assert "not signalled" in err and "systemctl reload smtpplus-milter" in err and "sent SIGHUP" not in err
        assert not (short_dir / "decoy").exists() and decoy.poll() is None


def test_reload_does_not_signal_an_exec_a_decoy(
    milter_conf: Path, short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with process(["bash", "-c", "exec -a smtpplus-decoy sleep 30"]) as decoy:
        assert b"smtpplus-decoy" in Path(f"/proc/{decoy.pid}/cmdline").read_bytes()
        reload_with_pid(milter_conf, short_dir, decoy.pid)
        assert "not signalled" in capsys.readouterr().err
        assert decoy.poll() is None  # SIGHUP would have ended sleep


def test_reload_does_not_signal_a_client_of_the_milter_socket(
    milter_conf: Path, short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Postfix's smtpd, say: connected to the milter's socket, but not the process that listens.
    socket_path = short_dir / "milter.sock"
    with stand_in(short_dir, "milter", f"unix:{socket_path}"):
        with stand_in(short_dir, "client", f"connect:{socket_path}") as client:
            reload_with_pid(milter_conf, short_dir, client.pid)
            assert "not signalled" in capsys.readouterr().err
            assert not (short_dir / "client").exists() and not (short_dir / "milter").exists()


def test_reload_does_not_signal_a_listener_on_another_socket(
    milter_conf: Path, short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with stand_in(short_dir, "other", f"unix:{short_dir}/other.sock") as other:
        reload_with_pid(milter_conf, short_dir, other.pid)
        assert "not signalled" in capsys.readouterr().err
        assert not (short_dir / "other").exists()
