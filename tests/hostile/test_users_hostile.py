"""Hostile and careless inputs to the ``users`` / ``verify`` commands and the files they write.

Each test here stands for one way an operator's command, a stale file or a local user could make
the relay do more than it was told: widen an SMTP+ user to "any sender" as a side effect, leave
a copy of the passwd-file behind, follow a planted symbolic link, or SIGHUP a process that only
looks like the milter.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from smtpplus_milter import cli, files
from smtpplus_milter.config import load_config
from smtpplus_milter.files import FileProblem, Ownership, locked, replace_atomically
from smtpplus_milter.policy.explain import explain

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
WIDENS = "would have no authorized domains or senders left and could then send as ANY sender"

# --- files.py ---------------------------------------------------------------------------------------


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
    config = load_config(conf)
    queues = config.settings.priority.queues
    return explain(config.directory, queues, login, f"<{sender}>", [("From", sender)]).accepted


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
    pytest.param('  pending_senders: "pay@bank.com"\n', ["--remove-authorized-sender", "pay@bank.com"], id="pending-sender"),
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
