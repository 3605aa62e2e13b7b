"""``smtpplus-milter users ...`` on real files: edits, validation, passwd-file, atomicity, locking."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from lab.harness import free_port
from smtpplus_milter import cli
from smtpplus_milter.config import load_config
from smtpplus_milter.infra import process as infra_process
from smtpplus_milter.infra.files import locked
from smtpplus_milter.infra.passwd import DISABLED, PasswdFile, hash_password, verify_password

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PASSWORD = re.compile(r"^  password: (\S+)$", re.MULTILINE)


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    shutil.copy(DEPLOY / "users.yaml", tmp_path / "users.yaml")
    text = (DEPLOY / "smtpplus.yaml").read_text(encoding="utf-8")
    text = text.replace("/etc/dovecot/smtpplus.passwd", str(tmp_path / "smtpplus.passwd"))
    # These tests are about the users file itself; verification (on in the example) has its own.
    text = text.replace("  required: true", "  required: false")
    (tmp_path / "smtpplus.yaml").write_text(text, encoding="utf-8")
    return tmp_path / "smtpplus.yaml"


def users(conf: Path, *args: str) -> int:
    action, *rest = args
    return cli.main(["users", action, "-c", str(conf), *rest])


def add(conf: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert users(conf, "add", *args) == 0
    out = capsys.readouterr().out
    match = PASSWORD.search(out)
    assert match, out
    return match.group(1)


def passwd(conf: Path) -> PasswdFile:
    return PasswdFile.parse((conf.parent / "smtpplus.passwd").read_text(encoding="utf-8"))


def test_add_writes_entry_and_hash_and_prints_password_once(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    password = add(
        conf,
        capsys,
        "wp-site",
        "--priority",
        "2",
        "--list",
        "shop",
        "--note",
        "WordPress: contact forms",
        "--authorized-domain",
        "example.com",
        "--authorized-sender",
        "news@other.example;info@other.example",
    )
    assert len(password) >= 20 and re.fullmatch(r"[A-Za-z0-9_-]+", password)
    user = load_config(conf).directory.lookup("wp-site")
    assert user is not None and user.active and user.priority == 2 and user.list == "shop"
    assert user.note == "WordPress: contact forms"
    assert user.authorized_domains == {"example.com"}
    assert user.authorized_senders == {"news@other.example", "info@other.example"}
    entry = passwd(conf).get("wp-site")
    assert entry is not None and not entry.disabled
    assert entry.password.startswith("{SHA512-CRYPT}$6$") and verify_password(password, entry.password)
    # Only the hash is stored, nowhere the password.
    for name in ("users.yaml", "smtpplus.passwd"):
        assert password not in (conf.parent / name).read_text(encoding="utf-8")
    # A new passwd-file is readable by Dovecot's auth process and nobody else.
    assert (conf.parent / "smtpplus.passwd").stat().st_mode & 0o777 == 0o640


def test_add_keeps_comments_and_formatting_of_the_rest(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (conf.parent / "users.yaml").read_text(encoding="utf-8")
    add(conf, capsys, "wp-site", "--authorized-domain", "example.com")
    after = (conf.parent / "users.yaml").read_text(encoding="utf-8")
    assert after.startswith(before.rstrip("\n") + "\n\nwp-site:\n  active: true\n")
    assert 'authorized_domains: "example.com"' in after


def test_two_passwords_differ(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = add(conf, capsys, "one")
    second = add(conf, capsys, "two")
    assert first != second
    assert passwd(conf).get("one").password != passwd(conf).get("two").password  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        pytest.param(["--authorized-domain", "a.example,b.example"], "separated with ';', not ','", id="comma"),
        pytest.param(["--authorized-sender", "not-an-address"], "local@domain", id="bad-address"),
        pytest.param(["--authorized-domain", "info@a.example"], "put it in authorized_senders", id="address-as-domain"),
        pytest.param(["--priority", "7"], "priorities go from 1", id="priority-7"),
        pytest.param(["--list", "nope"], "unknown list 'nope'", id="unknown-list"),
    ],
)
@pytest.mark.parametrize("action", ["add", "edit"])
def test_invalid_change_refused_and_nothing_written(
    conf: Path, capsys: pytest.CaptureFixture[str], action: str, args: list[str], hint: str
) -> None:
    name = "new-user" if action == "add" else "shop-frontend"
    files = [conf.parent / "users.yaml", conf.parent / "smtpplus.passwd"]
    (conf.parent / "smtpplus.passwd").write_text("shop-frontend:{SHA512-CRYPT}$6$x$y\n", encoding="utf-8")
    before = [path.read_bytes() for path in files]
    assert users(conf, action, name, *args) == 1
    err = capsys.readouterr().err
    assert hint in err and "nothing was changed" in err and "Traceback" not in err
    assert [path.read_bytes() for path in files] == before
    assert sorted(p.name for p in conf.parent.iterdir() if p.name.endswith(".tmp")) == []


def test_usage_errors_exit_2(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        users(conf, "edit", "shop-frontend", "--priority", "high")
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["users", "frobnicate"])
    assert exc.value.code == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["add", "shop-frontend"], "already exists", id="add-existing"),
        pytest.param(["add", "SHOP-Frontend"], "already exists", id="add-existing-other-case"),
        pytest.param(["add", "bad:name"], "cannot be a login", id="colon-in-login"),
        pytest.param(["add", "#comment"], "cannot be a login", id="hash-login"),
        pytest.param(["edit", "nobody", "--note", "x"], "no SMTP+ user 'nobody'", id="edit-unknown"),
        pytest.param(["edit", "shop-frontend"], "nothing to change", id="edit-nothing"),
        pytest.param(["edit", "shop-frontend", "--note", "x", "--clear-note"], "not both", id="note-and-clear"),
        pytest.param(
            ["edit", "shop-frontend", "--remove-authorized-domain", "other.example"],
            "is not listed",
            id="remove-absent",
        ),
        pytest.param(["delete", "nobody"], "no SMTP+ user", id="delete-unknown"),
        pytest.param(["disable", "nobody"], "no SMTP+ user", id="disable-unknown"),
        pytest.param(["reset-password", "nobody"], "no SMTP+ user", id="reset-unknown"),
        pytest.param(["show", "nobody"], "no SMTP+ user", id="show-unknown"),
        pytest.param(["edit", "shop-frontend", "--note", "caf\udce9"], "not valid UTF-8", id="note-not-utf8"),
    ],
)
def test_refusals_exit_1_with_a_message(
    conf: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    before = (conf.parent / "users.yaml").read_bytes()
    assert users(conf, *args) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert (conf.parent / "users.yaml").read_bytes() == before


def test_edit_adds_and_removes_in_the_style_of_the_file(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        users(
            conf,
            "edit",
            "shop-frontend",
            "--remove-authorized-domain",
            "Marketing.YourCompany.com.",
            "--authorized-sender",
            "sales@yourcompany.com",
            "--clear-note",
            "--priority",
            "1",
        )
        == 0
    )
    assert users(conf, "edit", "newsletter", "--authorized-domain", "news2.yourcompany.com") == 0
    text = (conf.parent / "users.yaml").read_text(encoding="utf-8")
    assert (
        'authorized_domains: "yourcompany.com"\n  authorized_senders: "info@partner.example;sales@yourcompany.com"'
        in text
    )
    assert "authorized_domains: [news.yourcompany.com, news2.yourcompany.com]" in text  # a flow list stays one
    assert "Magento" not in text and "# SMTP+ users: the key is the SASL login" in text
    user = load_config(conf).directory.lookup("shop-frontend")
    assert user is not None and user.priority == 1 and user.note == ""


def test_removing_the_last_restriction_needs_allow_any_sender(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (conf.parent / "users.yaml").read_bytes()
    assert users(conf, "edit", "ceo-outlook", "--remove-authorized-sender", "CEO@yourcompany.com") == 1
    err = capsys.readouterr().err
    assert "ceo-outlook would have no authorized domains or senders left and could then send as ANY sender" in err
    assert "--allow-any-sender" in err and (conf.parent / "users.yaml").read_bytes() == before
    args = ["edit", "ceo-outlook", "--remove-authorized-sender", "CEO@yourcompany.com", "--allow-any-sender"]
    assert users(conf, *args) == 0
    assert "ceo-outlook may now send as ANY sender" in capsys.readouterr().err
    user = load_config(conf).directory.lookup("ceo-outlook")
    assert user is not None and user.unrestricted


def test_add_without_entries_says_the_user_may_send_as_anybody(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert users(conf, "add", "open-app") == 0
    assert "note: open-app has no authorized domains or senders: it may send as ANY sender" in capsys.readouterr().err
    assert users(conf, "add", "open-app2", "--allow-any-sender") == 0
    assert "may send as ANY sender (--allow-any-sender given)" in capsys.readouterr().err
    assert users(conf, "add", "closed-app", "--authorized-domain", "example.com") == 0
    assert "ANY sender" not in capsys.readouterr().err


def test_disable_enable_delete_keep_both_files_in_step(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    password = add(conf, capsys, "wp-site", "--authorized-domain", "example.com")
    line = (conf.parent / "smtpplus.passwd").read_text(encoding="utf-8")

    assert users(conf, "disable", "WP-Site") == 0
    assert (conf.parent / "smtpplus.passwd").read_text(encoding="utf-8") == DISABLED + line
    assert load_config(conf).directory.lookup("wp-site").active is False  # type: ignore[union-attr]

    assert users(conf, "enable", "wp-site") == 0
    assert (conf.parent / "smtpplus.passwd").read_text(encoding="utf-8") == line  # the same password again
    assert load_config(conf).directory.lookup("wp-site").active is True  # type: ignore[union-attr]
    assert verify_password(password, passwd(conf).get("wp-site").password)  # type: ignore[union-attr]

    assert users(conf, "edit", "wp-site", "--inactive") == 0  # edit --inactive is disable
    assert passwd(conf).get("wp-site").disabled  # type: ignore[union-attr]

    assert users(conf, "delete", "wp-site") == 0
    assert passwd(conf).get("wp-site") is None
    assert load_config(conf).directory.lookup("wp-site") is None


def test_reset_password_replaces_only_that_hash(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (conf.parent / "smtpplus.passwd").write_text(
        f"# kept comment\nother:{hash_password('x')}::::::extra=1\n", encoding="utf-8"
    )
    old = add(conf, capsys, "wp-site")
    assert users(conf, "reset-password", "wp-site") == 0
    out = capsys.readouterr().out
    new = PASSWORD.search(out).group(1)  # type: ignore[union-attr]
    assert new != old
    stored = passwd(conf).get("wp-site").password  # type: ignore[union-attr]
    assert verify_password(new, stored) and not verify_password(old, stored)
    lines = (conf.parent / "smtpplus.passwd").read_text(encoding="utf-8").splitlines()
    assert lines[:2] == ["# kept comment", lines[1]] and lines[1].startswith("other:") and lines[1].endswith(":extra=1")


def test_reset_password_of_disabled_user_stays_disabled(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    add(conf, capsys, "wp-site", "--inactive")
    assert passwd(conf).get("wp-site").disabled  # type: ignore[union-attr]
    assert users(conf, "reset-password", "wp-site") == 0
    assert "is disabled" in capsys.readouterr().out
    assert passwd(conf).get("wp-site").disabled  # type: ignore[union-attr]


def test_passwd_mtime_always_moves_forward(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Dovecot rereads the file only when its mtime (seconds) or size changes; a reset keeps the size.
    add(conf, capsys, "wp-site")
    path = conf.parent / "smtpplus.passwd"
    stamps = [int(path.stat().st_mtime)]
    for _ in range(3):
        assert users(conf, "reset-password", "wp-site") == 0
        stamps.append(int(path.stat().st_mtime))
    assert stamps == sorted(set(stamps))


def test_mode_and_owner_are_kept(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    users_path = conf.parent / "users.yaml"
    users_path.chmod(0o640)
    if os.geteuid() == 0:
        os.chown(users_path, 0, 1)  # a group other than ours
    assert users(conf, "edit", "shop-frontend", "--note", "changed") == 0
    status = users_path.stat()
    assert status.st_mode & 0o7777 == 0o640
    if os.geteuid() == 0:
        assert (status.st_uid, status.st_gid) == (0, 1)


def test_a_writer_waits_for_the_lock(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    users_path = conf.parent / "users.yaml"
    released = threading.Event()

    def hold() -> None:
        with locked(users_path):
            released.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.1)
    started = time.monotonic()
    threading.Timer(0.5, released.set).start()
    assert users(conf, "edit", "shop-frontend", "--note", "after the lock") == 0
    assert time.monotonic() - started >= 0.4
    holder.join()


def test_concurrent_writers_lose_nothing(conf: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "smtpplus_milter", "users", "add", "-c", str(conf), f"user{i}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in range(6)
    ]
    for process in processes:
        assert process.wait(60) == 0, process.stderr.read() if process.stderr else ""
    directory = load_config(conf).directory
    assert all(directory.lookup(f"user{i}") for i in range(6))
    assert all(passwd(conf).get(f"user{i}") for i in range(6))


def test_list_and_show(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    add(conf, capsys, "wp-site", "--list", "shop", "--note", "WP")
    assert users(conf, "list") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:5] == ["LOGIN", "ACTIVE", "PRIO", "LIST", "PASSWORD"]
    assert any(row.split()[:5] == ["wp-site", "yes", "3", "shop", "set"] for row in table)
    assert any(row.split()[:5] == ["old-crm", "no", "3", "-", "none"] for row in table)
    assert users(conf, "list", "--json") == 0
    records = {record["login"]: record for record in json.loads(capsys.readouterr().out)}
    assert records["wp-site"]["password"] == "set" and records["wp-site"]["footer"] == ["text", "html"]
    assert records["shop-frontend"]["authorized_domains"] == ["marketing.yourcompany.com", "yourcompany.com"]
    assert users(conf, "show", "wp-site", "--json") == 0
    assert json.loads(capsys.readouterr().out)["note"] == "WP"
    assert users(conf, "show", "Shop-Frontend") == 0
    assert "authorized_domains: marketing.yourcompany.com;yourcompany.com" in capsys.readouterr().out


def test_show_says_plainly_when_a_user_may_send_as_any_sender(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    add(conf, capsys, "open-app")
    assert users(conf, "show", "open-app") == 0
    assert re.search(r"^senders:\s+ANY \(no authorized domains or senders\)$", capsys.readouterr().out, re.MULTILINE)
    assert users(conf, "show", "open-app", "--json") == 0
    assert json.loads(capsys.readouterr().out)["any_sender"] is True
    assert users(conf, "show", "ceo-outlook") == 0
    out = capsys.readouterr().out
    assert re.search(r"^senders:\s+only the authorized domains and senders above$", out, re.MULTILINE)
    assert "ANY" not in out


# The milter's stand-in listens where the config says the milter does; the CLI signals only the
# process that holds that socket (or systemd's MainPID of the unit).
LISTENER = """
import signal, socket, sys, time
spec = sys.argv[1]
signal.signal(signal.SIGHUP, lambda *a: sys.exit(7))
kind, _, rest = spec.partition(":")
if kind == "unix":
    server = socket.socket(socket.AF_UNIX); server.bind(rest)
else:
    port, _, host = rest.partition("@"); server = socket.socket(); server.bind((host, int(port)))
server.listen()
print("ready", flush=True)
time.sleep(30)
"""


@pytest.mark.parametrize("kind", ["unix", "inet"])
def test_reload_signals_the_milter_that_holds_the_socket(
    conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    short = Path(tempfile.mkdtemp(prefix="sp-", dir="/tmp"))  # a unix socket path must fit in 108 bytes
    spec = f"unix:{short}/milter.sock" if kind == "unix" else f"inet:{free_port()}@127.0.0.1"
    text = conf.read_text(encoding="utf-8").replace("unix:/var/spool/postfix/smtpplus/milter.sock", spec)
    conf.write_text(text, encoding="utf-8")
    assert str(load_config(conf).settings.milter.socket) == spec
    child = subprocess.Popen([sys.executable, "-c", LISTENER, spec, "smtpplus"], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        pid_file = tmp_path / "milter.pid"
        pid_file.write_text(f"{child.pid}\n", encoding="ascii")
        # Something runs: without --reload, the note asks for the reload.
        assert users(conf, "edit", "shop-frontend", "--note", "w", "--pid-file", str(pid_file)) == 0
        assert "keeps the old users file until it reloads" in capsys.readouterr().err
        assert users(conf, "edit", "shop-frontend", "--note", "x", "--reload", "--pid-file", str(pid_file)) == 0
        err = capsys.readouterr().err
        assert f"sent SIGHUP to the milter (pid {child.pid}): it holds the milter socket {spec}" in err
        assert child.wait(10) == 7
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
        shutil.rmtree(short, ignore_errors=True)


def no_milter_here(conf: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config whose milter socket nobody listens on, whatever else runs on this machine."""
    spec = f"unix:{conf.parent}/no-milter.sock"
    text = conf.read_text(encoding="utf-8").replace("unix:/var/spool/postfix/smtpplus/milter.sock", spec)
    conf.write_text(text, encoding="utf-8")
    monkeypatch.setattr(infra_process, "systemd_main_pid", lambda unit: None)
    return conf.parent / "milter.pid"


@pytest.mark.parametrize(
    "command",
    [
        ("delete", "old-crm"),
        ("edit", "shop-frontend", "--note", "x"),
        ("disable", "newsletter"),
        ("add", "new-app", "--authorized-domain", "example.com"),
    ],
    ids=lambda command: command[0],
)
def test_without_a_running_milter_no_reload_is_asked_for(
    conf: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: tuple[str, ...]
) -> None:
    pid_file = no_milter_here(conf, monkeypatch)
    assert users(conf, *command, "--pid-file", str(pid_file)) == 0
    err = capsys.readouterr().err
    assert "no running milter found; it reads the new users file when it starts" in err
    assert "systemctl reload" not in err and "keeps the old users file" not in err


def test_reload_without_pid_file_says_what_to_do(
    conf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = no_milter_here(conf, monkeypatch)
    assert users(conf, "edit", "shop-frontend", "--note", "y", "--reload", "--pid-file", str(missing)) == 0
    err = capsys.readouterr().err
    assert "no running milter found" in err and "systemctl reload" not in err
    # A milter that runs (systemd knows it) but left no pid file: the operator reloads it.
    monkeypatch.setattr(infra_process, "systemd_main_pid", lambda unit: 4242)
    assert users(conf, "edit", "shop-frontend", "--note", "x", "--pid-file", str(missing)) == 0
    assert "keeps the old users file until it reloads: systemctl reload smtpplus-milter" in capsys.readouterr().err
    assert users(conf, "edit", "shop-frontend", "--note", "z", "--reload", "--pid-file", str(missing)) == 0
    err = capsys.readouterr().err
    assert f"no milter pid in {missing}" in err and "systemctl reload smtpplus-milter" in err
    # A pid file naming some other process is never signalled.
    stale = tmp_path / "stale.pid"
    stale.write_text(f"{os.getpid()}\n", encoding="ascii")
    assert users(conf, "edit", "shop-frontend", "--note", "z", "--reload", "--pid-file", str(stale)) == 0
    assert "is not a running smtpplus-milter" in capsys.readouterr().err


def test_invalid_existing_config_refuses_every_write(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    users_path = conf.parent / "users.yaml"
    users_path.write_text(users_path.read_text(encoding="utf-8") + "\nbroken:\n  priority: 9\n", encoding="utf-8")
    before = users_path.read_bytes()
    assert users(conf, "add", "wp-site") == 1
    err = capsys.readouterr().err
    assert "fix it first" in err and "broken.priority" in err
    assert users_path.read_bytes() == before
    assert not (conf.parent / "smtpplus.passwd").exists()


@pytest.mark.skipif(shutil.which("doveadm") is None, reason="needs Dovecot's doveadm")
def test_dovecot_verifies_our_hash() -> None:
    password = "Nx2cG4gx3LTZgOBr11y1-NUJN5LauzLY"
    hashed = hash_password(password)
    good = subprocess.run(
        ["doveadm", "-c", "/dev/null", "pw", "-t", hashed, "-p", password], capture_output=True, text=True, check=False
    )
    assert good.returncode == 0 and "(verified)" in good.stdout
    bad = subprocess.run(
        ["doveadm", "-c", "/dev/null", "pw", "-t", hashed, "-p", password + "x"], capture_output=True, check=False
    )
    assert bad.returncode != 0
