"""What more than one command shares: loading the config with its problems printed, error lines."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from smtpplus_milter.config import Config, ConfigError, ConfigProblem, load_config

PROGRAM = "smtpplus-milter"


def err(text: str) -> None:
    print(text, file=sys.stderr)


def report_problems(problems: Sequence[ConfigProblem], *, command: str = "", headline: str = "") -> None:
    """``smtpplus-milter[ COMMAND]: HEADLINE:`` and one indented line per problem, on stderr."""
    prefix = f"{PROGRAM} {command}" if command else PROGRAM
    err(f"{prefix}: {headline or f'{len(problems)} problem(s) in the configuration'}:")
    for problem in problems:
        err(f"  {problem}")


def load_or_report(path: Path, *, command: str = "", headline: str = "") -> Config | None:
    """The configuration at *path*, or None after its problems were printed (see :func:`report_problems`)."""
    try:
        return load_config(path)
    except ConfigError as exc:
        report_problems(exc.problems, command=command, headline=headline)
        return None
