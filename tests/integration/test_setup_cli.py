"""smtpplus-milter setup against throw-away config directories (postconf -c DIR; nothing runs)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from smtpplus_milter.admin.setup import Options, Setup, SetupError, parse_master_cf
from smtpplus_milter.cli import main

pytestmark = [
    pytest.mark.skipif(shutil.which("postconf") is None, reason="needs Postfix's postconf"),
    pytest.mark.skipif(os.geteuid() != 0, reason="setup gives files to root and group dovecot/postfix"),
]


def _args(root: Path, *extra: str) -> list[str]:
    (root / "dovecot").mkdir(exist_ok=True)
    return [
        "setup",
        "--postfix-dir",
        str(root / "postfix"),
        "--dovecot-dir",
        str(root / "dovecot"),
        "--etc",
        str(root / "etc"),
        "--socket-dir",
        str(root / "socket"),
        "--no-user",
        "--no-systemd",
        *extra,
    ]


def _postconf(root: Path, *args: str) -> str:
    return subprocess.run(
        ["postconf", "-c", str(root / "postfix"), *args], capture_output=True, text=True, check=True
    ).stdout


def test_fresh_host_without_main_cf_then_second_run_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Debian's "No configuration" leaves no main.cf: postconf -e alone dies on it.
    assert main(_args(tmp_path)) == 0
    first = capsys.readouterr().out
    assert "main.cf created from /usr/share/postfix/main.cf" in first
    assert "changed: main.cf: smtpd_milters = unix:smtpplus/milter.sock (was: (not set))" in first
    assert _postconf(tmp_path, "-h", "message_size_limit").strip() == str(20 * 1024 * 1024 + 1024 * 1024)
    assert "smtpplus-high unix" in _postconf(tmp_path, "-M", "smtpplus-high/unix")
    # The example config sends verification mail to 127.0.0.1:10025: that listener runs no milter.
    assert _postconf(tmp_path, "-P", "127.0.0.1:10025/inet/smtpd_milters").strip() == (
        "127.0.0.1:10025/inet/smtpd_milters ="
    )
    assert "checked: 127.0.0.1:10025/inet runs no milter" in first
    assert (tmp_path / "postfix" / "smtpplus_milter_header_checks").exists()
    dovecot = (tmp_path / "dovecot" / "conf.d" / "10-smtpplus-auth.conf").read_text()
    assert f"{tmp_path}/dovecot/smtpplus.passwd" in dovecot and "ssl = no" in dovecot

    assert main(_args(tmp_path)) == 0
    second = capsys.readouterr().out.splitlines()
    assert second[-1] == "nothing to change"
    assert all(line.startswith(("unchanged: ", "checked: ")) for line in second[:-1]), second


def test_refuses_to_clobber_other_milters_and_force_keeps_them_after_ours(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    postfix = tmp_path / "postfix"
    postfix.mkdir()
    (postfix / "main.cf").write_text("compatibility_level = 3.6\nsmtpd_milters = inet:localhost:8891\n")
    shutil.copyfile("/usr/share/postfix/master.cf.dist", postfix / "master.cf")
    before = (postfix / "main.cf").read_bytes(), (postfix / "master.cf").read_bytes()
    assert main(_args(tmp_path)) == 1
    captured = capsys.readouterr()
    assert "smtpd_milters is already set to 'inet:localhost:8891'" in captured.err and "--force" in captured.err
    assert "Traceback" not in captured.err
    assert ((postfix / "main.cf").read_bytes(), (postfix / "master.cf").read_bytes()) == before
    assert not (tmp_path / "etc").exists(), "nothing may change when setup refuses"

    assert main(_args(tmp_path, "--force")) == 0
    # A DKIM signer must sign what smtpplus has changed: it stays, after us.
    assert _postconf(tmp_path, "-h", "smtpd_milters").strip() == "unix:smtpplus/milter.sock, inet:localhost:8891"


def test_dry_run_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(tmp_path, "--dry-run")) == 0
    out = capsys.readouterr().out
    assert "would change: main.cf: smtpd_milters = unix:smtpplus/milter.sock" in out
    assert not (tmp_path / "postfix").exists() and not (tmp_path / "etc").exists()


def test_a_listener_that_runs_the_milter_is_caught(tmp_path: Path) -> None:
    assert main(_args(tmp_path)) == 0
    options = Options(
        postfix_dir=tmp_path / "postfix",
        dovecot_dir=tmp_path / "dovecot",
        etc=tmp_path / "etc",
        socket_dir=tmp_path / "socket",
        source=Path(__file__).resolve().parents[2],
        user=False,
        systemd=False,
    )
    setup = Setup(options, out=lambda line: None)
    # The old guide's mistake: the service is named 127.0.0.1:10025, so every
    # 'smtpplus-alerts/inet/...' only warned (exit 0) and the port kept the milter.
    with pytest.raises(SetupError, match="unmatched"):
        setup.postconf("-P", "smtpplus-alerts/inet/smtpd_milters=")
    _postconf(tmp_path, "-P", "127.0.0.1:10025/inet/smtpd_milters=unix:smtpplus/milter.sock")
    with pytest.raises(SetupError, match="must run no milter"):
        setup._check_listeners(["127.0.0.1:10025/inet"])


def test_parse_master_cf_reads_postfix_config_output() -> None:
    [service] = parse_master_cf("127.0.0.1:10025 inet  n  -  y  -  -  smtpd\n  -o smtpd_milters=\n  -o a=b c\n")
    assert service.key == "127.0.0.1:10025/inet"
    assert service.params == {"smtpd_milters": "", "a": "b c"}
    with pytest.raises(ValueError):
        parse_master_cf("  -o orphan=1\n")


def test_install_sh_is_valid_bash() -> None:
    script = Path(__file__).resolve().parents[2] / "deploy" / "install.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, check=False).returncode == 0
    assert os.access(script, os.X_OK)


def test_warnings_go_to_stderr_and_a_path_problem_is_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_args(tmp_path)) == 0
    assert "WARNING: FILTER overrides content_filter" in capsys.readouterr().err
    (tmp_path / "plain-file").write_text("")
    args = _args(tmp_path)
    args[args.index("--etc") + 1] = str(tmp_path / "plain-file" / "etc")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "smtpplus-milter setup: cannot change" in err and "plain-file" in err and "Traceback" not in err


def test_install_sh_passes_its_options_to_setup(tmp_path: Path) -> None:
    # A dry run with an existing venv as --prefix: no user, no pip, no file changed; the options
    # it does not know itself reach `smtpplus-milter setup`.
    repo = Path(__file__).resolve().parents[2]
    venv = Path(os.environ.get("VIRTUAL_ENV") or repo / ".venv")
    if not (venv / "bin" / "smtpplus-milter").exists():
        pytest.skip("needs the repository's .venv")
    args = _args(tmp_path, "--dry-run")[1:]
    done = subprocess.run(
        [str(repo / "deploy" / "install.sh"), "--prefix", str(venv), "--bin-dir", str(tmp_path / "bin"), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "would change: main.cf: smtpd_milters = unix:smtpplus/milter.sock" in done.stdout
    assert not (tmp_path / "postfix").exists() and not (tmp_path / "bin").exists()


def test_milters_with_per_milter_settings_are_never_rewritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    postfix = tmp_path / "postfix"
    postfix.mkdir()
    shutil.copyfile("/usr/share/postfix/master.cf.dist", postfix / "master.cf")
    braced = "{ inet:localhost:8891, default_action=accept }"
    (postfix / "main.cf").write_text(f"compatibility_level = 3.6\nsmtpd_milters = {braced}\n")
    # Splitting at commas would have written "unix:smtpplus/milter.sock, {, inet:localhost:8891, ...".
    assert main(_args(tmp_path, "--force")) == 1
    assert "per-milter settings" in capsys.readouterr().err
    assert _postconf(tmp_path, "-h", "smtpd_milters").strip() == braced
    ours_first = f"unix:smtpplus/milter.sock, {braced}"
    _postconf(tmp_path, "-e", f"smtpd_milters={ours_first}")
    assert main(_args(tmp_path)) == 0
    assert _postconf(tmp_path, "-h", "smtpd_milters").strip() == ours_first


def test_a_smaller_mailbox_size_limit_is_raised(tmp_path: Path) -> None:
    postfix = tmp_path / "postfix"
    postfix.mkdir()
    shutil.copyfile("/usr/share/postfix/master.cf.dist", postfix / "master.cf")
    (postfix / "main.cf").write_text("compatibility_level = 3.6\nmailbox_size_limit = 15000000\n")
    assert main(_args(tmp_path)) == 0
    limits = _postconf(tmp_path, "-h", "message_size_limit", "mailbox_size_limit").split()
    # Postfix does not start when mailbox_size_limit < message_size_limit.
    assert limits[0] == limits[1] == str(21 * 1024 * 1024)
