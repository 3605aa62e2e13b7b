"""deploy/README-install.md §6 "The first users", run as written against a copy of the shipped config.

The commands below are the guide's, in the guide's order; keep the two in step (a change to one
is a change to the other). The guide's own check afterwards (§10: a message from
info@yourcompany.com as shop-frontend) must then be accepted, not refused as "awaiting
verification": that is what ``explain`` is asked at the end.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from smtpplus_milter import cli
from smtpplus_milter.config import load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CONFIG = "/etc/smtpplus/smtpplus.yaml"

# README-install.md §6, word for word except the -c path (and --pid-file: no milter runs here).
GUIDE_COMMANDS = [
    "smtpplus-milter users delete -c /etc/smtpplus/smtpplus.yaml shop-frontend",
    "smtpplus-milter users delete -c /etc/smtpplus/smtpplus.yaml ceo-outlook",
    "smtpplus-milter users delete -c /etc/smtpplus/smtpplus.yaml newsletter",
    "smtpplus-milter users delete -c /etc/smtpplus/smtpplus.yaml old-crm",
    "smtpplus-milter users add -c /etc/smtpplus/smtpplus.yaml shop-frontend"
    " --list shop --note 'Magento order mails' --authorized-domain yourcompany.com --verified --reload",
]
# The guide's remedy for an entry added without --verified (still "awaiting verification").
GUIDE_REMEDY = (
    "smtpplus-milter users edit -c /etc/smtpplus/smtpplus.yaml shop-frontend"
    " --authorized-domain yourcompany.com --verified --reload"
)


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """The files as §4 installs them: smtpplus.yaml and users.yaml as shipped, an empty passwd-file."""
    shutil.copy(DEPLOY / "users.yaml", tmp_path / "users.yaml")
    text = (DEPLOY / "smtpplus.yaml").read_text(encoding="utf-8")
    text = text.replace("/etc/dovecot/smtpplus.passwd", str(tmp_path / "smtpplus.passwd"))
    (tmp_path / "smtpplus.yaml").write_text(text, encoding="utf-8")
    (tmp_path / "smtpplus.passwd").write_text("", encoding="utf-8")
    return tmp_path / "smtpplus.yaml"


def argv(command: str, conf: Path) -> list[str]:
    words = shlex.split(command)
    assert words[0] == "smtpplus-milter"
    return [str(conf) if word == CONFIG else word for word in words[1:]] + [
        "--pid-file",
        str(conf.parent / "milter.pid"),
    ]


def test_the_commands_here_are_the_guides() -> None:
    # Not a parser of the guide: only a tripwire that fails when one of the two changes alone.
    guide = re.sub(r"\\\n\s*", "", (DEPLOY / "README-install.md").read_text(encoding="utf-8"))
    section = guide[guide.index("## 6.") : guide.index("## 7.")]
    for command in [*GUIDE_COMMANDS, GUIDE_REMEDY]:
        assert command in section, command
    assert section.index(GUIDE_COMMANDS[-2]) < section.index(GUIDE_COMMANDS[-1])  # deletes before the add


def test_the_guides_first_user_sends(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert load_config(conf).settings.verification.required  # the shipped default the guide must cope with
    for command in GUIDE_COMMANDS:
        assert cli.main(argv(command, conf)) == 0, (command, capsys.readouterr())
    out, err = capsys.readouterr()
    assert "password: " in out and "verification_attested" in err and "Traceback" not in err
    directory = load_config(conf).directory
    assert sorted(directory.users) == ["shop-frontend"]
    user = directory.lookup("shop-frontend")
    assert user is not None and user.authorized_domains == {"yourcompany.com"} and not user.pending_domains
    explain = ["explain", "-c", str(conf), "--user", "shop-frontend", "--mail-from", "info@yourcompany.com", "--json"]
    assert cli.main(explain) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "accepted"


def test_without_verified_the_guides_way_out_works(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The guide's remedy for a user added without --verified: the same entry again, with it."""
    for command in GUIDE_COMMANDS:
        assert cli.main(argv(command.replace(" --verified", ""), conf)) == 0
    assert "_smtpplus-verify.yourcompany.com TXT" in capsys.readouterr().out  # the DNS way is offered
    explain = ["explain", "-c", str(conf), "--user", "shop-frontend", "--mail-from", "info@yourcompany.com", "--json"]
    assert cli.main(explain) == 0
    assert "awaiting verification" in json.loads(capsys.readouterr().out)["reply"]
    assert cli.main(argv(GUIDE_REMEDY, conf)) == 0
    capsys.readouterr()
    assert cli.main(explain) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "accepted"
