"""postfix-config: the Postfix side of priority routing, generated from the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpplus_milter.cli import main
from smtpplus_milter.postfix_config import generate
from tests.helpers import config_with


def test_routed_queues_and_transports(tmp_path: Path) -> None:
    snippets = generate(config_with(tmp_path).settings, postfix_dir="/etc/postfix")
    assert snippets.main_cf["milter_header_checks"] == "regexp:/etc/postfix/smtpplus_milter_header_checks"
    assert snippets.main_cf["smtp_header_checks"] == "regexp:/etc/postfix/smtpplus_smtp_header_checks"
    assert "smtpplus-high unix" in snippets.master_cf and "smtpplus-low unix" in snippets.master_cf
    checks = snippets.files["smtpplus_milter_header_checks"]
    assert "FILTER smtpplus-high:\n" in checks and "FILTER smtpplus-low:\n" in checks
    assert "normal" not in checks.split("# milter_header_checks")[1].split("\n", 1)[1]
    assert snippets.files["smtpplus_smtp_header_checks"].endswith("/^X-SMTPPlus-Queue:/ IGNORE\n")
    assert any("content_filter" in warning for warning in snippets.warnings)


def test_relayhost_becomes_explicit_next_hop(tmp_path: Path) -> None:
    snippets = generate(
        config_with(tmp_path).settings, relayhost="[smarthost.example]:587", nexthops={"low": "[bulk.example]:25"}
    )
    checks = snippets.files["smtpplus_milter_header_checks"]
    assert "FILTER smtpplus-high:[smarthost.example]:587" in checks
    assert "FILTER smtpplus-low:[bulk.example]:25" in checks


def test_only_queues_in_use_get_a_transport(tmp_path: Path) -> None:
    queues = {1: "high", 2: "normal", 3: "normal", 4: "normal", 5: "normal"}
    snippets = generate(config_with(tmp_path, settings={"priority": {"queues": queues}}).settings)
    assert "smtpplus-low" not in snippets.master_cf and "smtpplus-low" not in str(snippets.main_cf)


def test_cli_prints_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config_with(tmp_path).path
    assert (
        main(
            [
                "postfix-config",
                "-c",
                str(path),
                "--relayhost",
                "[relay.example]:25",
                "--postfix-dir",
                str(tmp_path),
                "--write-files",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "FILTER smtpplus-high:[relay.example]:25" in out and "# WARNING: FILTER overrides content_filter" in out
    assert (tmp_path / "smtpplus_milter_header_checks").read_text().count("FILTER") == 2
    assert main(["postfix-config", "-c", str(path), "--relayhost", "", "--nexthop", "medium=x"]) == 2
