"""tests/support builds what the loader builds: the tests on values and the tests on config files
judge the same users under the same policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpplus_milter.config.rules import rules_of
from smtpplus_milter.core.users import Check, Mode
from tests.support.builders import SHOP, config_with, directory, rules, shop_directory, user


@pytest.mark.parametrize(
    ("settings", "policy"),
    [
        pytest.param(None, {}, id="defaults"),
        pytest.param({"authorization": {"mode": "alert"}}, {"mode": "alert"}, id="alert-mode"),
        pytest.param({"authorization": {"check": ["header_from"]}}, {"checks": ["header_from"]}, id="checks"),
        pytest.param({"unknown_user": "pass"}, {"unknown_user": "pass"}, id="unknown-user"),
        pytest.param({"unauthenticated": "reject"}, {"unauthenticated": "reject"}, id="unauthenticated"),
        pytest.param(
            {"submission_daemon_names": ["ORIGINATING"]},
            {"submission_daemon_names": ["ORIGINATING"]},
            id="submission-daemon-names",
        ),
    ],
)
def test_shop_directory_equals_the_loaded_shop_users(
    tmp_path: Path, settings: dict[str, object] | None, policy: dict[str, object]
) -> None:
    loaded = config_with(tmp_path, settings=settings).directory
    built = shop_directory(**policy)
    assert built.policy == loaded.policy
    assert dict(built.users) == dict(loaded.users)


@pytest.mark.parametrize(
    ("settings", "changes"),
    [
        pytest.param(None, {}, id="defaults"),
        pytest.param(
            {"milter": {"socket": "unix:/run/m.sock", "on_internal_error": "accept"}},
            {"on_internal_error": "accept"},
            id="on-internal-error",
        ),
        pytest.param(
            {"authorization": {"display_name_spoofing": "log"}}, {"display_name_spoofing": "log"}, id="spoofing"
        ),
        pytest.param({"limits": {"max_message_bytes": 600_000}}, {"max_message_bytes": 600_000}, id="size-limit"),
        pytest.param(
            {"metrics": {"listen": None, "per_user_labels": False}}, {"per_user_labels": False}, id="per-user-labels"
        ),
    ],
)
def test_rules_equal_what_the_loaded_config_gives(
    tmp_path: Path, settings: dict[str, object] | None, changes: dict[str, object]
) -> None:
    loaded = rules_of(config_with(tmp_path, settings=settings))
    built = rules(**changes)  # type: ignore[arg-type]
    assert built == loaded
    assert dict(built.queues) == dict(loaded.queues) and dict(built.banners) == dict(loaded.banners)


def test_user_normalises_what_a_person_writes() -> None:
    built = user("Shop-Frontend", domains=["BÜCHER.example."], senders=["Sales@Other.Example"])
    assert (built.login, built.authorized_domains, built.authorized_senders) == (
        "shop-frontend",
        frozenset({"xn--bcher-kva.example"}),
        frozenset({"sales@other.example"}),
    )


def test_directory_defaults_are_the_config_defaults() -> None:
    policy = directory().policy
    assert (policy.mode, policy.checks, policy.unknown_user, policy.unauthenticated) == (
        Mode.BLOCK,
        frozenset(Check),
        "reject",
        "pass",
    )


def test_directory_refuses_a_login_twice() -> None:
    with pytest.raises(ValueError, match="two users with login 'app'"):
        directory(user("app"), user("APP"))
    assert directory(*SHOP).lookup("SHOP-FRONTEND") == SHOP[0]
