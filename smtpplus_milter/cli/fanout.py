"""``smtpplus-milter fanout``: the content filter that makes one copy per recipient (issue 15).

What it does per delivery and why: :mod:`smtpplus_milter.services.fanout` (and docs/fanout.md).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smtpplus_milter.cli import common


def add_parser(commands: Any, add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    fanout = commands.add_parser(
        "fanout",
        help="take tagged messages from Postfix over LMTP on fanout.listen and send each recipient a copy "
        "of their own to fanout.reinject (foreground; SIGHUP re-reads the config, SIGTERM drains and stops)",
    )
    add_config(fanout)
    fanout.add_argument("--pid-file", type=Path, default=None, metavar="FILE", help="write the process id here")


def main(args: argparse.Namespace) -> int:
    # create_secret: a list with unsubscribe needs the key for each copy's token.
    config = common.load_or_report(args.config, command="fanout", create_secret=True)
    if config is None:
        return 1
    from smtpplus_milter.config import load_config
    from smtpplus_milter.daemon import Daemon
    from smtpplus_milter.infra.fanout_journal import FanoutJournal, JournalError
    from smtpplus_milter.observe import log as logsetup
    from smtpplus_milter.observe.metrics import FanoutMetrics, serve_metrics
    from smtpplus_milter.services.fanout import FanoutHandler, FanoutService

    logsetup.configure(cache=True)
    log = logsetup.get_logger()
    settings = config.fanout
    try:
        journal = FanoutJournal(settings.journal)
    except JournalError as exc:
        common.err(
            f"{common.PROGRAM} fanout: {exc}: fanout.journal must be a file this user can create and write "
            "(its directory too: SQLite keeps a -wal file beside it)"
        )
        return 1
    metrics = FanoutMetrics()
    if settings.metrics_listen is not None:
        try:
            serve_metrics(settings.metrics_listen, metrics.registry)
        except OSError as exc:
            journal.close()
            common.err(
                f"{common.PROGRAM} fanout: cannot serve metrics on fanout.metrics_listen "
                f"{settings.metrics_listen}: {exc}"
            )
            return 1

    def start() -> FanoutService:
        handler = FanoutHandler(config, log, metrics, journal)
        return FanoutService(handler, lambda: load_config(args.config, create_secret=True), log)

    daemon = Daemon(
        log=log,
        socket=settings.listen,
        pid_file=args.pid_file,
        drain_seconds=0.0,  # the service drains itself before it returns (DRAIN_SECONDS)
        warnings=config.warnings,
        malloc_arenas=None,
    )
    return daemon.run(start)
