"""`explain` and the milter give the same answer: every case of the authorization table, both ways.

Each case runs through the real adapter (Milter.testctx.TestCtx, as Postfix would drive it) and
through ``smtpplus-milter explain --json`` (the command line, in process); verdict, reply and
queue must agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import Milter
import pytest

from smtpplus_milter import cli
from smtpplus_milter.config import load_config
from smtpplus_milter.services.milter import ConfigHolder
from tests.milter.test_milter import Session
from tests.support.builders import write_config
from tests.unit.test_authorization import ENVELOPE_CASES, HEADER_CASES

H = list[tuple[str, str]]
GOOD_FROM = [("From", "info@yourcompany.com")]


@pytest.fixture(scope="module", params=["block", "alert"])
def config_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp(request.param)
    return write_config(directory, settings={"authorization": {"mode": request.param}})


def through_milter(config_path: Path, login: str, mail_from: str, headers: H) -> dict[str, Any]:
    session = Session(ConfigHolder(load_config(config_path)), login)
    try:
        stage, rc = session.message(mail_from, headers)
    finally:
        session.close()
    accepted = rc in (Milter.CONTINUE, Milter.ACCEPT)
    reply = session.reply
    queues = [value for action, name, _, value in session.ctx.edits if action == "add" and name == "X-SMTPPlus-Queue"]
    return {
        "verdict": "accepted" if accepted else "rejected",
        "reply": None if reply is None else " ".join(reply).replace("%%", "%"),
        "stage": {"envfrom": "mail_from", "eoh": "end_of_headers", "eom": "end_of_message"}[stage],
        "queue": queues[0] if queues else None,
    }


def cli_args(headers: H) -> list[str]:
    args: list[str] = []
    if not any(name.lower() == "from" for name, _ in headers):
        args.append("--no-header-from")
    for name, value in headers:
        if name.lower() == "from":
            args += ["--header-from", value]
        elif name.lower() == "sender":
            args += ["--header-sender", value]
        else:
            args += ["--header", f"{name}: {value}"]
    return args


def through_explain(
    config_path: Path, login: str, mail_from: str, headers: H, capsys: pytest.CaptureFixture[str]
) -> dict[str, Any]:
    argv = ["explain", "-c", str(config_path), "--user", login, "--mail-from", mail_from, "--json", *cli_args(headers)]
    capsys.readouterr()  # the milter's own log lines, if structlog prints them
    assert cli.main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    assert len(record["headers"]) == len(headers)
    return {key: record[key] for key in ("verdict", "reply", "stage", "queue")}


@pytest.mark.parametrize(("login", "mail_from", "verdict", "text"), ENVELOPE_CASES)
def test_envelope_cases_agree(
    config_path: Path, capsys: pytest.CaptureFixture[str], login: str, mail_from: str, verdict: Any, text: Any
) -> None:
    milter = through_milter(config_path, login, mail_from, GOOD_FROM)
    explained = through_explain(config_path, login, mail_from, GOOD_FROM, capsys)
    assert explained == milter


@pytest.mark.parametrize(("headers", "verdict", "text"), HEADER_CASES)
def test_header_cases_agree(
    config_path: Path, capsys: pytest.CaptureFixture[str], headers: H, verdict: Any, text: Any
) -> None:
    milter = through_milter(config_path, "shop-frontend", "info@yourcompany.com", headers)
    explained = through_explain(config_path, "shop-frontend", "info@yourcompany.com", headers, capsys)
    assert explained == milter
    if "block" in config_path.parent.name:
        assert explained["verdict"] == verdict.value  # and both match the table itself


def test_text_output_names_rule_priority_queue_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, settings={"lists": {"shop": {"footer": {"text": "Sent by the shop."}}}})
    argv = ["explain", "-c", str(path), "--user", "shop-frontend", "--mail-from", "info@yourcompany.com"]
    assert cli.main([*argv, "--x-priority", "1 (Highest)"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ACCEPTED")
    assert "envelope_from info@yourcompany.com: authorized (authorized_domains yourcompany.com)" in out
    assert "Priority: message 1 (X-Priority), user 3, effective 1 -> queue high" in out
    assert "List: shop: header none, footer text" in out
    assert cli.main([*argv[:-1], "x@evil.example"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "REJECTED at MAIL FROM: 550 5.7.1 <x@evil.example>: sender not authorized for SMTP+ user shop-frontend"
    )
    assert "neither the address nor its domain is listed" in out


def test_explain_refuses_bad_config_and_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, users={"x": {"priority": 7}})
    assert cli.main(["explain", "-c", str(path), "--user", "x", "--mail-from", "a@b.example"]) == 1
    assert "priorities go from 1" in capsys.readouterr().err
    good = write_config(tmp_path)
    argv = ["explain", "-c", str(good), "--user", "x", "--mail-from", "a@b.example"]
    assert cli.main([*argv, "--header", "no colon"]) == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["explain", "-c", str(good)])  # --mail-from is required
    assert exc.value.code == 2


def test_explain_shows_display_name_spoofing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, settings={"authorization": {"display_name_spoofing": "log"}})
    argv = ["explain", "-c", str(path), "--user", "shop-frontend", "--mail-from", "info@yourcompany.com"]
    assert cli.main([*argv, "--header-from", '"ceo@bank.example" <info@yourcompany.com>']) == 0
    out = capsys.readouterr().out
    assert out.startswith("ACCEPTED")
    assert (
        "Spoofing: header_from info@yourcompany.com shows ceo@bank.example in display name "
        "(authorization.display_name_spoofing: log; the address decides)"
    ) in out
