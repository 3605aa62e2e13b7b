"""``smtpplus-milter setup``: the options of the install guide's steps, and what is printed.

The steps themselves (and what each one owns) are :class:`smtpplus_milter.admin.setup.Setup`'s.
Every change goes to stdout, warnings to stderr, so that a second run prints only "unchanged".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from smtpplus_milter.admin.postfix import parse_nexthops
from smtpplus_milter.admin.setup import OUR_MILTER, SOURCE_GUESS, Options, Setup, SetupError, config_path
from smtpplus_milter.cli.common import load_or_report
from smtpplus_milter.infra.files import FileProblem


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    setup = commands.add_parser(
        "setup",
        help="apply the install guide's steps (config, Dovecot, socket directory, main.cf, master.cf); idempotent",
        description="Install smtpplus-milter beside Postfix and Dovecot as deploy/README-install.md describes. "
        "Prints every change; a second run prints only 'unchanged'. Starts and reloads nothing.",
    )
    setup.add_argument("--postfix-dir", type=Path, default=Path("/etc/postfix"), help="Postfix config directory")
    setup.add_argument("--dovecot-dir", type=Path, default=Path("/etc/dovecot"), help="Dovecot config directory")
    setup.add_argument("--etc", type=Path, default=Path("/etc/smtpplus"), help="smtpplus config directory")
    setup.add_argument(
        "--socket-dir", type=Path, default=Path("/var/spool/postfix/smtpplus"), help="the milter's socket directory"
    )
    setup.add_argument(
        "--source", type=Path, default=SOURCE_GUESS, help="smtpplus-milter source tree (default: %(default)s)"
    )
    setup.add_argument("--milter-socket", default=OUR_MILTER, help="the milter as main.cf names it (%(default)s)")
    setup.add_argument("--sasl-path", default="private/auth", help="smtpd_sasl_path (%(default)s)")
    setup.add_argument(
        "--submission-service", default="submission", metavar="NAME", help="master.cf name of port 587's service"
    )
    setup.add_argument("--tls-cert", default=None, metavar="FILE", help="smtpd_tls_cert_file (default: leave as is)")
    setup.add_argument("--tls-key", default=None, metavar="FILE", help="smtpd_tls_key_file (default: leave as is)")
    setup.add_argument(
        "--nexthop", action="append", default=[], metavar="[QUEUE=]NEXTHOP", help="as for postfix-config"
    )
    setup.add_argument("--no-chroot", action="store_true", help="services not chrooted (master.cf chroot = n)")
    setup.add_argument("--no-user", action="store_true", help="no user smtpplus: files and socket dir owned by root")
    setup.add_argument("--no-systemd", action="store_true", help="install no unit/tmpfiles; make the socket dir")
    setup.add_argument("--force", action="store_true", help="also when smtpd_milters names other milters")
    setup.add_argument("--dry-run", action="store_true", help="print the changes, make none")


def main(args: argparse.Namespace) -> int:
    try:
        nexthops = parse_nexthops(args.nexthop)
    except ValueError as exc:
        print(f"smtpplus-milter: {exc}", file=sys.stderr)
        return 2
    options = Options(
        postfix_dir=args.postfix_dir,
        dovecot_dir=args.dovecot_dir,
        etc=args.etc,
        socket_dir=args.socket_dir,
        source=args.source,
        milter_socket=args.milter_socket,
        sasl_path=args.sasl_path,
        submission_service=args.submission_service,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        nexthops=nexthops,
        chroot=not args.no_chroot,
        user=not args.no_user,
        systemd=not args.no_systemd,
        force=args.force,
        dry_run=args.dry_run,
    )
    config = load_or_report(config_path(options), command="setup")
    if config is None:
        return 1
    setup = Setup(options, out=print, warn=lambda text: print(f"WARNING: {text}", file=sys.stderr))
    try:
        setup.run(config.settings)
    except (SetupError, FileProblem) as exc:
        print(f"smtpplus-milter setup: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # A directory or file setup had to create or change (permissions, read-only file system).
        where = f" {exc.filename}" if exc.filename else ""
        print(f"smtpplus-milter setup: cannot change{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if options.dry_run:
        print(f"dry run: {setup.changed} change(s) not made")
    elif setup.changed == 0:
        print("nothing to change")
    else:
        print(
            f"{setup.changed} change(s). Next: systemctl enable --now smtpplus-milter; systemctl restart dovecot; "
            f"postfix -c {options.postfix_dir} check && systemctl reload postfix"
        )
    return 0
