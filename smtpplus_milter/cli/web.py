"""``smtpplus-milter web``: the unsubscribe endpoint behind the operator's TLS proxy (issue 16).

What it answers and why: :mod:`smtpplus_milter.services.web` (and docs/unsubscribe.md, "The web
endpoint").
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smtpplus_milter.cli import common


def add_parser(commands: Any, add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    web = commands.add_parser(
        "web",
        help="serve the unsubscribe links (POST /u/TOKEN one-click, GET the confirm page) on web.listen "
        "(foreground; SIGHUP re-reads the config, SIGTERM drains and stops)",
    )
    add_config(web)
    web.add_argument("--pid-file", type=Path, default=None, metavar="FILE", help="write the process id here")


def main(args: argparse.Namespace) -> int:
    # The key of the tokens is created if this is the first process that needs it (like run and ingest).
    config = common.load_or_report(args.config, command="web", create_secret=True)
    if config is None:
        return 1
    if config.web is None or config.tracking is None:
        common.err(
            f"{common.PROGRAM} web: no web: section in {config.path}: add one (web: {{listen: 127.0.0.1:8025}}) "
            "with tracking on, and put the TLS proxy in front of it (docs/unsubscribe.md)"
        )
        return 1
    from smtpplus_milter.config import SocketSpec, load_config
    from smtpplus_milter.daemon import Daemon, StartupFailed
    from smtpplus_milter.observe import log as logsetup
    from smtpplus_milter.observe.metrics import WebMetrics, serve_metrics
    from smtpplus_milter.services.web import Site, StoreWriter, WebApp, WebService

    logsetup.configure(cache=True)
    log = logsetup.get_logger()
    web, store = config.web, config.tracking.store
    metrics = WebMetrics()
    if web.metrics_listen is not None:
        try:
            serve_metrics(web.metrics_listen, metrics.registry)
        except OSError as exc:
            common.err(f"{common.PROGRAM} web: cannot serve metrics on web.metrics_listen {web.metrics_listen}: {exc}")
            return 1

    def count(list_name: str, source: str) -> None:
        metrics.unsubscribes.labels(list=list_name, source=source).inc()

    def start() -> WebService:
        writer = StoreWriter(store, log)
        app = WebApp(Site.from_config(config), writer, log, count)
        try:
            return WebService(web.listen, app, writer, lambda: load_config(args.config, create_secret=True), log)
        except OSError as exc:
            writer.close()
            raise StartupFailed(f"cannot listen on web.listen {web.listen}: {exc.strerror or exc}") from exc

    daemon = Daemon(
        log=log,
        # The start-up probe: another process answering on web.listen is refused before binding.
        socket=SocketSpec.parse(f"inet:{web.listen.port}@{web.listen.host}"),
        pid_file=args.pid_file,
        drain_seconds=0.0,  # the service drains itself before it returns (DRAIN_SECONDS)
        warnings=config.warnings,
        socket_group=None,
        malloc_arenas=None,
    )
    return daemon.run(start)
