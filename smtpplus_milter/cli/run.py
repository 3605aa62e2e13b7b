"""``smtpplus-milter run``: the milter daemon in the foreground.

The process around it (socket probe, pid file, signals, drain) is :class:`smtpplus_milter.daemon.Daemon`'s;
the milter itself is :class:`smtpplus_milter.services.milter.MilterService`. This module only joins them.
"""

from __future__ import annotations

from pathlib import Path

from smtpplus_milter.cli.common import load_or_report
from smtpplus_milter.daemon import Daemon


def main(path: Path, pid_file: Path | None = None) -> int:
    config = load_or_report(path, create_secret=True)
    if config is None:
        return 1
    from smtpplus_milter.observe import log as logsetup

    # Imported here so check-config and the other commands work without libmilter loaded.
    from smtpplus_milter.services.milter import MilterService

    logsetup.configure(cache=True)
    daemon = Daemon(
        log=logsetup.get_logger(),
        socket=config.settings.milter.socket,
        pid_file=pid_file,
        drain_seconds=config.settings.milter.timeout,
        warnings=config.warnings,
    )
    return daemon.run(lambda: MilterService(config))
