"""``smtpplus-milter follow``: the log follower daemon in the foreground (docs/tracking.md, "The follower").

The process around it (pid file, signals, stop) is :class:`smtpplus_milter.daemon.Daemon`'s; the
follower itself is :class:`smtpplus_milter.services.follower.Follower`. This module only joins them,
serves the follower's own metrics on ``tracking.metrics_listen`` and says how a loaded config becomes
the follower's settings (the nested ``tuning``), at start and on each SIGHUP
(:class:`~smtpplus_milter.services.follower.Reloader`).
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
    from smtpplus_milter.config import Config, load_config
    from smtpplus_milter.infra.spool import SpoolProblem, SpoolReader
    from smtpplus_milter.infra.suppression_file import NAME as SNAPSHOT_NAME
    from smtpplus_milter.infra.suppression_file import Writer as SnapshotWriter
    from smtpplus_milter.observe import log as logsetup
    from smtpplus_milter.observe.metrics import FollowerMetrics, serve_metrics
    from smtpplus_milter.services.follower import Follower, FollowerService, Reloader, Tuning
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
        worker = f"{tracking.node}:{os.getpid()}"  # the notifier's name on its outbox claims, kept by reloads

        def tuning(loaded: Config) -> Tuning:
            """What a config sets in a running follower (at start, and again on each SIGHUP)."""
            notify = loaded.notify
            notifier = None
            if notify.sender is not None or any(value.sender for value in loaded.list_notify.values()):
                notifier = Notifier(
                    None,
                    notify.smtp,
                    notify.sender or "",
                    worker,
                    count=lambda kind, result: metrics.notifications.labels(kind=kind, result=result).inc(),
                )
            retention = loaded.tracking.retention_days if loaded.tracking is not None else None
            return Tuning(loaded.bounces.policy, planner(plan_of(loaded)), notifier, retention)

        first = tuning(config)
        follower = Follower(
            tracking.store,
            tracking.node,
            tracking.maillog,
            metrics,
            retention_days=first.retention_days,
            spool=spool,
            policy=first.policy,
            on_outcome=first.on_outcome,
            notifier=first.notifier,
            snapshot=SnapshotWriter(tracking.spool_dir / SNAPSHOT_NAME),
        )
        # SIGHUP: the file is read again without printing (there is no terminal; problems are logged).
        reloader = Reloader(follower, config, load_config, tuning)
        details = {
            "maillog": str(tracking.maillog),
            "node": tracking.node,
            "metrics": str(tracking.metrics_listen),
            "spool": str(tracking.spool_dir),
        }
        return FollowerService(follower, details, reload=reloader)

    daemon = Daemon(
        log=logsetup.get_logger(),
        socket=None,
        pid_file=args.pid_file,
        drain_seconds=0.0,
        warnings=config.warnings,
        malloc_arenas=None,
    )
    return daemon.run(start)
