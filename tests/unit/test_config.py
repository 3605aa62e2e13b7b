"""Config validation: every refusal names file, key path, line and a hint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smtpplus_milter.cli import main
from smtpplus_milter.config import ConfigError, HostPort, SocketSpec, load_config
from tests.support.builders import write_config

GOOD_MAIN = """\
milter:
  socket: unix:/var/spool/postfix/smtpplus/milter.sock
  timeout: 60
  on_internal_error: tempfail
unauthenticated: pass
unknown_user: reject
authorization:
  mode: block
  check: [envelope_from, header_from, header_sender]
limits:
  max_message_bytes: 20971520
priority:
  default: 3
  queues: {1: high, 2: high, 3: normal, 4: low, 5: low}
metrics:
  listen: 127.0.0.1:9464
  per_user_labels: true
alerts:
  dedup_seconds: 300
  webhook:      {url: https://ops.example/hooks/smtpplus, timeout: 5}
  alertmanager: {url: http://127.0.0.1:9093}
  email:        {to: [it@example.com], smtp: 127.0.0.1:10025, from: smtpplus@example.com}
lists:
  shop:
    header: {text: "...", html: "<p>...</p>"}
    footer: {text: "...", html: "<p>...</p>"}
users_file: users.yaml
sasl:
  passwd_file: /etc/dovecot/smtpplus.passwd
"""

GOOD_USERS = """\
shop-frontend:
  active: true
  priority: 3
  list: shop
  note: "Magento order mails"
  authorized_domains: "yourcompany.com;marketing.yourcompany.com"
  authorized_senders: "info@yourcompany.com;sales@yourcompany.com"
listed:
  authorized_domains: [yourcompany.com, example.org]
"""


def _write(tmp_path: Path, main: str = GOOD_MAIN, users: str | None = GOOD_USERS) -> Path:
    (tmp_path / "smtpplus.yaml").write_text(main, encoding="utf-8")
    if users is not None:
        (tmp_path / "users.yaml").write_text(users, encoding="utf-8")
    return tmp_path / "smtpplus.yaml"


def test_product_example_is_valid(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path))
    user = config.directory.lookup("Shop-Frontend")
    assert user is not None
    assert user.authorized_domains == {"yourcompany.com", "marketing.yourcompany.com"}
    assert user.list == "shop" and user.priority == 3
    assert config.directory.lookup("listed") is not None


@pytest.mark.parametrize("value", ["alert", "log", "off"])
def test_display_name_spoofing_setting(tmp_path: Path, value: str) -> None:
    assert load_config(_write(tmp_path)).settings.authorization.display_name_spoofing == "alert"  # the default
    main = GOOD_MAIN.replace("  mode: block\n", f"  mode: block\n  display_name_spoofing: {value}\n")
    assert load_config(_write(tmp_path, main)).settings.authorization.display_name_spoofing == value


def test_shipped_example_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "smtpplus.yaml"
    assert load_config(example).directory.users


MAIN_CASES = [
    pytest.param(
        "milter:\n  sockett: unix:/x\n",
        "smtpplus.yaml",
        "milter.sockett",
        2,
        "allowed keys here: socket",
        id="unknown-key",
    ),
    pytest.param("milter:\n  timeout: '60'\n", "smtpplus.yaml", "milter.timeout", 2, "valid integer", id="wrong-type"),
    pytest.param(
        "authorization:\n  mode: blocked\n",
        "smtpplus.yaml",
        "authorization.mode",
        2,
        "'block' or 'alert'",
        id="bad-enum",
    ),
    pytest.param(
        "authorization:\n  display_name_spoofing: warn\n",
        "smtpplus.yaml",
        "authorization.display_name_spoofing",
        2,
        "'alert', 'log' or 'off'",
        id="bad-display-name-spoofing",
    ),
    pytest.param(
        "priority:\n  default: 7\n", "smtpplus.yaml", "priority.default", 2, "1 (very high) to 5", id="bad-priority"
    ),
    pytest.param(
        "priority:\n  queues: {1: high, 2: high}\n",
        "smtpplus.yaml",
        "priority.queues",
        2,
        "no queue for priority 3, 4, 5",
        id="queues-incomplete",
    ),
    pytest.param(
        "milter:\n  socket: /tmp/x.sock\n", "smtpplus.yaml", "milter.socket", 2, "unix:/ABSOLUTE/PATH", id="bad-socket"
    ),
    pytest.param("metrics:\n  listen: 9464\n", "smtpplus.yaml", "metrics.listen", 2, "valid string", id="listen-type"),
    pytest.param(
        "metrics:\n  listen: 127.0.0.1:0\n",
        "smtpplus.yaml",
        "metrics.listen",
        2,
        "is not HOST:PORT",
        id="listen-port-0",
    ),
    pytest.param(
        "milter:\n  socket: inet:65536@127.0.0.1\n",
        "smtpplus.yaml",
        "milter.socket",
        2,
        "is not a milter socket",
        id="socket-port-65536",
    ),
    pytest.param(
        "alerts:\n  email: {to: [it@example.com], smtp: relay.example, from: a@relay.example}\n",
        "smtpplus.yaml",
        "alerts.email.smtp",
        2,
        "'relay.example' is not HOST:PORT (e.g. 127.0.0.1:9464)",
        id="email-smtp-no-port",
    ),
    pytest.param(
        "verification:\n  smtp: '[::1]'\n", "smtpplus.yaml", "verification.smtp", 2, "is not HOST:PORT", id="smtp-v6"
    ),
    pytest.param(
        "verification:\n  resolver: dns.example:53\n",
        "smtpplus.yaml",
        "verification.resolver",
        2,
        "the resolver must be an IP address and port, e.g. 127.0.0.1:53",
        id="resolver-name",
    ),
    pytest.param("a: 1\na: 2\n", "smtpplus.yaml", "a", 2, "duplicate key", id="duplicate-key"),
    pytest.param("milter: [\n", "smtpplus.yaml", "(top level)", 2, "not valid YAML", id="yaml-syntax"),
    pytest.param("- a\n- b\n", "smtpplus.yaml", "(top level)", 1, "must be a YAML mapping", id="not-a-mapping"),
    pytest.param(
        "users_file: missing.yaml\n",
        "smtpplus.yaml",
        "users_file",
        1,
        "cannot read the users file",
        id="users-file-missing",
    ),
]


@pytest.mark.parametrize(("main_text", "file", "key", "line", "text"), MAIN_CASES)
def test_main_file_errors(tmp_path: Path, main_text: str, file: str, key: str, line: int, text: str) -> None:
    path = _write(tmp_path, main_text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problem = info.value.problems[0]
    assert (problem.file.name, ".".join(map(str, problem.path)) or "(top level)", problem.line) == (file, key, line)
    assert text in str(problem)


USER_CASES = [
    pytest.param(
        'u:\n  authorized_domains: "a.example,b.example"\n', "u.authorized_domains", 2, "separated with ';'", id="comma"
    ),
    pytest.param(
        'u:\n  authorized_senders: [a@x.example, "b@x.example,c@x.example"]\n',
        "u.authorized_senders",
        2,
        "one sender per list item",
        id="comma-in-list",
    ),
    pytest.param(
        "u:\n  authorized_senders: not-an-address\n", "u.authorized_senders", 2, "local@domain", id="bad-address"
    ),
    pytest.param(
        "u:\n  authorized_domains: info@x.example\n",
        "u.authorized_domains",
        2,
        "authorized_senders",
        id="address-as-domain",
    ),
    pytest.param(
        "u:\n  authorized_domains: bad_domain.example\n",
        "u.authorized_domains",
        2,
        "not a valid domain",
        id="bad-domain",
    ),
    pytest.param("u:\n  priority: 7\n", "u.priority", 2, "1 (very high) to 5", id="priority-7"),
    pytest.param("u:\n  priority: high\n", "u.priority", 2, "valid integer", id="priority-word"),
    pytest.param("u:\n  list: nope\n", "u.list", 2, "unknown list 'nope'", id="unknown-list"),
    pytest.param("u:\n  active: 'yes'\n", "u.active", 2, "valid boolean", id="active-string"),
    pytest.param("u:\n  colour: red\n", "u.colour", 2, "allowed keys here: active, priority", id="unknown-user-key"),
    pytest.param("u: {}\nU: {}\n", "U", 2, "case-insensitive", id="duplicate-login-case"),
    pytest.param("u: [1]\n", "u", 1, "valid dictionary", id="user-not-mapping"),
]


@pytest.mark.parametrize(("users_text", "key", "line", "text"), USER_CASES)
def test_users_file_errors(tmp_path: Path, users_text: str, key: str, line: int, text: str) -> None:
    path = _write(tmp_path, users=users_text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problem = info.value.problems[0]
    assert (problem.file.name, ".".join(map(str, problem.path)), problem.line) == ("users.yaml", key, line)
    assert text in str(problem)


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, users="u:\n  priority: 9\n  colour: red\nv:\n  active: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.problems) == 3


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_users_file(tmp_path: Path) -> None:  # pragma: no cover - CI runs as root
    path = _write(tmp_path)
    (tmp_path / "users.yaml").chmod(0)
    with pytest.raises(ConfigError, match="Permission denied"):
        load_config(path)


def test_users_file_that_is_a_directory(tmp_path: Path) -> None:
    path = _write(tmp_path, main=GOOD_MAIN.replace("users_file: users.yaml", "users_file: sub"))
    (tmp_path / "sub").mkdir()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert ".".join(map(str, info.value.problems[0].path)) == "users_file"
    assert "Is a directory" in str(info.value)


def test_endpoints_and_socket_are_typed_once_at_load(tmp_path: Path) -> None:
    main = GOOD_MAIN + "verification:\n  smtp: '[::1]:10025'\n  resolver: '[::1]:53'\n"
    settings = load_config(_write(tmp_path, main)).settings
    assert settings.milter.socket == SocketSpec.parse("unix:/var/spool/postfix/smtpplus/milter.sock")
    assert settings.metrics.listen == HostPort("127.0.0.1", 9464)
    assert settings.alerts.email is not None and settings.alerts.email.smtp == HostPort("127.0.0.1", 10025)
    assert (settings.verification.smtp, settings.verification.resolver) == (HostPort("::1", 10025), HostPort("::1", 53))
    defaults = load_config(_write(tmp_path, "{}\n", "{}\n")).settings
    assert (defaults.metrics.listen, defaults.verification.smtp) == (
        HostPort("127.0.0.1", 9464),
        HostPort("127.0.0.1", 25),
    )
    assert str(defaults.milter.socket) == "unix:/var/spool/postfix/smtpplus/milter.sock"


@pytest.mark.parametrize(
    ("users_file", "passwd_file", "users", "passwd"),
    [
        pytest.param("users.yaml", "/etc/dovecot/smtpplus.passwd", "etc/users.yaml", "/etc/dovecot/smtpplus.passwd"),
        pytest.param("sub/users.yaml", "smtpplus.passwd", "etc/sub/users.yaml", "etc/smtpplus.passwd"),
        pytest.param(
            "../users.yaml", "../dovecot/smtpplus.passwd", "etc/../users.yaml", "etc/../dovecot/smtpplus.passwd"
        ),
    ],
)
def test_paths_are_resolved_at_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, users_file: str, passwd_file: str, users: str, passwd: str
) -> None:
    # Relative paths are relative to the config file's directory, however the config was named.
    (tmp_path / "etc" / "sub").mkdir(parents=True)
    main = GOOD_MAIN.replace("users_file: users.yaml", f"users_file: {users_file}").replace(
        "passwd_file: /etc/dovecot/smtpplus.passwd", f"passwd_file: {passwd_file}"
    )
    (tmp_path / "etc" / "smtpplus.yaml").write_text(main, encoding="utf-8")
    (tmp_path / "etc" / users_file).write_text(GOOD_USERS, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    config = load_config("etc/smtpplus.yaml")
    assert config.path == tmp_path / "etc" / "smtpplus.yaml"
    assert config.users_path == tmp_path / users
    assert config.passwd_path == (Path(passwd) if passwd.startswith("/") else tmp_path / passwd)
    assert config.state_path == (tmp_path / users).with_name("verification.json")
    assert all(path.is_absolute() for path in (config.users_path, config.passwd_path, config.state_path))


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_config(tmp_path)
    assert main(["check-config", "-c", str(good)]) == 0
    assert "OK:" in capsys.readouterr().out
    (tmp_path / "users.yaml").write_text("u:\n  authorized_domains: a.example,b.example\n")
    assert main(["check-config", "-c", str(good)]) == 1
    err = capsys.readouterr().err
    assert "users.yaml:2: u.authorized_domains:" in err and "';'" in err


def test_check_config_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["check-config", "--bogus"])
    assert info.value.code == 2


def test_tracking_is_off_without_its_section(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path)).tracking is None


def test_tracking_section_is_resolved_at_load(tmp_path: Path) -> None:
    config = load_config(
        write_config(tmp_path, settings={"tracking": {"store": f"sqlite:///{tmp_path}/t.db", "spool_dir": "spool"}})
    )
    tracking = config.tracking
    assert tracking is not None
    assert tracking.node == os.uname().nodename and tracking.spool_dir == tmp_path / "spool"
    assert tracking.store == f"sqlite:///{tmp_path}/t.db" and tracking.retention_days == 90
    assert tracking.metrics_listen == HostPort("127.0.0.1", 9465)
    assert tracking.spool_max_bytes == 256 * 1024 * 1024


@pytest.mark.parametrize(
    ("tracking", "key", "text"),
    [
        pytest.param({"store": "mysql://x"}, "tracking.store", "should match pattern", id="unknown-store"),
        pytest.param({"store": "sqlite:///relative.db"}, "tracking.store", "should match pattern", id="relative-db"),
        pytest.param({}, "tracking.store", "required key is missing", id="store-missing"),
        pytest.param({"store": "sqlite:////x.db", "node": "a b"}, "tracking.node", "should match", id="bad-node"),
        pytest.param({"store": "sqlite:////x.db", "retention": 3}, "tracking.retention", "unknown key", id="typo"),
    ],
)
def test_tracking_section_errors(tmp_path: Path, tracking: dict[str, object], key: str, text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, settings={"tracking": tracking}))
    [problem] = caught.value.problems
    assert ".".join(map(str, problem.path)) == key and text in str(problem)
