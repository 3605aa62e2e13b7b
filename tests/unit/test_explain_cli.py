"""``smtpplus-milter explain`` says when the user may send as any sender (text and JSON)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from smtpplus_milter import cli

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    users = (DEPLOY / "users.yaml").read_text(encoding="utf-8")
    (tmp_path / "users.yaml").write_text(users + "\nopen-app:\n  active: true\n", encoding="utf-8")
    shutil.copy(DEPLOY / "smtpplus.yaml", tmp_path / "smtpplus.yaml")
    return tmp_path / "smtpplus.yaml"


def explain(conf: Path, login: str, *extra: str) -> int:
    return cli.main(["explain", "-c", str(conf), "--user", login, "--mail-from", "ceo@paypal.com", *extra])


def test_explain_says_the_user_may_send_as_any_sender(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert explain(conf, "open-app") == 0
    assert "Senders: ANY (the user has no authorized or pending domains or senders)" in capsys.readouterr().out
    assert explain(conf, "open-app", "--json") == 0
    record = json.loads(capsys.readouterr().out)
    assert record["verdict"] == "accepted" and record["user"]["any_sender"] is True
    assert set(record["user"]) == {"login", "active", "priority", "list", "any_sender"}


def test_explain_of_a_restricted_user_says_nothing_about_any_sender(
    conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert explain(conf, "ceo-outlook", "--json") == 0
    record = json.loads(capsys.readouterr().out)
    assert record["verdict"] == "rejected" and record["user"]["any_sender"] is False
    assert explain(conf, "ceo-outlook") == 0
    assert "ANY" not in capsys.readouterr().out


def test_a_message_without_priority_headers_takes_the_users_priority(
    conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["explain", "-c", str(conf), "--user", "newsletter", "--mail-from", "news@news.yourcompany.com"]
    assert cli.main(base) == 0
    out = capsys.readouterr().out
    assert "Priority: message none (no priority header; the user's priority 5 applies), effective 5" in out
    assert "(default)" not in out
    assert cli.main([*base, "--json"]) == 0
    priority = json.loads(capsys.readouterr().out)["priority"]
    assert priority["message_carried"] is False and priority["user"] == 5 and priority["effective"] == 5
    assert {"message", "message_source", "user", "effective"} <= set(priority)
    # With a priority header the message's own level is shown, and the higher of the two applies.
    assert cli.main([*base, "--x-priority", "2 (High)"]) == 0
    assert "Priority: message 2 (X-Priority), user 5, effective 2" in capsys.readouterr().out
