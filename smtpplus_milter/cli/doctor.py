"""``smtpplus-milter doctor``: will this relay's mail be delivered? (docs/doctor.md).

What is checked: :mod:`smtpplus_milter.admin.doctor`. Exit 1 when any check fails, 0 otherwise
(warnings included); with ``--alert`` every failed check is also sent as an alert
``SMTPPlusDoctorFail`` through the configured sinks (the daily systemd timer does that).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from smtpplus_milter.cli import common


def add_parser(commands: Any, add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    doctor = commands.add_parser(
        "doctor",
        help="check what decides whether this relay's mail is delivered: SPF, DKIM, DMARC, PTR of the relay, "
        "the SMTP ports' STARTTLS and certificate, the Postfix settings SMTP+ needs (exit 1 on any FAIL)",
    )
    add_config(doctor)
    doctor.add_argument(
        "--domain",
        action="append",
        default=[],
        metavar="D",
        help="check only this sending domain (repeatable; default: every domain the users send as)",
    )
    doctor.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")
    doctor.add_argument(
        "--alert", action="store_true", help="also send each FAIL as an alert SMTPPlusDoctorFail through alerts.*"
    )


def main(args: argparse.Namespace) -> int:
    config = common.load_or_report(args.config, command="doctor")
    if config is None:
        return 1
    from smtpplus_milter.admin.doctor import run
    from smtpplus_milter.observe import log as logsetup

    logsetup.configure()  # log lines (the alert sinks') on stderr: stdout is the report, maybe JSON
    report = run(config, domains=args.domain or None)
    print(report.as_json() if args.format == "json" else report.as_table())
    if args.alert:
        send_alerts(config, report)
    return report.exit_code


def send_alerts(config: Any, report: Any) -> int:
    """Each failed check as an alert, once per check and subject in this run; returns how many."""
    from smtpplus_milter.core.doctor import Status
    from smtpplus_milter.observe.alerts import DOCTOR_FAIL, Alert, AlertDispatcher

    dispatcher = AlertDispatcher.from_config(config.settings.alerts)
    sent = 0
    try:
        for check in report.checks:
            if check.status is not Status.FAIL:
                continue
            dispatcher.submit(
                Alert(
                    DOCTOR_FAIL,
                    "",
                    f"{check.check} {check.subject}",
                    check.check,
                    "",
                    "failed",
                    check.found,
                    None,
                    shown=check.fix,
                )
            )
            sent += 1
    finally:
        dispatcher.stop(10.0)  # a oneshot: deliver what was queued before the process ends
    return sent
