"""The ``smtpplus-milter`` command line. Exit codes: 0 ok, 1 refused/invalid, 2 usage."""

from __future__ import annotations

import argparse
from pathlib import Path

from smtpplus_milter import __version__
from smtpplus_milter.cli import check, postfix, run
from smtpplus_milter.cli import doctor as doctor_cli
from smtpplus_milter.cli import explain as explain_cli
from smtpplus_milter.cli import fanout as fanout_cli
from smtpplus_milter.cli import follow as follow_cli
from smtpplus_milter.cli import ingest as ingest_cli
from smtpplus_milter.cli import policyd as policyd_cli
from smtpplus_milter.cli import preempt as preempt_cli
from smtpplus_milter.cli import setup as setup_cli
from smtpplus_milter.cli import suppressions as suppressions_cli
from smtpplus_milter.cli import tracking as tracking_cli
from smtpplus_milter.cli import users as users_cli
from smtpplus_milter.cli import verify as verify_cli
from smtpplus_milter.cli import web as web_cli
from smtpplus_milter.config import DEFAULT_CONFIG


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        metavar="FILE",
        help=f"main config file (default {DEFAULT_CONFIG})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smtpplus-milter", description="SMTP+ relay milter for Postfix")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser("run", help="run the milter (foreground; SIGHUP reloads, SIGTERM drains and stops)")
    _add_config(run)
    run.add_argument(
        "--pid-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the process id here (for 'users ... --reload'); removed at exit (default: none)",
    )
    check = commands.add_parser("check-config", help="validate the config and users file, exit 1 on any problem")
    _add_config(check)
    postfix = commands.add_parser(
        "postfix-config", help="print the main.cf/master.cf/header_checks lines for priority routing"
    )
    _add_config(postfix)
    postfix.add_argument("--postfix-dir", default="/etc/postfix", help="Postfix config directory (default %(default)s)")
    postfix.add_argument(
        "--nexthop",
        action="append",
        default=[],
        metavar="[QUEUE=]NEXTHOP",
        help="explicit next hop for the routed queues (e.g. [smarthost.example]:587), or per queue "
        "(high=[a.example]:25); default: keep Postfix's own next hop, relayhost included",
    )
    postfix.add_argument(
        "--relayhost",
        default=None,
        metavar="NEXTHOP",
        help="Postfix's relayhost (default: read with postconf from --postfix-dir)",
    )
    postfix.add_argument("--no-chroot", action="store_true", help="transports not chrooted (master.cf chroot = n)")
    postfix.add_argument(
        "--write-files", action="store_true", help="also write the two lookup tables into --postfix-dir"
    )
    explain_cli.add_parser(commands, _add_config)
    users_cli.add_parsers(commands, _add_config)
    verify_cli.add_parsers(commands, _add_config)
    setup_cli.add_parser(commands)
    tracking_cli.add_parsers(commands, _add_config)
    suppressions_cli.add_parsers(commands, _add_config)
    ingest_cli.add_parser(commands, _add_config)
    follow_cli.add_parser(commands, _add_config)
    fanout_cli.add_parser(commands, _add_config)
    web_cli.add_parser(commands, _add_config)
    preempt_cli.add_parsers(commands, _add_config)
    policyd_cli.add_parser(commands, _add_config)
    doctor_cli.add_parser(commands, _add_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        return check.main(args.config)
    if args.command == "run":
        return run.main(args.config, args.pid_file)
    if args.command == "explain":
        return explain_cli.run(args)
    if args.command == "users":
        return users_cli.main(args)
    if args.command == "verify":
        return verify_cli.main(args)
    if args.command == "setup":
        return setup_cli.main(args)
    if args.command == "ingest":
        return ingest_cli.main(args)
    if args.command == "fanout":
        return fanout_cli.main(args)
    if args.command == "web":
        return web_cli.main(args)
    if args.command == "doctor":
        return doctor_cli.main(args)
    if args.command == "policyd":
        return policyd_cli.main(args)
    if args.command in ("preempt", "queue"):
        return preempt_cli.main(args)
    if args.command == "suppressions":
        return suppressions_cli.main(args)
    if args.command == "follow":
        return follow_cli.main(args)
    if args.command in ("tracking", "stats", "messages", "recipients"):
        return tracking_cli.main(args)
    if args.command == "postfix-config":
        return postfix.main(
            args.config, args.postfix_dir, args.nexthop, args.relayhost, not args.no_chroot, args.write_files
        )
    return 2  # pragma: no cover - argparse enforces the choices
