"""``smtpplus-milter verify ...`` and the verification side of ``users add/edit`` on real files.

Code mail goes to a real SMTP sink (aiosmtpd on loopback); DNS is tested in tests/e2e/test_verify_e2e.py.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lab.harness import Sink, free_port
from smtpplus_milter import cli
from smtpplus_milter.config import load_config
from smtpplus_milter.core.users import User
from smtpplus_milter.core.verification import MAX_FAILURES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as running:
        yield running


@pytest.fixture
def conf(tmp_path: Path, sink: Sink) -> Path:
    shutil.copy(DEPLOY / "users.yaml", tmp_path / "users.yaml")
    settings = yaml.safe_load((DEPLOY / "smtpplus.yaml").read_text(encoding="utf-8"))
    settings["sasl"]["passwd_file"] = str(tmp_path / "smtpplus.passwd")
    settings["verification"].update(smtp=f"127.0.0.1:{sink.port}", **{"from": "verify@relay.test"})
    (tmp_path / "smtpplus.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")
    return tmp_path / "smtpplus.yaml"


def run(conf: Path, *args: str) -> int:
    group, action, *rest = args
    return cli.main([group, action, "-c", str(conf), *rest])


def code_from(sink: Sink, count: int = 1) -> str:
    data = sink.wait_for(count)[-1].data.decode()
    match = re.search(r"^    (\d{4}) (\d{4})\r?$", data, re.MULTILINE)
    assert match, data
    return match.group(1) + match.group(2)


def user(conf: Path, login: str = "ceo-outlook") -> User:
    found = load_config(conf).directory.lookup(login)
    assert found is not None
    return found


def test_edit_puts_new_sender_into_pending_and_mails_a_code(
    conf: Path, sink: Sink, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(conf, "users", "edit", "ceo-outlook", "--authorized-sender", "ceo@private.example") == 0
    out, err = capsys.readouterr()
    assert "verification.required is on" in err
    assert "A verification code was e-mailed to ceo@private.example" in out and "valid for 24 hours" in out
    assert user(conf).pending_senders == {"ceo@private.example"}
    assert user(conf).authorized_senders == {"ceo@yourcompany.com"}  # unchanged
    (mail,) = sink.wait_for(1)
    assert mail.rcpt_tos == ["ceo@private.example"] and mail.mail_from == "verify@relay.test"
    code = code_from(sink)
    assert code not in (conf.parent / "verification.json").read_text()

    assert run(conf, "verify", "list") == 0
    listed = capsys.readouterr().out
    assert re.search(r"ceo-outlook\s+sender\s+ceo@private\.example\s+0m\s+code sent", listed), listed

    assert run(conf, "verify", "confirm", "ceo-outlook", "ceo@private.example", code) == 0
    assert user(conf).authorized_senders == {"ceo@yourcompany.com", "ceo@private.example"}
    assert not user(conf).pending_senders
    # The comments of the users file survive the move.
    assert "# SMTP+ users: the key is the SASL login" in (conf.parent / "users.yaml").read_text()


def test_domain_start_prints_the_txt_record(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(conf, "users", "edit", "newsletter", "--authorized-domain", "Mail.Example.ORG") == 0
    out = capsys.readouterr().out
    match = re.search(r'^  _smtpplus-verify\.mail\.example\.org TXT "smtpplus-verify=([\w-]+)"$', out, re.MULTILINE)
    assert match, out
    assert "verify check newsletter mail.example.org" in out
    assert run(conf, "verify", "start", "newsletter", "mail.example.org") == 0
    assert match.group(1) in capsys.readouterr().out  # the same token again
    assert run(conf, "verify", "list", "--json") == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["kind"] == "domain" and record["attempt"]["token"] == match.group(1)


def test_five_wrong_codes_void_it_then_a_new_code_works(
    conf: Path, sink: Sink, capsys: pytest.CaptureFixture[str]
) -> None:
    run(conf, "users", "edit", "ceo-outlook", "--authorized-sender", "a@b.example")
    code = code_from(sink)
    wrong = f"{(int(code) + 1) % 10**8:08d}"
    capsys.readouterr()
    for _ in range(MAX_FAILURES - 1):
        assert run(conf, "verify", "confirm", "ceo-outlook", "a@b.example", wrong) == 1
    assert "1 more tries" in capsys.readouterr().err
    assert run(conf, "verify", "confirm", "ceo-outlook", "a@b.example", wrong) == 1
    assert "void after 5 wrong tries" in capsys.readouterr().err
    assert run(conf, "verify", "confirm", "ceo-outlook", "a@b.example", code) == 1
    assert "void" in capsys.readouterr().err and user(conf).pending_senders == {"a@b.example"}
    assert run(conf, "verify", "start", "ceo-outlook", "a@b.example") == 0
    assert run(conf, "verify", "confirm", "ceo-outlook", "a@b.example", code_from(sink, 2)) == 0


def test_cancel_drops_entry_and_code(conf: Path, sink: Sink, capsys: pytest.CaptureFixture[str]) -> None:
    run(conf, "users", "edit", "ceo-outlook", "--authorized-sender", "a@b.example")
    code = code_from(sink)
    assert run(conf, "verify", "cancel", "ceo-outlook", "A@B.example") == 0
    assert not user(conf).pending_senders
    assert "a@b.example" not in (conf.parent / "verification.json").read_text()
    assert run(conf, "verify", "confirm", "ceo-outlook", "a@b.example", code) == 1
    assert "not pending" in capsys.readouterr().err
    assert run(conf, "verify", "list") == 0
    assert "Nothing is pending" in capsys.readouterr().out


def test_verified_attests_and_logs(conf: Path, sink: Sink, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(conf, "users", "edit", "ceo-outlook", "--authorized-domain", "trusted.example", "--verified") == 0
    err = capsys.readouterr().err
    event = json.loads(next(line for line in err.splitlines() if line.startswith("{")))
    assert event["event"] == "verification_attested" and event["domains"] == ["trusted.example"]
    assert event["user"] == "ceo-outlook" and event["operator"]
    assert "trusted.example" in user(conf).authorized_domains and not sink.messages


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(("start", "nobody", "a@b.example"), "no SMTP+ user 'nobody'", id="unknown-user"),
        pytest.param(("start", "ceo-outlook", "x@y.example"), "not pending", id="not-pending"),
        pytest.param(("start", "ceo-outlook", "ceo@yourcompany.com"), "already verified", id="already-verified"),
        pytest.param(("start", "ceo-outlook", "a@b..example"), "not a valid domain", id="bad-address"),
        pytest.param(("confirm", "ceo-outlook", "example.com", "1"), "not an address", id="confirm-domain"),
        pytest.param(("check", "ceo-outlook", "a@b.example"), "is an address", id="check-address"),
        pytest.param(("cancel", "ceo-outlook", "nothing.example"), "not pending", id="cancel-unknown"),
    ],
)
def test_mistakes_exit_1_without_traceback(
    conf: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    assert run(conf, "verify", *args) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_usage_errors_exit_2(conf: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        run(conf, "verify", "confirm", "ceo-outlook")
    assert exit_.value.code == 2


def test_smtp_down_keeps_entry_pending_and_says_what_to_do(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = yaml.safe_load(conf.read_text())
    settings["verification"]["smtp"] = f"127.0.0.1:{free_port()}"
    conf.write_text(yaml.safe_dump(settings))
    assert run(conf, "users", "edit", "ceo-outlook", "--authorized-sender", "a@b.example") == 0
    err = capsys.readouterr().err
    assert "verification not started for a@b.example: could not send the code" in err and "verify start" in err
    assert user(conf).pending_senders == {"a@b.example"}
    assert run(conf, "verify", "start", "ceo-outlook", "a@b.example") == 1
    assert run(conf, "verify", "list") == 0
    assert "not started" in capsys.readouterr().out


def test_delete_forgets_attempts(conf: Path, sink: Sink) -> None:
    run(conf, "users", "edit", "ceo-outlook", "--authorized-sender", "a@b.example")
    assert "a@b.example" in (conf.parent / "verification.json").read_text()
    assert run(conf, "users", "delete", "ceo-outlook") == 0
    assert "a@b.example" not in (conf.parent / "verification.json").read_text()


def attempts(conf: Path) -> str:
    path = conf.parent / "verification.json"
    return path.read_text(encoding="utf-8") if path.exists() else ""


@pytest.mark.parametrize(
    ("option", "entry", "field"),
    [
        pytest.param("--authorized-domain", "private.example", "domains", id="domain"),
        pytest.param("--authorized-sender", "ceo@private.example", "senders", id="sender"),
    ],
)
def test_verified_promotes_an_entry_that_is_pending(
    conf: Path, sink: Sink, capsys: pytest.CaptureFixture[str], option: str, entry: str, field: str
) -> None:
    # The install guide's way out of "(awaiting verification)": the same edit again, with --verified.
    assert run(conf, "users", "edit", "ceo-outlook", option, entry) == 0
    assert entry in attempts(conf)
    capsys.readouterr()
    # Without --verified it is left pending, and the note says how to authorize it.
    assert run(conf, "users", "edit", "ceo-outlook", option, entry) == 0
    err = capsys.readouterr().err
    assert f"{entry} is already in pending_{field}" in err and "--verified" in err and "verify start" in err
    before = (conf.parent / "users.yaml").read_text(encoding="utf-8")

    assert run(conf, "users", "edit", "ceo-outlook", option, entry.upper(), "--verified") == 0
    err = capsys.readouterr().err
    found = user(conf)
    authorized = found.authorized_domains if field == "domains" else found.authorized_senders
    assert entry in authorized and not found.pending_domains and not found.pending_senders
    assert f"moved to authorized_{field} (--verified)" in err
    event = json.loads(next(line for line in err.splitlines() if line.startswith("{")))
    assert event["event"] == "verification_attested" and event[field] == [entry] and event["user"] == "ceo-outlook"
    assert entry not in attempts(conf)  # its code or token is gone with it
    # The rest of the file is untouched: comments, the other users, the blank lines between them.
    after = (conf.parent / "users.yaml").read_text(encoding="utf-8")
    assert after.split("ceo-outlook:")[0] == before.split("ceo-outlook:")[0]
    assert after.split("newsletter:")[1] == before.split("newsletter:")[1]
    assert "\n\nnewsletter:" in after
    assert run(conf, "verify", "list") == 0
    assert "Nothing is pending" in capsys.readouterr().out


@pytest.mark.parametrize("typed", [["{a}", "{b}"], ["{a} {b}"], ["{a}-{b}"], ["{a}{b}"]], ids=str)
def test_confirm_takes_the_code_as_the_mail_shows_it(
    conf: Path, sink: Sink, capsys: pytest.CaptureFixture[str], typed: list[str]
) -> None:
    run(conf, "users", "edit", "ceo-outlook", "--authorized-sender", "a@b.example")
    code = code_from(sink)
    args = [part.format(a=code[:4], b=code[4:]) for part in typed]
    assert run(conf, "verify", "confirm", "ceo-outlook", "a@b.example", *args) == 0
    assert "a@b.example" in user(conf).authorized_senders


@pytest.mark.parametrize("typed", [["1234", "567"], ["1234", "56789"], ["1234 567x"], ["12345678", "9"]], ids=str)
def test_confirm_refuses_a_code_of_the_wrong_shape_without_counting_a_try(
    conf: Path, sink: Sink, capsys: pytest.CaptureFixture[str], typed: list[str]
) -> None:
    run(conf, "users", "edit", "ceo-outlook", "--authorized-sender", "a@b.example")
    capsys.readouterr()
    assert run(conf, "verify", "confirm", "ceo-outlook", "a@b.example", *typed) == 1
    err = capsys.readouterr().err
    assert "is not a code: a code has 8 digits" in err and "Traceback" not in err
    assert '"failures": 0' in attempts(conf)


def test_cancel_keeps_the_blank_line_between_users(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    users_file = conf.parent / "users.yaml"
    # A pending entry written by hand as the last key of a user, followed by a blank line and the next user.
    text = users_file.read_text(encoding="utf-8")
    text = text.replace(
        '  authorized_senders: "ceo@yourcompany.com"\n',
        '  authorized_senders: "ceo@yourcompany.com"\n  pending_domains: "private.example"\n',
    )
    text = text.replace(
        "  authorized_domains: [news.yourcompany.com]\n",
        "  authorized_domains: [news.yourcompany.com]\n  pending_domains:\n    - news2.example\n",
    )
    users_file.write_text(text, encoding="utf-8")
    assert run(conf, "verify", "cancel", "ceo-outlook", "private.example") == 0
    assert run(conf, "verify", "cancel", "newsletter", "news2.example") == 0
    expected = text.replace('  pending_domains: "private.example"\n', "").replace(
        "  pending_domains:\n    - news2.example\n", ""
    )
    assert users_file.read_text(encoding="utf-8") == expected


def test_edit_then_cancel_gives_back_the_file_as_it_was(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    users_file = conf.parent / "users.yaml"
    shipped = users_file.read_text(encoding="utf-8")
    assert run(conf, "users", "edit", "newsletter", "--authorized-domain", "news2.example") == 0
    assert user(conf, "newsletter").pending_domains == {"news2.example"}
    assert run(conf, "verify", "cancel", "newsletter", "news2.example") == 0
    assert users_file.read_text(encoding="utf-8") == shipped
