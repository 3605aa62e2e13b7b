"""``smtpplus-milter postfix-config``: print (and with --write-files write) what Postfix needs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from smtpplus_milter.cli.common import load_or_report


def _postconf_relayhost(postfix_dir: str) -> str:
    import subprocess

    try:
        done = subprocess.run(
            ["postconf", "-c", postfix_dir, "-h", "relayhost"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        print("# note: postconf not found; assuming no relayhost (give --relayhost)", file=sys.stderr)
        return ""
    if done.returncode != 0:
        print(f"# note: postconf -c {postfix_dir} failed; assuming no relayhost (give --relayhost)", file=sys.stderr)
        return ""
    return done.stdout.strip()


def main(
    path: Path, postfix_dir: str, nexthop_args: list[str], relayhost: str | None, chroot: bool, write: bool
) -> int:
    from smtpplus_milter.admin.postfix import generate, parse_nexthops, render
    from smtpplus_milter.infra.files import FileProblem, Ownership, replace_atomically

    config = load_or_report(path)
    if config is None:
        return 1
    try:
        nexthops = parse_nexthops(nexthop_args)
    except ValueError as exc:
        print(f"smtpplus-milter: {exc}", file=sys.stderr)
        return 2
    if relayhost is None:
        relayhost = _postconf_relayhost(postfix_dir)
    snippets = generate(config.postfix, postfix_dir=postfix_dir, nexthops=nexthops, relayhost=relayhost, chroot=chroot)
    print(render(snippets, postfix_dir), end="")
    if write:
        for name, text in snippets.files.items():
            target = Path(postfix_dir) / name
            try:
                # Postfix's daemons (user postfix) read the tables: world-readable, like main.cf.
                owner = Ownership(0o644, os.geteuid(), os.getegid())
                replace_atomically(target, text.encode("utf-8"), new_file=owner)
            except FileProblem as exc:
                print(f"smtpplus-milter: {exc}", file=sys.stderr)
                return 1
            print(f"# wrote {target}", file=sys.stderr)
    return 0
