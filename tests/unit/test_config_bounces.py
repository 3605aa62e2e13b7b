"""Config of issue 14: secret_file, bounces:, suppression:, notify: and a list's own notify:."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from smtpplus_milter.config import ConfigError, HostPort, load_config
from smtpplus_milter.config.loader import create_secret_file
from smtpplus_milter.config.values import Bounces, Notices, Notify, Suppression
from smtpplus_milter.core.suppression import Policy
from tests.support.builders import write_config

KEY = b"k" * 32
NOTIFY: dict[str, Any] = {
    "smtp": "127.0.0.1:10025",
    "from": "Postmaster@Relay.Example",
    "bounces": {"to": ["it@example.com"], "mode": "immediate", "original_sender": True},
    "complaints": {"to": ["it@example.com"], "mode": "immediate"},
}


def _secret(directory: Path, key: bytes = KEY, mode: int = 0o600, name: str = "secret") -> Path:
    path = directory / name
    path.write_bytes(key)
    path.chmod(mode)
    return path


def _load(directory: Path, **settings: Any) -> Any:
    if (settings.get("bounces") or {}).get("return_path") and "tracking" not in settings:
        # Reports are matched against the tracking store: a return path needs one.
        settings["tracking"] = {"store": f"sqlite:///{directory}/t.db"}
    return load_config(write_config(directory, settings=settings))


def _problem(directory: Path, **settings: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        _load(directory, **settings)
    [problem] = caught.value.problems
    return f"{'.'.join(map(str, problem.path))}: {problem}"


def test_defaults_need_nothing(tmp_path: Path) -> None:
    config = _load(tmp_path)
    assert config.bounces == Bounces(return_path=None, suppress_hard_days=180, soft_limit=5)
    assert config.suppression == Suppression("reject")
    assert config.notify == Notify(
        HostPort("127.0.0.1", 25), None, Notices((), "immediate", False), Notices((), "immediate", False)
    )
    assert config.secret is None and config.secret_path is None
    assert config.notify_for("shop") == config.notify and config.notify_for(None) == config.notify


def test_full_sections_become_typed_values(tmp_path: Path) -> None:
    _secret(tmp_path)
    config = _load(
        tmp_path,
        secret_file="secret",
        bounces={"return_path": "Bounce.Relay.Example.", "suppress_hard_days": 30, "soft_limit": 3},
        suppression={"action": "drop"},
        notify=NOTIFY,
    )
    assert config.bounces == Bounces("bounce.relay.example", 30, 3)
    assert config.bounces.policy == Policy(hard_days=30, soft_limit=3)
    assert config.suppression.action == "drop"
    assert config.secret_path == tmp_path / "secret"  # relative to the config file
    assert config.secret is not None and config.secret.key == KEY and config.secret.path == tmp_path / "secret"
    assert KEY.decode() not in repr(config.secret)
    assert config.notify == Notify(
        HostPort("127.0.0.1", 10025),
        "postmaster@relay.example",
        Notices(("it@example.com",), "immediate", True),
        Notices(("it@example.com",), "immediate", False),
    )
    assert config.warnings == []
    assert [mail.key for mail in config.postfix.own_mail] == ["notify.smtp"]


def test_a_list_notify_overrides_key_by_key(tmp_path: Path) -> None:
    lists = {
        "shop": {"notify": {"bounces": {"to": "shop-it@example.com;ops@example.com", "mode": "daily"}}},
        "news": {"notify": {"from": "news@relay.example", "complaints": {"to": []}}},
        "plain": {},
    }
    config = _load(tmp_path, notify=NOTIFY, lists=lists)
    shop = config.notify_for("shop")
    assert shop.bounces == Notices(("shop-it@example.com", "ops@example.com"), "daily", True)  # original_sender kept
    assert shop.complaints == config.notify.complaints and shop.sender == config.notify.sender
    news = config.notify_for("news")
    assert news.sender == "news@relay.example" and news.complaints == Notices((), "immediate", False)
    assert news.bounces == config.notify.bounces and news.smtp == HostPort("127.0.0.1", 10025)
    assert config.notify_for("plain") == config.notify
    assert "lists.news.notify.smtp" in [mail.key for mail in config.postfix.own_mail]


def test_secret_is_not_read_when_nothing_needs_it(tmp_path: Path) -> None:
    config = _load(tmp_path, secret_file="does-not-exist")
    assert config.secret is None and config.secret_path == tmp_path / "does-not-exist"


@pytest.mark.parametrize(
    ("mode", "warned"),
    [
        pytest.param(0o600, False, id="0600"),
        pytest.param(0o400, False, id="0400"),
        pytest.param(0o640, False, id="0640"),
        pytest.param(0o644, True, id="0644"),
        pytest.param(0o660, True, id="0660-group-write"),
    ],
)
def test_secret_mode_wider_than_0640_warns(tmp_path: Path, mode: int, warned: bool) -> None:
    secret = _secret(tmp_path, mode=mode)
    config = _load(tmp_path, secret_file=str(secret), bounces={"return_path": "b.example"}, notify=NOTIFY)
    assert config.secret is not None and config.secret.mode == mode
    assert any("chmod 0600" in warning for warning in config.warnings) is warned


@pytest.mark.parametrize(
    ("setup", "settings", "expected"),
    [
        pytest.param(
            None,
            {},
            "bounces.return_path: ",
            id="no-secret-file-key",
        ),
        pytest.param(b"short", {"secret_file": "secret"}, "holds 5 bytes; a key needs at least 32", id="too-short"),
        pytest.param(b"", {"secret_file": "secret"}, "holds 0 bytes", id="empty"),
        pytest.param(b"k" * 4097, {"secret_file": "secret"}, "longer than 4096 bytes", id="too-long"),
    ],
)
def test_return_path_needs_a_usable_secret(
    tmp_path: Path, setup: bytes | None, settings: dict[str, Any], expected: str
) -> None:
    if setup is not None:
        _secret(tmp_path, key=setup)
    text = _problem(tmp_path, bounces={"return_path": "b.example"}, notify=NOTIFY, **settings)
    assert expected in text
    assert "head -c 32 /dev/urandom >" in text and "umask 077" in text


def test_secret_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "secret").mkdir()
    text = _problem(tmp_path, secret_file="secret", bounces={"return_path": "b.example"}, notify=NOTIFY)
    assert text.startswith("secret_file: ") and "cannot be read" in text


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_secret(tmp_path: Path) -> None:  # pragma: no cover - CI runs as root
    _secret(tmp_path, mode=0o000)
    text = _problem(tmp_path, secret_file="secret", bounces={"return_path": "b.example"}, notify=NOTIFY)
    assert "Permission denied" in text


@pytest.mark.parametrize(
    ("settings", "key", "text"),
    [
        pytest.param({"bounces": {"return_path": "x@b.example"}}, "bounces.return_path", "only the domain", id="rp-at"),
        pytest.param({"bounces": {"return_path": "a b.example"}}, "bounces.return_path", "", id="rp-bad-domain"),
        pytest.param({"bounces": {"soft_limit": 0}}, "bounces.soft_limit", "greater than or equal", id="soft-0"),
        pytest.param({"bounces": {"suppress_hard_days": "180"}}, "bounces.suppress_hard_days", "", id="days-str"),
        pytest.param({"bounces": {"return": "b.example"}}, "bounces.return", "return_path", id="bounces-typo"),
        pytest.param({"suppression": {"action": "bounce"}}, "suppression.action", "'reject' or 'drop'", id="act"),
        pytest.param({"notify": {"smtp": "relay"}}, "notify.smtp", "HOST:PORT", id="smtp"),
        pytest.param({"notify": {"from": "nobody"}}, "notify.from", "local@domain", id="bad-from"),
        pytest.param(
            {"notify": {"from": "a@b.example", "bounces": {"to": ["it@"]}}},
            "notify.bounces.to",
            "local@domain",
            id="to",
        ),
        pytest.param(
            {"notify": {"from": "a@b.example", "bounces": {"to": "a@b.example,c@d.example"}}},
            "notify.bounces.to",
            "separated with ';'",
            id="to-comma",
        ),
        pytest.param({"notify": {"bounces": {"mode": "weekly"}}}, "notify.bounces.mode", "immediate", id="mode"),
        pytest.param(
            {"notify": {"complaints": {"original_sender": True}}},
            "notify.complaints.original_sender",
            "allowed keys here: to, mode",
            id="complaints-no-original-sender",
        ),
        pytest.param(
            {"lists": {"shop": {"notify": {"too": []}}}},
            "lists.shop.notify.too",
            "allowed keys here: smtp, from, bounces, complaints",
            id="list-typo",
        ),
        pytest.param(
            {"notify": {"bounces": {"to": ["it@example.com"]}}},
            "notify.from",
            "no sender is set",
            id="to-without-from",
        ),
        pytest.param(
            {"lists": {"shop": {"notify": {"complaints": {"to": ["it@example.com"]}}}}},
            "lists.shop.notify.from",
            "no sender is set",
            id="list-to-without-from",
        ),
    ],
)
def test_section_errors(tmp_path: Path, settings: dict[str, Any], key: str, text: str) -> None:
    problem = _problem(tmp_path, **settings)
    assert problem.startswith(f"{key}: ") and text in problem


def test_telling_original_senders_needs_a_sender(tmp_path: Path) -> None:
    problem = _problem(tmp_path, notify={"bounces": {"original_sender": True}})
    assert problem.startswith("notify.from: ") and "to original senders" in problem
    _secret(tmp_path)
    config = _load(tmp_path, secret_file="secret", bounces={"return_path": "b.example"})  # nobody is told
    assert config.notify.sender is None and config.secret is not None


def test_secret_and_notify_problems_are_reported_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, bounces={"return_path": "b.example"}, notify={"complaints": {"to": ["it@example.com"]}})
    keys = [".".join(map(str, problem.path)) for problem in caught.value.problems]
    assert keys == ["bounces.return_path", "notify.from"]
    assert all(problem.line is not None for problem in caught.value.problems)


def test_commented_examples_in_the_shipped_file_are_valid(tmp_path: Path) -> None:
    shipped = (Path(__file__).resolve().parents[2] / "deploy" / "smtpplus.yaml").read_text(encoding="utf-8")
    lines = shipped.splitlines()
    start = lines.index("# notify:")
    block = "\n".join(line.removeprefix("# ") for line in lines[start:] if not line.startswith("#   #"))
    list_line = next(line.strip().removeprefix("# ") for line in lines if line.strip().startswith("# notify: {"))
    notify = yaml.safe_load(block)["notify"]
    shop = yaml.safe_load(list_line)
    _secret(tmp_path)
    config = _load(
        tmp_path,
        secret_file="secret",
        bounces={"return_path": "bounce.relay.example"},
        notify=notify,
        lists={"shop": shop},
    )
    assert config.notify.sender == "postmaster@relay.example" and config.notify.bounces.to == ("it@example.com",)
    assert config.notify_for("shop").bounces.to == ("shop-it@example.com",)


def test_a_return_path_needs_tracking(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(bytes(32))
    secret.chmod(0o600)
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, settings={"secret_file": "secret", "bounces": {"return_path": "b.example"}}))
    [problem] = caught.value.problems
    assert problem.path == ("bounces", "return_path") and "tracking is off" in str(problem)


def test_a_missing_secret_is_a_warning_until_run_or_ingest_creates_it(tmp_path: Path) -> None:
    settings: dict[str, Any] = {"secret_file": "secret", "bounces": {"return_path": "b.example"}, "notify": NOTIFY}
    checked = _load(tmp_path, **settings)
    assert checked.secret is None and not (tmp_path / "secret").exists()
    assert any("does not exist yet" in warning and "umask 077" in warning for warning in checked.warnings)

    path = write_config(tmp_path, settings={**settings, "tracking": {"store": f"sqlite:///{tmp_path}/t.db"}})
    started = load_config(path, create_secret=True)
    assert started.secret is not None and len(started.secret.key) == 32
    secret = tmp_path / "secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and secret.read_bytes() == started.secret.key
    again = load_config(path, create_secret=True)  # a second process, or a restart: the same key
    assert again.secret is not None and again.secret.key == started.secret.key
    create_secret_file(secret)  # losing a race to create it changes nothing
    assert secret.read_bytes() == started.secret.key
    assert [name for name in os.listdir(tmp_path) if name.startswith(".secret.")] == []


def test_a_secret_that_cannot_be_created_is_a_problem_with_the_command(tmp_path: Path) -> None:
    settings = {
        "secret_file": "no-such-dir/secret",
        "bounces": {"return_path": "b.example"},
        "notify": NOTIFY,
        "tracking": {"store": f"sqlite:///{tmp_path}/t.db"},
    }
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, settings=settings), create_secret=True)
    [problem] = caught.value.problems
    assert problem.path == ("secret_file",) and "cannot be created" in str(problem) and "umask 077" in str(problem)


@pytest.mark.parametrize(
    ("listen", "warning"),
    [
        pytest.param("unix:/run/smtpplus-ingest/ingest.sock", None, id="unix"),
        pytest.param("inet:10026@127.0.0.1", None, id="loopback"),
        pytest.param("inet:10026@192.0.2.1", "not on loopback", id="exposed"),
    ],
)
def test_ingest_listen_is_a_socket_and_warns_off_loopback(tmp_path: Path, listen: str, warning: str | None) -> None:
    config = _load(
        tmp_path, secret_file=str(_secret(tmp_path)), bounces={"return_path": "b.example", "ingest_listen": listen}
    )
    assert str(config.bounces.ingest_listen) == listen
    assert config.postfix.ingest_listen == config.bounces.ingest_listen
    found = [w for w in config.warnings if "ingest_listen" in w]
    assert (warning in found[0]) if warning else not found


def test_ingest_listen_without_a_return_path_warns(tmp_path: Path) -> None:
    config = _load(tmp_path, bounces={"ingest_listen": "unix:/run/i.sock"})
    assert any("nothing to take" in w for w in config.warnings)


def test_ingest_listen_must_be_a_socket(tmp_path: Path) -> None:
    problem = _problem(tmp_path, bounces={"ingest_listen": "/run/i.sock"})
    assert problem.startswith("bounces.ingest_listen: ") and "unix:/ABSOLUTE/PATH" in problem
