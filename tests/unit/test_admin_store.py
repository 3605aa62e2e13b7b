"""The users store: the order of its two writes (the passwd-file is the door) and what a failed write leaves.

A login is let in only after the users file that restricts it is written, and shut out before its
restrictions go; a failure between the two writes must leave neither a login without its
restrictions nor a removed user who can still log in.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from smtpplus_milter.admin import store, verification
from smtpplus_milter.admin import users as admin
from smtpplus_milter.admin.store import Door, PartialWrite, door
from smtpplus_milter.config import Config, load_config
from smtpplus_milter.infra.files import FileProblem
from smtpplus_milter.infra.passwd import DISABLED, PasswdFile
from smtpplus_milter.infra.usersfile import Edit

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
HASH = "{SHA512-CRYPT}$6$salt$hash"


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    shutil.copy(DEPLOY / "users.yaml", tmp_path / "users.yaml")
    settings = yaml.safe_load((DEPLOY / "smtpplus.yaml").read_text(encoding="utf-8"))
    settings["sasl"]["passwd_file"] = str(tmp_path / "smtpplus.passwd")
    (tmp_path / "smtpplus.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")
    (tmp_path / "smtpplus.passwd").write_text(
        f"shop-frontend:{HASH}\nnewsletter:{HASH}\n{DISABLED}old-crm:{HASH}\n", encoding="utf-8"
    )
    return tmp_path / "smtpplus.yaml"


def writes_recorded(monkeypatch: pytest.MonkeyPatch, failing: dict[str, int] | None = None) -> list[str]:
    """Record the file names the store replaces, in order; *failing*: name -> the write of it that fails first."""
    real = store.replace_atomically
    names: list[str] = []

    def recording(path: Path, data: bytes, **options: object) -> None:
        names.append(path.name)
        if names.count(path.name) >= (failing or {}).get(path.name, 0) > 0:
            raise FileProblem(f"cannot replace {path}: No space left on device")
        real(path, data, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "replace_atomically", recording)
    return names


def open_logins(config: Config) -> dict[str, str]:
    """The logins Dovecot would let in: login -> stored hash."""
    text = (config.path.parent / "smtpplus.passwd").read_text(encoding="utf-8")
    return {entry.login: entry.password for entry in PasswdFile.parse(text).entries() if not entry.disabled}


USERS, PASSWD = "users.yaml", "smtpplus.passwd"


@pytest.mark.parametrize(
    ("change", "order"),
    [
        pytest.param(lambda c: admin.add(c, "app", Edit(), verified=False), [USERS, PASSWD], id="add"),
        pytest.param(lambda c: admin.set_active(c, "old-crm", True), [USERS, PASSWD], id="enable"),
        pytest.param(lambda c: admin.set_active(c, "newsletter", False), [PASSWD, USERS], id="disable"),
        pytest.param(
            lambda c: admin.edit(c, "newsletter", Edit(active=False), verified=False, allow_any_sender=False),
            [PASSWD, USERS],
            id="edit-inactive",
        ),
        pytest.param(
            lambda c: admin.edit(c, "old-crm", Edit(active=True), verified=False, allow_any_sender=False),
            [USERS, PASSWD],
            id="edit-active",
        ),
        pytest.param(
            lambda c: admin.edit(c, "newsletter", Edit(note="n"), verified=False, allow_any_sender=False),
            [USERS],
            id="edit-note",
        ),
        pytest.param(lambda c: admin.delete(c, "newsletter"), [PASSWD, USERS], id="delete"),
        pytest.param(lambda c: admin.reset_password(c, "shop-frontend"), [PASSWD], id="reset-password"),
    ],
)
def test_the_passwd_file_is_written_last_when_a_login_opens_and_first_when_it_closes(
    conf: Path, monkeypatch: pytest.MonkeyPatch, change: Callable[[Config], object], order: list[str]
) -> None:
    names = writes_recorded(monkeypatch)
    change(load_config(conf))
    assert names == order


def test_a_failed_passwd_write_when_granting_leaves_the_users_file_as_it_was(
    conf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    users, passwd = (conf.parent / USERS).read_bytes(), (conf.parent / PASSWD).read_bytes()
    names = writes_recorded(monkeypatch, {PASSWD: 1})
    with pytest.raises(FileProblem, match="No space left"):
        admin.add(load_config(conf), "app", Edit(add_domains=["app.example"]), verified=True)
    assert names == [USERS, PASSWD, USERS]  # written, refused, put back
    assert (conf.parent / USERS).read_bytes() == users
    assert (conf.parent / PASSWD).read_bytes() == passwd


def test_a_users_file_that_cannot_be_put_back_is_reported_and_no_login_was_let_in(
    conf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = writes_recorded(monkeypatch, {PASSWD: 1, USERS: 2})  # the first users write works
    with pytest.raises(PartialWrite, match="could not be put back") as raised:
        admin.add(load_config(conf), "app", Edit(), verified=False)
    assert names == [USERS, PASSWD, USERS]
    assert "users reset-password" in str(raised.value)
    assert "app" in load_config(conf).directory.users and "app" not in open_logins(load_config(conf))


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda c: admin.delete(c, "newsletter"), id="delete"),
        pytest.param(lambda c: admin.set_active(c, "newsletter", False), id="disable"),
        pytest.param(
            lambda c: admin.edit(c, "newsletter", Edit(active=False), verified=False, allow_any_sender=False),
            id="edit-inactive",
        ),
    ],
)
def test_a_failed_users_write_when_removing_leaves_the_login_unable_to_log_in(
    conf: Path, monkeypatch: pytest.MonkeyPatch, change: Callable[[Config], object]
) -> None:
    users = (conf.parent / USERS).read_bytes()
    writes_recorded(monkeypatch, {USERS: 1})
    with pytest.raises(PartialWrite, match="the login is refused from now on") as raised:
        change(load_config(conf))
    assert "run the command again" in str(raised.value)
    assert "newsletter" not in open_logins(load_config(conf))
    assert (conf.parent / USERS).read_bytes() == users
    monkeypatch.undo()
    change(load_config(conf))  # and the command can simply be repeated
    assert "newsletter" not in open_logins(load_config(conf))


def test_a_failed_first_write_changes_nothing(conf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = {name: (conf.parent / name).read_bytes() for name in (USERS, PASSWD)}
    names = writes_recorded(monkeypatch, {PASSWD: 1})
    with pytest.raises(FileProblem):
        admin.delete(load_config(conf), "newsletter")
    assert names == [PASSWD]
    assert {name: (conf.parent / name).read_bytes() for name in (USERS, PASSWD)} == before


def test_verification_writes_only_the_users_file(conf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(conf)
    admin.edit(config, "newsletter", Edit(add_domains=["wait.example"]), verified=False, allow_any_sender=False)
    config = load_config(conf)
    user = verification.user_of(config, "newsletter")
    names = writes_recorded(monkeypatch)
    assert verification.cancel(config, user, "domain", "wait.example", allow_any_sender=False) == ()
    assert names == [USERS]


def test_a_password_reset_leaves_the_users_file_byte_for_byte(conf: Path) -> None:
    # Formatting that a round trip through the YAML editor would change: the file is not even rewritten.
    users = conf.parent / USERS
    users.write_text(
        "shop-frontend:   {active: true,   note:   'x'}\nnewsletter:\n    active: true\n", encoding="utf-8"
    )
    before = users.stat()
    credentials = admin.reset_password(load_config(conf), "SHOP-frontend")
    assert credentials.login == "shop-frontend" and credentials.active
    after = users.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert open_logins(load_config(conf))["shop-frontend"] != HASH


def passwd(*lines: str) -> PasswdFile:
    return PasswdFile.parse("".join(f"{line}\n" for line in lines))


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        pytest.param((), (f"a:{HASH}",), Door.OPENS, id="new-login"),
        pytest.param((), (f"{DISABLED}a:{HASH}",), Door.UNCHANGED, id="new-disabled-login"),
        pytest.param((f"{DISABLED}a:{HASH}",), (f"a:{HASH}",), Door.OPENS, id="enabled"),
        pytest.param((f"a:{HASH}",), (f"a:{HASH}x",), Door.OPENS, id="new-password"),
        pytest.param((f"a:{HASH}",), (f"{DISABLED}a:{HASH}",), Door.CLOSES, id="disabled"),
        pytest.param((f"a:{HASH}",), (), Door.CLOSES, id="removed"),
        pytest.param((f"a:{HASH}", "# comment"), (f"a:{HASH}",), Door.UNCHANGED, id="comment-only"),
    ],
)
def test_door(before: tuple[str, ...], after: tuple[str, ...], expected: Door) -> None:
    assert door(passwd(*before), passwd(*after)) is expected


def test_a_change_that_opens_one_login_and_closes_another_has_no_safe_order() -> None:
    with pytest.raises(ValueError, match="no order"):
        door(passwd(f"a:{HASH}"), passwd(f"b:{HASH}"))
