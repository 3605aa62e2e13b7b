"""Shared test inputs: core values built directly, and config files written and loaded for real.

The pure core (users, authorization, priority, explain) is tested on values: :func:`user`,
:func:`directory`, :func:`shop_directory` and :func:`rules` build them the way the loader would,
normalising logins, domains and senders with the core's own functions. :func:`write_config` and
:func:`config_with` are for the tests that are about loading a config file, or that run the
milter or a command on one. ``SHOP_USERS`` (the users file) and :data:`SHOP` (the same users as
values) describe one set of example users; tests/unit/test_support.py holds them equal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml

from smtpplus_milter.config import Config, load_config
from smtpplus_milter.core.addresses import normalize_address, normalize_domain
from smtpplus_milter.core.session import Rules
from smtpplus_milter.core.tracking import MessageRecord
from smtpplus_milter.core.users import AuthPolicy, Check, Directory, Mode, User, normalize_login
from smtpplus_milter.mime.footer import Banner

# The queue of each priority when the config names none (priority.queues).
QUEUES: Mapping[int, str] = MappingProxyType({1: "high", 2: "high", 3: "normal", 4: "low", 5: "low"})
# limits.max_message_bytes when the config sets none.
MAX_MESSAGE_BYTES = 20 * 1024 * 1024


def user(
    login: str = "app",
    *,
    domains: Iterable[str] = (),
    senders: Iterable[str] = (),
    active: bool = True,
    priority: int = 3,
    list: str | None = None,
    note: str = "",
    pending_domains: Iterable[str] = (),
    pending_senders: Iterable[str] = (),
) -> User:
    """One SMTP+ user; domains and senders are given as a person writes them and normalised here."""
    return User(
        login=normalize_login(login),
        active=active,
        priority=priority,
        list=list,
        note=note,
        authorized_domains=frozenset(normalize_domain(item) for item in domains),
        authorized_senders=frozenset(str(normalize_address(item)) for item in senders),
        pending_domains=frozenset(normalize_domain(item) for item in pending_domains),
        pending_senders=frozenset(str(normalize_address(item)) for item in pending_senders),
    )


def directory(
    *users: User,
    mode: str = "block",
    checks: Iterable[str] = tuple(Check),
    unknown_user: str = "reject",
    unauthenticated: str = "pass",
    submission_daemon_names: Iterable[str] = (),
) -> Directory:
    """The users by login with the policy around them; the defaults are the config file's defaults."""
    by_login: dict[str, User] = {}
    for item in users:
        if item.login in by_login:
            raise ValueError(f"two users with login {item.login!r}: logins are case-insensitive, give each once")
        by_login[item.login] = item
    policy = AuthPolicy(
        mode=Mode(mode),
        checks=frozenset(Check(item) for item in checks),
        unknown_user=unknown_user,
        unauthenticated=unauthenticated,
        submission_daemon_names=frozenset(submission_daemon_names),
    )
    return Directory(MappingProxyType(by_login), policy)


# The example users of SHOP_USERS below, as values.
SHOP: tuple[User, ...] = (
    user(
        "shop-frontend",
        priority=3,
        list="shop",
        note="Magento order mails",
        domains=("yourcompany.com", "marketing.yourcompany.com", "bücher.example"),
        senders=("info@partner.example", "Sales@Other.Example"),
    ),
    user("open-user", note="no restriction at all"),
    user("disabled-user", active=False, domains=("yourcompany.com",)),
    user("pending-user", domains=("a.example",), pending_senders=("new@b.example",)),
)


def shop_directory(**policy: Any) -> Directory:
    """The example users with the given policy (keyword arguments of :func:`directory`)."""
    return directory(*SHOP, **policy)


def rules(
    directory: Directory | None = None,
    *,
    queues: Mapping[int, str] = QUEUES,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    banners: Mapping[str, Banner] | None = None,
    on_internal_error: Literal["tempfail", "accept"] = "tempfail",
    display_name_spoofing: Literal["alert", "log", "off"] = "alert",
    per_user_labels: bool = True,
) -> Rules:
    """What a message is judged by; the example users and the config file's defaults unless given."""
    return Rules(
        shop_directory() if directory is None else directory,
        queues,
        max_message_bytes=max_message_bytes,
        banners=MappingProxyType(dict(banners or {})),
        on_internal_error=on_internal_error,
        display_name_spoofing=display_name_spoofing,
        per_user_labels=per_user_labels,
    )


SHOP_USERS: dict[str, Any] = {
    "shop-frontend": {
        "active": True,
        "priority": 3,
        "list": "shop",
        "note": "Magento order mails",
        "authorized_domains": "yourcompany.com;marketing.yourcompany.com;bücher.example",
        "authorized_senders": "info@partner.example;Sales@Other.Example",
    },
    "open-user": {"note": "no restriction at all"},
    "disabled-user": {"active": False, "authorized_domains": "yourcompany.com"},
    "pending-user": {"authorized_domains": "a.example", "pending_senders": "new@b.example"},
}


def write_config(
    directory: Path,
    *,
    settings: dict[str, Any] | None = None,
    users: dict[str, Any] | None = None,
) -> Path:
    main: dict[str, Any] = {
        "milter": {"socket": f"unix:{directory}/milter.sock"},
        "metrics": {"listen": None},
        "lists": {"shop": {}},
        "users_file": "users.yaml",
    }
    for key, value in (settings or {}).items():
        main[key] = value
    path = directory / "smtpplus.yaml"
    path.write_text(yaml.safe_dump(main, allow_unicode=True, sort_keys=False), encoding="utf-8")
    (directory / "users.yaml").write_text(
        yaml.safe_dump(SHOP_USERS if users is None else users, allow_unicode=True, sort_keys=False), encoding="utf-8"
    )
    return path


def config_with(directory: Path, **kwargs: Any) -> Config:
    return load_config(write_config(directory, **kwargs))


def message_record(queue_id: str = "4jdfvM0wYyzJVF1", **changes: Any) -> MessageRecord:
    """A tracking record of an accepted message from the example user (fields as keywords)."""
    values: dict[str, Any] = {
        "node": "relay-1",
        "queue_id": queue_id,
        "user": "shop-frontend",
        "list": "shop",
        "envelope_from": "info@yourcompany.com",
        "header_from": "info@yourcompany.com",
        "subject": "Order",
        "message_id": f"<{queue_id}@yourcompany.com>",
        "size": 1234,
        "priority": 3,
        "queue": "normal",
        "accepted_at": datetime(2026, 12, 1, 3, 0, tzinfo=UTC),
        "recipients": ("a@example.org",),
    }
    values.update(changes)
    return MessageRecord(**values)
