"""``explain`` shows the fanout decision the milter would take (core.explain and the command)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from smtpplus_milter import cli
from smtpplus_milter.core.explain import EXPLAIN_QUEUE_ID, explain
from smtpplus_milter.core.fanout import TAG, Tag
from smtpplus_milter.core.priority import QUEUE_HEADER
from tests.support import builders
from tests.support.builders import write_config

CRM = builders.user("crm", domains=["shop.example"], list="crm")
RULES = replace(builders.rules(builders.directory(CRM)), fanout={"crm": "bcc"})
HEADERS = [("From", "info@shop.example"), ("To", "a@x.example")]


@pytest.mark.parametrize(
    ("recipients", "tag"),
    [
        pytest.param(["<a@x.example>", "<c@x.example>"], Tag(EXPLAIN_QUEUE_ID, "bcc"), id="bcc-recipient"),
        pytest.param(["<a@x.example>"], None, id="all-named"),
        pytest.param([], None, id="no-recipients-given"),
    ],
)
def test_explain_shows_the_tag_after_the_queue_header(recipients: list[str], tag: Tag | None) -> None:
    result = explain(RULES, "crm", "<info@shop.example>", HEADERS, recipients=recipients)
    assert result.accepted and result.splits and result.fanout == tag
    added = [edit.name for edit in result.edits if edit.action == "add"]
    assert added[-1] == (TAG if tag else QUEUE_HEADER)


def test_a_list_without_bcc_in_to_does_not_split() -> None:
    result = explain(replace(RULES, fanout={}), "crm", "<info@shop.example>", HEADERS, recipients=["<c@x.example>"])
    assert not result.splits and result.fanout is None


def test_the_command_prints_the_decision(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, settings={"lists": {"shop": {"bcc_in_to": True}}})
    base = ["explain", "-c", str(path), "--user", "shop-frontend", "--mail-from", "info@yourcompany.com"]
    base += ["--header", "To: a@example.org", "--rcpt", "a@example.org"]
    assert cli.main([*base, "--rcpt", "c@example.org"]) == 0
    out = capsys.readouterr().out
    assert "Copies: tagged for the fanout filter" in out
    assert f"header edit: add X-SMTPPlus-Fanout: {EXPLAIN_QUEUE_ID} bcc" in out
    assert cli.main([*base, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["fanout"] == {"mode": None, "tagged": False} and record["recipients"] == ["a@example.org"]
