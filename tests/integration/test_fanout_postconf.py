"""Postfix's own tools read what postfix-config writes for per-recipient copies (issue 15).

Not a delivery (the lead's e2e does that with the fanout service): postconf parses main.cf and
master.cf without a warning, and postmap finds the FILTER each header gets in each table.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from smtpplus_milter.admin.postfix import generate, write_tables
from tests.support.builders import config_with

pytestmark = pytest.mark.skipif(
    shutil.which("postconf") is None or not Path("/etc/postfix/master.cf").exists(), reason="needs Postfix"
)


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def test_postfix_reads_the_fanout_lines(tmp_path: Path) -> None:
    etc = tmp_path / "postfix"
    etc.mkdir()
    inputs = config_with(tmp_path, settings={"lists": {"shop": {"bcc_in_to": True}}}).postfix
    snippets = generate(inputs, postfix_dir=str(etc), chroot=False)
    (etc / "main.cf").write_text("".join(f"{name} = {value}\n" for name, value in snippets.main_cf.items()))
    (etc / "master.cf").write_text(Path("/etc/postfix/master.cf").read_text() + snippets.master_cf)
    write_tables(snippets, str(etc))

    main = _run("postconf", "-c", str(etc), "-n")
    assert main.returncode == 0 and "warning" not in main.stderr, main.stderr
    assert "smtpplus-fanout_destination_recipient_limit = 1" in main.stdout.splitlines()
    params = _run("postconf", "-c", str(etc), "-P")
    assert params.returncode == 0 and "warning" not in params.stderr, params.stderr
    lines = params.stdout.splitlines()
    assert "127.0.0.1:10027/inet/smtpd_milters = $smtpplus_fanout_milters" in lines
    assert "127.0.0.1:10027/inet/cleanup_service_name = smtpplus-fanout-cleanup" in lines
    checks = f"regexp:{etc / 'smtpplus_fanout_header_checks'}"
    assert f"smtpplus-fanout-cleanup/unix/header_checks = {checks}" in lines

    def lookup(header: str, table: str) -> str:
        done = _run("postmap", "-c", str(etc), "-q", header, f"regexp:{etc / table}")
        return done.stdout.strip()

    first_pass = "smtpplus_milter_header_checks"
    assert lookup("X-SMTPPlus-Fanout: 4jdfvM0wYyzJVF1 bcc", first_pass) == (
        "FILTER smtpplus-fanout:unix:/run/smtpplus-fanout/fanout.sock"
    )
    assert lookup("X-SMTPPlus-Queue: high", first_pass) == "FILTER smtpplus-high:"
    # The copies: routed by priority, never back to the filter.
    assert lookup("X-SMTPPlus-Queue: low", "smtpplus_fanout_header_checks") == "FILTER smtpplus-low:"
    assert lookup("X-SMTPPlus-Fanout: 4jdfvM0wYyzJVF1 bcc", "smtpplus_fanout_header_checks") == ""
    assert lookup("X-SMTPPlus-Fanout: 4jdfvM0wYyzJVF1 bcc", "smtpplus_smtp_header_checks") == "IGNORE"
