"""Hostile and careless inputs to the ``users`` / ``verify`` commands and the files they write.

Each test here stands for one way an operator's command, a stale file or a local user could make
the relay do more than it was told: widen an SMTP+ user to "any sender" as a side effect, leave
a copy of the passwd-file behind, follow a planted symbolic link, or SIGHUP a process that only
looks like the milter.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smtpplus_milter import files
from smtpplus_milter.files import FileProblem, Ownership, locked, replace_atomically

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
