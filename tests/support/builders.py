"""Shared test helpers: write a config + users file and load them through the real loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from smtpplus_milter.config import Config, load_config

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
