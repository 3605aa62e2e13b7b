"""``smtpplus-milter policyd``: answer Postfix's check_policy_service (docs/limits.md).

What it decides and how it serves: :mod:`smtpplus_milter.services.policyd`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smtpplus_milter.cli import common


def add_parser(commands: Any, add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    policyd = commands.add_parser(
        "policyd",
        help="answer Postfix's policy queries: refuse unknown users, unauthorized senders and suppressed "
        "recipients at RCPT, enforce the sending limits at end of data (foreground; SIGHUP reloads, "
        "SIGTERM stops)",
    )
    add_config(policyd)
    policyd.add_argument("--pid-file", type=Path, default=None, metavar="FILE", help="write the process id here")


def main(args: argparse.Namespace) -> int:
    config = common.load_or_report(args.config, command="policyd")
    if config is None:
        return 1
    from smtpplus_milter.daemon import Daemon, StartupFailed
    from smtpplus_milter.observe import log as logsetup
    from smtpplus_milter.observe.alerts import AlertDispatcher
    from smtpplus_milter.observe.metrics import serve_metrics
    from smtpplus_milter.services.policyd import PolicyService, inherited_sockets

    logsetup.configure(cache=True)
    # systemd's socket activation (the shipped unit): the sockets are made by systemd, as root,
    # where this user could not create them; otherwise policy.listen is bound here.
    inherited = inherited_sockets()

    def start() -> PolicyService:
        alerts = AlertDispatcher.from_config(config.settings.alerts)
        try:
            service = PolicyService(config, listeners=inherited or None, alerts=alerts)
        except ValueError as exc:  # e.g. a store URL redis-py cannot use
            alerts.stop(0)
            raise StartupFailed(f"sending_limits.store: {exc}") from None
        # The alerts count into the same registry the endpoint serves.
        alerts.metrics = service.metrics
        listen = config.policy.metrics_listen
        if listen is not None:
            try:
                serve_metrics(listen, service.metrics.registry)
            except OSError as exc:
                service.close()
                raise StartupFailed(f"cannot serve metrics on policy.metrics_listen {listen} ({exc.strerror})") from exc
        return service

    daemon = Daemon(
        log=logsetup.get_logger(),
        socket=None if inherited else config.policy.listen,
        pid_file=args.pid_file,
        # After SIGTERM idle connections close at once; one in the middle of a request gets its answer.
        drain_seconds=10.0,
        warnings=config.warnings,
        malloc_arenas=None,
    )
    return daemon.run(start)
