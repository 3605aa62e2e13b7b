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


def _read(stream: BinaryIO) -> bytes:
    """At most one byte over the bound (so "too big" is known without holding more)."""
    return stream.read(MAX_REPORT_BYTES + 1)


def main(args: argparse.Namespace, stdin: BinaryIO | None = None, now: datetime | None = None) -> int:
    from smtpplus_milter.observe import log as logsetup

    logsetup.configure()
    log = logsetup.get_logger()
    raw = _read(stdin or sys.stdin.buffer)
    now = now or datetime.now(UTC)
    config = common.load_or_report(args.config, command="ingest", create_secret=True)
    if config is None:
        return EX_TEMPFAIL  # the operator fixes the config; Postfix keeps the report meanwhile
    if config.tracking is None:
        common.err(f"{common.PROGRAM} ingest: tracking is off in {config.path}: nothing to record reports in")
        return EX_TEMPFAIL
    from smtpplus_milter.infra.files import FileProblem
    from smtpplus_milter.infra.store import open_store
    from smtpplus_milter.services.ingest import ingest, quarantine

    directory = args.quarantine or Path(config.tracking.spool_dir).parent / "ingest-quarantine"
    try:
        if len(raw) > MAX_REPORT_BYTES:
            reason, queue_id = f"over {MAX_REPORT_BYTES} bytes", None
        else:
            store = open_store(config.tracking.store)
            try:
                store.migrate()
                result = ingest(raw, args.recipient, config, store, now)
            finally:
                store.close()
            reason, queue_id = result.reason, result.queue_id
            if result.complaints:
                _alert(config, result.complaints, result.queue_id)
            if result.status != "quarantined":
                log.info(
                    "report_ingested",
                    status=result.status,
                    queue_id=result.queue_id,
                    recipients=result.recipients,
                    recipient=args.recipient,
                )
                return EX_OK
        kept = quarantine(directory, raw[:MAX_REPORT_BYTES], reason, now)
        log.warning("report_quarantined", reason=reason, kept=str(kept), queue_id=queue_id, recipient=args.recipient)
        return EX_OK
    except FileProblem as exc:
        log.error("report_not_kept", reason=str(exc), recipient=args.recipient)
        return EX_TEMPFAIL
    except Exception as exc:  # the store down, a lock timeout...: Postfix retries, nothing is lost
        log.error("report_deferred", reason=f"{type(exc).__name__}: {str(exc)[:500]}", recipient=args.recipient)
        return EX_TEMPFAIL


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
