"""Helpers every command shares: loading the config with its problems printed, error lines."""

from __future__ import annotations

import sys
from pathlib import Path

from smtpplus_milter.config import Config, ConfigError, load_config


def load_or_report(path: Path) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"smtpplus-milter: {len(exc.problems)} problem(s) in the configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None
