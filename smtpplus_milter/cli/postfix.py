"""``smtpplus-milter postfix-config``: print (and with --write-files write) what Postfix needs."""

from __future__ import annotations

import sys
from pathlib import Path

from smtpplus_milter.cli.common import load_or_report


def main(
    path: Path, postfix_dir: str, nexthop_args: list[str], relayhost: str | None, chroot: bool, write: bool
) -> int:
    from smtpplus_milter.admin.postfix import (
        QUEUE_DIRECTORY,
        generate,
        parse_nexthops,
        postconf_queue_directory,
        postconf_relayhost,
        render,
        write_tables,
    )
    from smtpplus_milter.infra.files import FileProblem

    config = load_or_report(path)
    if config is None:
        return 1
    try:
        nexthops = parse_nexthops(nexthop_args)
    except ValueError as exc:
        print(f"smtpplus-milter: {exc}", file=sys.stderr)
        return 2
    if relayhost is None:
        relayhost, note = postconf_relayhost(postfix_dir)
        if note is not None:
            print(f"# note: {note}", file=sys.stderr)
    queue_directory = QUEUE_DIRECTORY
    if config.postfix.policy_listen is not None:
        # The policy socket is named relative to the queue directory when it lies inside it.
        queue_directory, note = postconf_queue_directory(postfix_dir)
        if note is not None:
            print(f"# note: {note}", file=sys.stderr)
    snippets = generate(
        config.postfix,
        postfix_dir=postfix_dir,
        nexthops=nexthops,
        relayhost=relayhost,
        chroot=chroot,
        queue_directory=queue_directory,
    )
    print(render(snippets, postfix_dir), end="")
    if write:
        try:
            written = write_tables(snippets, postfix_dir)
        except FileProblem as exc:
            print(f"smtpplus-milter: {exc}", file=sys.stderr)
            return 1
        for target in written:
            print(f"# wrote {target}", file=sys.stderr)
    return 0
