"""``smtpplus-milter preempt`` (the daemon) and ``smtpplus-milter queue status`` (docs/priority.md, "Preemption").

What the daemon decides and how it acts: :mod:`smtpplus_milter.services.preempt`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from smtpplus_milter.cli import common


def add_parsers(commands: Any, add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    preempt = commands.add_parser(
        "preempt",
        help="pause the priority.preempt.pause queues while high mail waits or is being delivered, and resume "
        "them in arrival order after it (foreground, as root; SIGHUP re-reads pause and resume_after_seconds, "
        "SIGTERM releases what it holds and stops)",
    )
    add_config(preempt)
    preempt.add_argument("--pid-file", type=Path, default=None, metavar="FILE", help="write the process id here")
    queue = commands.add_parser("queue", help="Postfix's queue as SMTP+ sees it")
    actions = queue.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
    status = actions.add_parser(
        "status",
        help="messages per queue (high/normal/low; incoming, active, deferred, hold) and what is paused (as root)",
    )
    add_config(status)
    status.add_argument(
        "--postfix-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="the Postfix instance's config directory "
        "(default: priority.preempt.postfix_config_dir, else /etc/postfix)",
    )
    status.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")


def main(args: argparse.Namespace) -> int:
    if args.command == "queue":
        return status_main(args)
    return preempt_main(args)


def preempt_main(args: argparse.Namespace) -> int:
    config = common.load_or_report(args.config, command="preempt")
    if config is None:
        return 1
    settings = config.preempt
    if settings is None:
        common.err(
            f"{common.PROGRAM} preempt: priority.preempt is not set in {config.path}: add e.g. "
            "'priority: {preempt: {pause: [low], resume_after_seconds: 5}}' (docs/priority.md)"
        )
        return 1
    from smtpplus_milter.config import load_config
    from smtpplus_milter.daemon import Daemon, StartupFailed
    from smtpplus_milter.infra.postfix_queue import PostfixCommandError
    from smtpplus_milter.observe import log as logsetup
    from smtpplus_milter.observe.metrics import PreemptMetrics, serve_metrics
    from smtpplus_milter.services.preempt import Preempter, PreemptService, StateFileError

    logsetup.configure(cache=True)

    def start() -> PreemptService:
        metrics = PreemptMetrics()
        try:
            preempter = Preempter(settings, metrics)
        except (PostfixCommandError, StateFileError, PermissionError) as exc:
            raise StartupFailed(str(exc)) from None
        if settings.metrics_listen is not None:
            try:
                serve_metrics(settings.metrics_listen, metrics.registry)
            except OSError as exc:
                raise StartupFailed(
                    f"cannot serve metrics on priority.preempt.metrics_listen {settings.metrics_listen} "
                    f"({exc.strerror})"
                ) from exc
        details = {
            "postfix": str(settings.postfix_config_dir),
            "queue_directory": str(preempter.queue_dir),
            "pause": sorted(settings.pause),
            "resume_after_seconds": settings.resume_after_seconds,
            "state_file": str(settings.state_file),
            "held": len(preempter.state.held),
        }
        return PreemptService(preempter, lambda: load_config(args.config), details)

    daemon = Daemon(
        log=logsetup.get_logger(),
        socket=None,
        pid_file=args.pid_file,
        drain_seconds=0.0,
        warnings=config.warnings,
        malloc_arenas=None,
    )
    return daemon.run(start)


def status_main(args: argparse.Namespace) -> int:
    config = common.load_or_report(args.config, command="queue status")
    if config is None:
        return 1
    from smtpplus_milter.infra.postfix_queue import PostfixCommandError, PostfixTools
    from smtpplus_milter.services.preempt import StateFileError, queue_status

    settings = config.preempt
    postfix_dir = args.postfix_dir or (settings.postfix_config_dir if settings is not None else Path("/etc/postfix"))
    try:
        status = queue_status(PostfixTools(postfix_dir), settings, time.time())
    except (PostfixCommandError, StateFileError, PermissionError) as exc:
        common.err(f"{common.PROGRAM} queue status: {exc}")
        return 1
    if args.format == "json":
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    rows = [("QUEUE", "MESSAGES", "HELD", "PAUSED")]
    for name, entry in status["queues"].items():
        rows.append((name, str(entry["messages"]), str(entry["held"]), "yes" if entry["paused"] else "no"))
    common.print_table(rows)
    postfix = status["postfix"]
    print(
        f"\nPostfix: incoming {postfix['incoming']}, active {postfix['active']}, deferred {postfix['deferred']}, "
        f"hold {postfix['hold']} ({status['held_by_preempt']} held by preemption); "
        f"{status['other']} other message(s) (not SMTP+ mail)"
    )
    preempt = status["preempt"]
    if not preempt["configured"]:
        print("Preemption: off (no priority.preempt)")
    elif preempt["paused_since"] is not None:
        since = datetime.fromtimestamp(preempt["paused_since"], UTC).isoformat(timespec="seconds")
        print(f"Preemption: paused since {since} (high mail waiting or being delivered)")
    else:
        print("Preemption: not paused")
    return 0
