"""``smtpplus-milter ingest``: Postfix's pipe transport hands one returned report on stdin.

What it does and why each exit status: :mod:`smtpplus_milter.services.ingest` (and docs/bounces.md).
In short: 0 recorded or kept in quarantine, 75 (EX_TEMPFAIL, Postfix tries again later) whenever
the report could not be recorded for a reason that may pass: the store, the config, a full disk.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from smtpplus_milter.cli import common
from smtpplus_milter.config import Config
from smtpplus_milter.core.reports import MAX_REPORT_BYTES

EX_OK = 0
EX_TEMPFAIL = 75  # sysexits.h: Postfix's pipe defers the message and runs ingest again later


def add_parser(commands: Any, add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    ingest = commands.add_parser(
        "ingest", help="record one bounce or complaint report read from stdin (Postfix's pipe transport runs it)"
    )
    add_config(ingest)
    ingest.add_argument(
        "--recipient", metavar="ADDR", help="the address it was sent to, b+TOKEN@<bounces.return_path> (${recipient})"
    )
    ingest.add_argument(
        "--quarantine",
        type=Path,
        metavar="DIR",
        help="where reports that cannot be used are kept (default: ingest-quarantine beside tracking.spool_dir)",
    )
    ingest.add_argument(
        "--serve",
        action="store_true",
        help="instead of one report on stdin, take reports over LMTP on bounces.ingest_listen until SIGTERM "
        "(foreground; SIGHUP re-reads the config)",
    )
    ingest.add_argument(
        "--pid-file", type=Path, default=None, metavar="FILE", help="with --serve: write the process id here"
    )


def _read(stream: BinaryIO) -> bytes:
    """At most one byte over the bound (so "too big" is known without holding more)."""
    return stream.read(MAX_REPORT_BYTES + 1)


def main(args: argparse.Namespace, stdin: BinaryIO | None = None, now: datetime | None = None) -> int:
    if args.serve:
        return serve(args)
    from smtpplus_milter.observe import log as logsetup

    logsetup.configure()
    log = logsetup.get_logger()
    raw = _read(stdin or sys.stdin.buffer)
    now = now or datetime.now(UTC)
    config = common.load_or_report(args.config, command="ingest", create_secret=True)
    if config is None:
        return EX_TEMPFAIL  # the operator fixes the config; Postfix keeps the report meanwhile
    tracking = config.tracking
    if tracking is None:
        common.err(f"{common.PROGRAM} ingest: tracking is off in {config.path}: nothing to record reports in")
        return EX_TEMPFAIL
    from smtpplus_milter.infra.store import TrackingStore, open_store
    from smtpplus_milter.services.ingest import quarantine_dir, take

    opened: list[TrackingStore] = []

    def store() -> TrackingStore:
        opened.append(open_store(tracking.store))
        opened[0].migrate()
        return opened[0]

    try:
        taken = take(raw, args.recipient, config, store, quarantine_dir(config, args.quarantine), now)
    finally:
        for each in opened:
            each.close()
    if taken.complaints:
        _alert(config, taken.complaints, taken.queue_id)
    level = log.error if taken.retry else log.warning if taken.event == "report_quarantined" else log.info
    level(taken.event, **taken.fields)
    return EX_TEMPFAIL if taken.retry else EX_OK


def serve(args: argparse.Namespace) -> int:
    """``ingest --serve``: the LMTP door (services/ingest_lmtp.py) run by the shared daemon lifecycle."""
    config = common.load_or_report(args.config, command="ingest", create_secret=True)
    if config is None:
        return 1
    listen = config.bounces.ingest_listen
    if config.tracking is None or listen is None:
        missing = "tracking is off" if config.tracking is None else "bounces.ingest_listen is not set"
        common.err(
            f"{common.PROGRAM} ingest --serve: {missing} in {config.path}: set bounces.ingest_listen (e.g. "
            "unix:/run/smtpplus/ingest.sock) with tracking on, or let Postfix's pipe run `ingest` (docs/bounces.md)"
        )
        return 1
    from smtpplus_milter.config import load_config
    from smtpplus_milter.daemon import Daemon
    from smtpplus_milter.observe import log as logsetup
    from smtpplus_milter.observe.alerts import AlertDispatcher
    from smtpplus_milter.services.ingest_lmtp import IngestHandler, IngestService

    logsetup.configure(cache=True)
    log = logsetup.get_logger()

    def alerts_of(config: Config) -> AlertDispatcher:
        return AlertDispatcher.from_config(config.settings.alerts)

    def start() -> IngestService:
        handler = IngestHandler(config, log, quarantine=args.quarantine, alerts=alerts_of(config))
        return IngestService(listen, handler, lambda: load_config(args.config, create_secret=True), log, alerts_of)

    daemon = Daemon(
        log=log,
        socket=listen,
        pid_file=args.pid_file,
        drain_seconds=0.0,  # the service drains itself before it returns (DRAIN_SECONDS)
        warnings=config.warnings,
        malloc_arenas=None,
    )
    return daemon.run(start)


def _alert(config: Config, complaints: tuple[tuple[str, str, str], ...], queue_id: str | None) -> None:
    """SMTPPlusComplaint through the configured alert sinks (best effort: the report is recorded)."""
    from smtpplus_milter.observe.alerts import COMPLAINT, Alert, AlertDispatcher

    dispatcher = AlertDispatcher.from_config(config.settings.alerts)
    try:
        for user, recipient, feedback in complaints:
            mode = config.settings.authorization.mode
            dispatcher.submit(Alert(COMPLAINT, user, recipient, "recipient", mode, "delivered", feedback, queue_id))
    finally:
        dispatcher.stop(timeout=10.0)
