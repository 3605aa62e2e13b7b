"""What more than one command group shares: loading the config with its problems printed, error
lines, the table printer, the audit trail, the ``--reload`` and ``--allow-any-sender`` options and
the words for what a reload, a widened user or a started verification did.

Every other module of this package imports only this one (``__init__`` assembles the parser).
"""

from __future__ import annotations

import argparse
import csv
import getpass
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from smtpplus_milter.admin import reload as reloading
from smtpplus_milter.admin.errors import Refused
from smtpplus_milter.admin.store import PartialWrite, WouldNotValidate
from smtpplus_milter.admin.verification import Started
from smtpplus_milter.config import Config, ConfigError, ConfigProblem, load_config
from smtpplus_milter.core.users import User
from smtpplus_milter.infra.files import FileProblem
from smtpplus_milter.infra.passwd import PasswdProblem
from smtpplus_milter.infra.store import StoreProblem, TrackingStore, open_store
from smtpplus_milter.infra.usersfile import ALLOW_ANY_SENDER, EditProblem

PROGRAM = "smtpplus-milter"
# The headline of a config that does not validate before a command that would change the files.
FIX_FIRST = "the configuration does not validate; fix it first (nothing was changed)"
WOULD_NOT_VALIDATE = (
    "the users file would not validate after this change (line numbers as the file would be); nothing was changed"
)
NOT_RUNNING = "note: no running milter found; it reads the new users file when it starts"


def err(text: str) -> None:
    print(text, file=sys.stderr)


# --- the configuration ---------------------------------------------------------------------------


def report_problems(problems: Sequence[ConfigProblem], *, command: str = "", headline: str = "") -> None:
    """``smtpplus-milter[ COMMAND]: HEADLINE:`` and one indented line per problem, on stderr."""
    prefix = f"{PROGRAM} {command}" if command else PROGRAM
    err(f"{prefix}: {headline or f'{len(problems)} problem(s) in the configuration'}:")
    for problem in problems:
        err(f"  {problem}")


def load_or_report(path: Path, *, command: str = "", headline: str = "", create_secret: bool = False) -> Config | None:
    """The configuration at *path*, or None after its problems were printed (see :func:`report_problems`).

    *create_secret*: a needed ``secret_file`` that does not exist yet is made (``run``, ``ingest``).
    """
    try:
        return load_config(path, create_secret=create_secret)
    except ConfigError as exc:
        report_problems(exc.problems, command=command, headline=headline)
        return None


def guarded(command: str, action: Callable[[], int]) -> int:
    """Run a command that changes the users files; its refusals become one error line and exit 1."""
    try:
        return action()
    except Refused as exc:
        err(f"{PROGRAM} {command}: {exc}")
    except ConfigError as exc:  # the files as they are now, read again under their locks
        report_problems(exc.problems, command=command, headline=FIX_FIRST)
    except WouldNotValidate as exc:
        report_problems(exc.problems, command=command, headline=WOULD_NOT_VALIDATE)
    except PartialWrite as exc:
        err(f"{PROGRAM} {command}: {exc}")
    except (FileProblem, EditProblem, PasswdProblem) as exc:
        err(f"{PROGRAM} {command}: {exc}; nothing was changed")
    return 1


# --- printing ------------------------------------------------------------------------------------


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Columns padded to their widest cell; the last one (free text) is not padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])


def audit_event(event: str, **fields: Any) -> None:
    """A structured log line (stderr: JSON, or key=value on a terminal) for the audit trail."""
    from smtpplus_milter.observe import log as logsetup

    logsetup.configure()
    operator = os.environ.get("SUDO_USER") or getpass.getuser()
    logsetup.get_logger().info(event, operator=operator, **fields)


def any_sender_chosen(users: Iterable[User], command: str) -> None:
    """Say and log that the operator let *users* send as any sender (``--allow-any-sender``)."""
    for user in users:
        err(
            f"note: {user.login} may now send as ANY sender: it has no authorized or pending domains or senders "
            f"left ({ALLOW_ANY_SENDER} given); logged"
        )
        audit_event("any_sender_allowed", user=user.login, command=command)


def report_started(started: Started) -> None:
    """What the verification that just started needs from the operator, and its audit line."""
    login, entry = started.login, started.entry
    if started.kind == "domain":
        print(f"Domain {entry} of SMTP+ user {login}: ask the domain's owner to publish this DNS record")
        print(f"  {started.record}")
        print(f"then run: smtpplus-milter verify check {login} {entry}")
        audit_event("verification_started", user=login, domain=entry)
        return
    assert started.expires is not None
    hours = started.ttl_hours
    expires = datetime.fromtimestamp(started.expires, UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"A verification code was e-mailed to {entry} (from {started.sender}); it is valid for {hours} hours,")
    print(f"until {expires}, and can be used once. When the recipient tells you the code, run:")
    print(f"  smtpplus-milter verify confirm {login} {entry} CODE")
    audit_event("verification_started", user=login, sender=entry, expires=started.expires)


# --- options -------------------------------------------------------------------------------------


def allow_any_sender_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        ALLOW_ANY_SENDER,
        action="store_true",
        help="accept that the user is left with no authorized or pending domains or senders, so that it may "
        "send as ANY sender; without it, a change that would do that to a restricted user is refused",
    )


def reload_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reload", action="store_true", help="tell the running milter to reread the users file (SIGHUP)"
    )
    parser.add_argument(
        "--pid-file",
        type=Path,
        default=reloading.DEFAULT_PID_FILE,
        metavar="FILE",
        help="the pid file 'smtpplus-milter run --pid-file' writes (default %(default)s)",
    )


# --- reloading the milter ------------------------------------------------------------------------


def reload_milter(args: argparse.Namespace, config: Config) -> None:
    """After a change of the users file: SIGHUP the milter (``--reload``), or say what to do."""
    socket = reloading.milter_socket(config)
    pid_file: Path = args.pid_file
    hint = reloading.RELOAD_HINT
    if not args.reload:
        # The hint only where there is something to reload: right after the install (milter not
        # started yet) it sent the operator to a reload that fails.
        if reloading.seems_running(pid_file, socket):
            err(f"note: the running milter keeps the old users file until it reloads: {hint} (or pass --reload)")
        else:
            err(NOT_RUNNING)
        return
    done = reloading.reload(pid_file, socket)
    outcome, pid = done.outcome, done.pid
    if outcome is reloading.Outcome.SENT:
        err(f"reload: sent SIGHUP to the milter (pid {pid}): {done.proof}")
    elif outcome is reloading.Outcome.NOT_RUNNING:
        err(NOT_RUNNING)
    elif outcome is reloading.Outcome.NO_PID:
        err(f"note: no milter pid in {pid_file}; reload it yourself: {hint}")
    elif outcome is reloading.Outcome.NOT_A_PID:
        err(f"note: {pid_file} holds pid {pid}, which is no milter; reload it yourself: {hint}")
    elif outcome is reloading.Outcome.GONE:
        err(f"note: pid {pid} from {pid_file} is not running; reload it yourself: {hint}")
    elif outcome is reloading.Outcome.FOREIGN:
        err(f"note: pid {pid} from {pid_file} is not a running smtpplus-milter; reload it yourself: {hint}")
    elif outcome is reloading.Outcome.UNCONFIRMED:
        err(
            f"note: pid {pid} from {pid_file} is not confirmed as the running milter (it is not the MainPID of "
            f"{reloading.SERVICE} and does not hold the milter socket {socket}); not signalled. "
            f"Reload it yourself: {hint}"
        )
    else:
        err(f"note: cannot signal pid {pid} ({done.error}); reload it yourself: {hint}")


# --- the tracking store's commands (stats, messages, recipients, suppressions) ------------------

FORMATS = ("table", "csv", "json")


def moment(text: str) -> datetime:
    """A ``--since``/``--until`` value: YYYY-MM-DD or an ISO 8601 time; without a zone, UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD) or an ISO time") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def configured_store(path: Path, command: str = "") -> TrackingStore | None:
    """The tracking store of the config at *path*, or None with the reason said on stderr."""
    config = load_or_report(path, command=command)
    if config is None:
        return None
    try:
        return store_of(config)
    except StoreProblem as exc:
        err(f"{PROGRAM}{' ' + command if command else ''}: {exc}")
        return None


def store_of(config: Config) -> TrackingStore | None:
    """The configured tracking store, or None (said on stderr) when tracking is off."""
    if config.tracking is None:
        err(f"{PROGRAM}: tracking is off in {config.path}: add a tracking: section with its store (docs/tracking.md)")
        return None
    return open_store(config.tracking.store)


def write_rows(
    rows: Iterable[dict[str, object]], columns: tuple[str, ...], output_format: str, empty: str = "(no messages)"
) -> None:
    """Rows as a table, CSV or a JSON list of objects (keys in *columns* order)."""
    if output_format == "json":
        sys.stdout.write("[")
        for number, row in enumerate(rows):
            sys.stdout.write(("," if number else "") + "\n  " + json.dumps({key: row[key] for key in columns}))
        sys.stdout.write("\n]\n")
        return
    if output_format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row[key] is None else row[key] for key in columns])
        return
    table = [list(columns), *(list(_cells(row, columns)) for row in rows)]
    if len(table) == 1:
        print(empty)
        return
    print_table(table)


def _cells(row: dict[str, object], columns: tuple[str, ...]) -> Iterator[str]:
    return ("-" if row[key] is None else str(row[key]) for key in columns)


def iso(value: datetime) -> str:
    """A time as ISO 8601 in UTC, to the second (what the log lines carry), e.g. 2026-11-01T10:00:00Z."""
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
