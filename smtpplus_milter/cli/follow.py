"""``smtpplus-milter follow``: the log follower daemon in the foreground (docs/tracking.md, "The follower").

The process around it (pid file, signals, stop) is :class:`smtpplus_milter.daemon.Daemon`'s; the
follower itself is :class:`smtpplus_milter.services.follower.Follower`. This module only joins them
and serves the follower's own metrics on ``tracking.metrics_listen``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smtpplus_milter.cli import common
from smtpplus_milter.daemon import Daemon, StartupFailed


def add_parser(commands: Any, add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    follow = commands.add_parser(
        "follow", help="follow Postfix's log into the tracking store (foreground; SIGTERM saves and stops)"
    )
    add_config(follow)
    follow.add_argument(
        "--pid-file", type=Path, default=None, metavar="FILE", help="write the process id here (default: none)"
    )


def main(args: argparse.Namespace) -> int:
    config = common.load_or_report(args.config)
    if config is None:
        return 1
    tracking = config.tracking
    if tracking is None:
        common.err(
            f"{common.PROGRAM}: tracking is off in {config.path}: add a tracking: section with its store and "
            "maillog (docs/tracking.md)"
        )
        return 1
    from smtpplus_milter.infra.spool import SpoolProblem, SpoolReader
    from smtpplus_milter.infra.suppression_file import NAME as SNAPSHOT_NAME
    from smtpplus_milter.infra.suppression_file import Writer as SnapshotWriter
    from smtpplus_milter.observe import log as logsetup
    from smtpplus_milter.observe.metrics import FollowerMetrics, serve_metrics
    from smtpplus_milter.services.follower import Follower, FollowerService
    from smtpplus_milter.services.notifier import Notifier, plan_of, planner

    logsetup.configure(cache=True)

    def start() -> FollowerService:
        metrics = FollowerMetrics()
        if tracking.metrics_listen is not None:
            try:
                serve_metrics(tracking.metrics_listen, metrics.registry)
            except OSError as exc:
                raise StartupFailed(
                    f"cannot serve metrics on {tracking.metrics_listen} ({exc.strerror}): another process uses "
                    "it? change tracking.metrics_listen"
                ) from exc
        try:
            # The milter's records come through this spool: the milter appends, the follower stores.
            spool = SpoolReader(tracking.spool_dir)
        except SpoolProblem as exc:
            raise StartupFailed(str(exc)) from None
        plan = plan_of(config)
        notifier = None
        if config.notify.sender is not None or any(value.sender for value in config.list_notify.values()):
            notifier = Notifier(
                None,
                config.notify.smtp,
                config.notify.sender or "",
                f"{tracking.node}:{os.getpid()}",
                count=lambda kind, result: metrics.notifications.labels(kind=kind, result=result).inc(),
            )
        follower = Follower(
            tracking.store,
            tracking.node,
            tracking.maillog,
            metrics,
            retention_days=tracking.retention_days,
            spool=spool,
            policy=config.bounces.policy,
            on_outcome=planner(plan),
            notifier=notifier,
            snapshot=SnapshotWriter(tracking.spool_dir / SNAPSHOT_NAME),
        )
        details = {
            "maillog": str(tracking.maillog),
            "node": tracking.node,
            "metrics": str(tracking.metrics_listen),
            "spool": str(tracking.spool_dir),
        }
        return FollowerService(follower, details)

    daemon = Daemon(
        log=logsetup.get_logger(),
        socket=None,
        pid_file=args.pid_file,
        drain_seconds=0.0,
        warnings=config.warnings,
        malloc_arenas=None,
    )
    return daemon.run(start)
