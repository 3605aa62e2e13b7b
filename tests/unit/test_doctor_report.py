"""The doctor's report (core/doctor.py) and its config section: stable JSON, exit code, table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smtpplus_milter.config import ConfigError, Doctor, load_config
from smtpplus_milter.core.doctor import Check, Report, Status
from tests.support.builders import write_config

CHECKS = (
    Check("spf", "yourcompany.com", Status.OK, "v=spf1 ip4:192.0.2.10 -all passes 192.0.2.10"),
    Check("dmarc", "yourcompany.com", Status.WARN, "p=none", '_dmarc.yourcompany.com TXT "v=DMARC1; p=quarantine"'),
    Check("ptr", "192.0.2.10", Status.FAIL, "no PTR record", "ask the owner of 192.0.2.10 for PTR relay.example"),
)


def test_json_is_stable_and_complete() -> None:
    data = json.loads(Report.of(CHECKS).as_json())
    assert list(data) == ["checks", "summary"]
    assert data["summary"] == {"ok": 1, "warn": 1, "fail": 1}
    assert [list(item) for item in data["checks"]] == [["check", "subject", "status", "found", "fix"]] * 3
    assert [item["status"] for item in data["checks"]] == ["OK", "WARN", "FAIL"]


@pytest.mark.parametrize(
    ("statuses", "code"),
    [
        pytest.param((Status.OK,), 0, id="all-ok"),
        pytest.param((Status.OK, Status.WARN), 0, id="warnings-pass"),
        pytest.param((Status.WARN, Status.FAIL), 1, id="a-fail-fails"),
        pytest.param((), 0, id="nothing-to-check"),
    ],
)
def test_exit_code(statuses: tuple[Status, ...], code: int) -> None:
    report = Report.of(Check("x", "y", status, "z") for status in statuses)
    assert report.exit_code == code


def test_table_shows_each_fix_under_its_check() -> None:
    table = Report.of(CHECKS).as_table()
    assert "FAIL  ptr" in table and "      fix: ask the owner of 192.0.2.10" in table
    assert table.rstrip().endswith("1 OK, 1 WARN, 1 FAIL")


def test_doctor_section_defaults_and_fallback_to_verification(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, settings={"verification": {"relay_ips": ["192.0.2.10"]}}))
    assert config.doctor == Doctor(relay_ips=("192.0.2.10",))


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        pytest.param({"relay_ips": ["relay.example"]}, "not an IP address", id="ip"),
        pytest.param({"ports": [0]}, "not a TCP port", id="port"),
        pytest.param({"dkim_selectors": ["bad selector"]}, "not a DKIM selector", id="selector"),
    ],
)
def test_doctor_section_refuses_bad_values(tmp_path: Path, section: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, settings={"doctor": section}))
    assert problem in "\n".join(str(p) for p in caught.value.problems)


def test_verification_relay_ips_are_checked_the_same_way(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, settings={"verification": {"relay_ips": ["relay.example"]}}))
    assert "not an IP address" in "\n".join(str(p) for p in caught.value.problems)
