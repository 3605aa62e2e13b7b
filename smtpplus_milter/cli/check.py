"""``smtpplus-milter check-config``: validate the config and the users file, exit 1 on any problem."""

from __future__ import annotations

import sys
from pathlib import Path

from smtpplus_milter.cli.common import load_or_report


def main(path: Path) -> int:
    config = load_or_report(path)
    if config is None:
        return 1
    users = config.directory.users
    inactive = sum(1 for user in users.values() if not user.active)
    for warning in config.warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    print(
        f"OK: {config.path} and {config.users_path}: {len(users)} users ({inactive} inactive), "
        f"{len(config.settings.lists)} lists, milter socket {config.settings.milter.socket}"
    )
    return 0
