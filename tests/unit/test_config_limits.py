"""policy: and sending_limits:, per list and per user: what the files say becomes config values,
``Config.limits_for`` resolves a user over the list over the defaults, and bad values are refused
with a hint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from smtpplus_milter.config import ConfigError, Policy, SendingLimits, load_config
from smtpplus_milter.config.values import SocketSpec
from smtpplus_milter.core.limits import Limits
from tests.support.builders import write_config

DEFAULTS = Limits(messages_per_hour=1000, recipients_per_message=100, recipients_per_day=10_000, bytes_per_day=2**31)
USERS: dict[str, Any] = {
    "Plain": {},  # no list, no override: the defaults
    "in-news": {"list": "news"},  # the list's
    "own": {"sending_limits": {"messages_per_hour": 5}},  # own key over the defaults
    "both": {"list": "news", "sending_limits": {"recipients_per_day": 7, "bytes_per_day": 0}},
    "in-shop": {"list": "shop"},  # a list without sending_limits
}
LISTS: dict[str, Any] = {
    "shop": {},
    "news": {"sending_limits": {"messages_per_hour": 50, "recipients_per_day": 500}},
}


def _load(directory: Path, settings: dict[str, Any] | None = None, users: dict[str, Any] | None = None) -> Any:
    main: dict[str, Any] = {"lists": LISTS}
    main.update(settings or {})
    return load_config(write_config(directory, settings=main, users=USERS if users is None else users))


def _problems(directory: Path, settings: dict[str, Any] | None = None, users: dict[str, Any] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        _load(directory, settings, users)
    return "\n".join(str(problem) for problem in caught.value.problems)


def test_defaults(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    assert not config.policy.enabled  # no policy: section, no policy daemon lines for Postfix
    assert config.postfix.policy_listen is None
    assert config.policy == Policy(SocketSpec.parse("unix:/var/spool/postfix/private/smtpplus-policy"))
    assert config.sending_limits.defaults == DEFAULTS
    assert (config.sending_limits.store, config.sending_limits.on_store_error) == ("memory", "tempfail")
    assert config.limits_for("shop-frontend") == DEFAULTS
    assert config.warnings == []


@pytest.mark.parametrize(
    ("login", "expected"),
    [
        pytest.param("plain", DEFAULTS, id="defaults"),
        pytest.param("PLAIN", DEFAULTS, id="login-case-insensitive"),
        pytest.param("in-news", Limits(50, 100, 500, 2**31), id="list-over-defaults"),
        pytest.param("own", Limits(5, 100, 10_000, 2**31), id="user-over-defaults"),
        pytest.param("both", Limits(50, 100, 7, 0), id="user-over-list-over-defaults"),
        pytest.param("in-shop", DEFAULTS, id="list-without-limits"),
        pytest.param("nobody", DEFAULTS, id="unknown-login"),
    ],
)
def test_limits_for(tmp_path: Path, login: str, expected: Limits) -> None:
    assert _load(tmp_path).limits_for(login) == expected


def test_every_key_of_the_section(tmp_path: Path) -> None:
    settings = {
        "policy": {"listen": "inet:127.0.0.1:10040"},
        "sending_limits": {
            "messages_per_hour": 10,
            "recipients_per_message": 2,
            "recipients_per_day": 30,
            "bytes_per_day": 4000,
            "store": "rediss://:secret@redis.example:6380/2",
            "on_store_error": "allow",
        },
    }
    config = _load(tmp_path, settings)
    assert config.policy.listen == SocketSpec("inet:127.0.0.1:10040", "inet", host="127.0.0.1", port=10040)
    assert config.policy.enabled
    assert config.postfix.policy_listen == config.policy.listen
    limits = config.sending_limits
    assert isinstance(limits, SendingLimits)
    assert limits.defaults == Limits(10, 2, 30, 4000)
    assert (limits.store, limits.on_store_error) == ("rediss://:secret@redis.example:6380/2", "allow")
    assert config.limits_for("in-news") == Limits(50, 2, 500, 4000)
    assert config.limits_for("both") == Limits(50, 2, 7, 0)


@pytest.mark.parametrize(
    "store",
    [
        pytest.param("redis://127.0.0.1:6379/0", id="loopback-db-0"),
        pytest.param("redis://localhost", id="no-port-no-db"),
        pytest.param("rediss://user:pw@[2001:db8::1]:6379/15", id="tls-ipv6"),
    ],
)
def test_store_urls_accepted(tmp_path: Path, store: str) -> None:
    assert _load(tmp_path, {"sending_limits": {"store": store}}).sending_limits.store == store


@pytest.mark.parametrize(
    ("settings", "users", "expected"),
    [
        pytest.param(
            {"sending_limits": {"messages_per_hour": -1}},
            None,
            "sending_limits.messages_per_hour: Input should be greater than or equal to 0 "
            "(hint: use a value inside the allowed range)",
            id="negative",
        ),
        pytest.param(
            {"sending_limits": {"bytes_per_day": "2G"}},
            None,
            "sending_limits.bytes_per_day: Input should be a valid integer (hint: check the value's type",
            id="not-an-int",
        ),
        pytest.param(
            {"sending_limits": {"recipients_per_day": 1.5}},
            None,
            "sending_limits.recipients_per_day: Input should be a valid integer",
            id="float",
        ),
        pytest.param(
            {"sending_limits": {"messages_per_minute": 5}},
            None,
            "sending_limits.messages_per_minute: unknown key 'messages_per_minute' (hint: allowed keys here: messages_per_hour, "
            "recipients_per_message, recipients_per_day, bytes_per_day, store, on_store_error)",
            id="unknown-key",
        ),
        pytest.param(
            {"sending_limits": {"store": "memcached://127.0.0.1"}},
            None,
            "neither memory nor a redis:// or rediss:// URL; give memory, or e.g. redis://127.0.0.1:6379/0",
            id="store-scheme",
        ),
        pytest.param(
            {"sending_limits": {"store": "redis://"}}, None, "'redis://' has no usable host and port", id="no-host"
        ),
        pytest.param(
            {"sending_limits": {"store": "redis://127.0.0.1:99999/0"}},
            None,
            "has no usable host and port",
            id="bad-port",
        ),
        pytest.param(
            {"sending_limits": {"store": "redis://127.0.0.1/zero"}},
            None,
            "the path must be a database number (e.g. /0)",
            id="bad-db",
        ),
        pytest.param({"sending_limits": {"store": "redis://127.0.0.1/0?timeout=1"}}, None, "has a query", id="query"),
        pytest.param(
            {"sending_limits": {"on_store_error": "accept"}},
            None,
            "sending_limits.on_store_error: Input should be 'tempfail' or 'allow' (hint: use one of the listed values)",
            id="on-store-error",
        ),
        pytest.param(
            {"policy": {"listen": "inet:10040"}},
            None,
            "policy.listen: 'inet:10040' is not a policy socket",
            id="no-host",
        ),
        pytest.param(
            {"lists": {"news": {"sending_limits": {"messages_per_hour": -5}}}},
            None,
            "lists.news.sending_limits.messages_per_hour: Input should be greater than or equal to 0",
            id="list-negative",
        ),
        pytest.param(
            {"lists": {"news": {"sending_limits": {"store": "memory"}}}},
            None,
            "lists.news.sending_limits.store: unknown key 'store' (hint: allowed keys here: messages_per_hour, "
            "recipients_per_message, recipients_per_day, bytes_per_day)",
            id="list-store",
        ),
        pytest.param(
            None,
            {"own": {"sending_limits": {"recipients_per_message": "many"}}},
            "own.sending_limits.recipients_per_message: Input should be a valid integer",
            id="user-not-an-int",
        ),
        pytest.param(
            None,
            {"own": {"sending_limits": {"per_hour": 5}}},
            "own.sending_limits.per_hour: unknown key 'per_hour' (hint: allowed keys here: messages_per_hour, ",
            id="user-unknown-key",
        ),
        pytest.param(
            None,
            {"own": {"sending_limits": {"bytes_per_day": 10**16}}},
            "own.sending_limits.bytes_per_day: Input should be less than or equal to 1000000000000000",
            id="user-too-large",
        ),
    ],
)
def test_refused(tmp_path: Path, settings: dict[str, Any] | None, users: dict[str, Any] | None, expected: str) -> None:
    assert expected in _problems(tmp_path, settings, users)


def test_a_user_may_set_zero(tmp_path: Path) -> None:
    # 0 is "none allowed", not "unlimited" and not "inherit".
    config = _load(tmp_path, users={"stopped": {"sending_limits": {"messages_per_hour": 0}}})
    assert config.limits_for("stopped").messages_per_hour == 0


@pytest.mark.parametrize(
    ("settings", "warning"),
    [
        pytest.param(
            {"sending_limits": {"store": "redis://10.0.0.5:6379/0"}},
            "sending_limits.store names the Redis server 10.0.0.5 over plain redis://",
            id="plain-redis-remote",
        ),
        pytest.param(
            {"policy": {"listen": "inet:192.0.2.7:10040"}},
            "policy.listen inet:192.0.2.7:10040 listens on 192.0.2.7, not on loopback",
            id="policy-exposed",
        ),
        pytest.param({"sending_limits": {"store": "redis://127.0.0.1:6379/0"}}, None, id="plain-redis-loopback"),
        pytest.param({"sending_limits": {"store": "rediss://10.0.0.5:6379/0"}}, None, id="tls-remote"),
        pytest.param({"policy": {"listen": "inet:10040@127.0.0.1"}}, None, id="policy-loopback"),
    ],
)
def test_warnings(tmp_path: Path, settings: dict[str, Any], warning: str | None) -> None:
    found = _load(tmp_path, settings).warnings
    assert [warning is not None and warning in w for w in found] == ([True] if warning else [])


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        pytest.param("unix:/run/p.sock", SocketSpec("unix:/run/p.sock", "unix", path=Path("/run/p.sock")), id="unix"),
        pytest.param(
            "inet:[::1]:10040", SocketSpec("inet:[::1]:10040", "inet", host="::1", port=10040), id="postfix-form-v6"
        ),
        pytest.param(
            "inet:10040@127.0.0.1",
            SocketSpec("inet:10040@127.0.0.1", "inet", host="127.0.0.1", port=10040),
            id="milter",
        ),
    ],
)
def test_policy_listen_forms(tmp_path: Path, listen: str, expected: SocketSpec) -> None:
    assert _load(tmp_path, {"policy": {"listen": listen}}).policy.listen == expected


def test_empty_policy_section_asks_for_the_daemon(tmp_path: Path) -> None:
    config = _load(tmp_path, {"policy": {}})
    assert config.policy == Policy(
        SocketSpec.parse("unix:/var/spool/postfix/private/smtpplus-policy"),
        enabled=True,
        idle_timeout_seconds=600,
        max_connections=1000,
    )
    assert config.postfix.policy_listen == config.policy.listen


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        pytest.param({"idle_timeout_seconds": 0}, "idle_timeout_seconds", id="idle-zero"),
        pytest.param({"max_connections": 0}, "max_connections", id="connections-zero"),
        pytest.param({"metrics_listen": "nowhere"}, "metrics_listen", id="metrics-listen"),
    ],
)
def test_policy_bounds_checked(tmp_path: Path, section: dict[str, Any], expected: str) -> None:
    assert expected in _problems(tmp_path, {"policy": section})
