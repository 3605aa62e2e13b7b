"""A pymilter milter with exactly smtpplus-milter's callback shape, doing nothing in any of them.

Same steps declined (``@nocallback``: connect, HELO, RCPT, body chunks), same step answered
without a reply (``@noreply``: each header), same steps answered (MAIL FROM, DATA, end of
headers, end of message), same action flags. Postfix therefore talks to it exactly as to the
real milter, with the same packets and the same round trips; the difference in throughput and
CPU between the two is the cost of smtpplus's own Python code (policy, logging, metrics), and the
difference between this and no milter at all is libmilter + pymilter + Postfix's side of the
protocol.

    python bench/noop_milter.py [--lean] unix:/path/to/socket     (or inet:PORT@127.0.0.1)

``--lean`` is the shape with the fewest round trips that can still refuse at MAIL FROM and
after the headers: DATA and end-of-headers are declined too (``@nocallback``), so only MAIL
FROM and end of message wait for an answer; a header decision would move to end of message
(same client-visible moment: Postfix gives the milter the message only after the final dot).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import Milter


class NoopMilter(Milter.Base):  # type: ignore[misc]
    @Milter.nocallback  # type: ignore[untyped-decorator]
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        return Milter.CONTINUE  # type: ignore[no-any-return]

    @Milter.nocallback  # type: ignore[untyped-decorator]
    def hello(self, hostname: str) -> int:
        return Milter.CONTINUE  # type: ignore[no-any-return]

    @Milter.nocallback  # type: ignore[untyped-decorator]
    def envrcpt(self, to: str, *params: str) -> int:
        return Milter.CONTINUE  # type: ignore[no-any-return]

    @Milter.nocallback  # type: ignore[untyped-decorator]
    def body(self, chunk: bytes) -> int:
        return Milter.CONTINUE  # type: ignore[no-any-return]

    def envfrom(self, mail_from: str, *params: str) -> int:
        return Milter.CONTINUE  # type: ignore[no-any-return]

    def data(self) -> int:
        return Milter.CONTINUE  # type: ignore[no-any-return]

    @Milter.noreply  # type: ignore[untyped-decorator]
    def header(self, name: str, value: str) -> int:
        return Milter.CONTINUE  # type: ignore[no-any-return]

    def eoh(self) -> int:
        return Milter.CONTINUE  # type: ignore[no-any-return]

    def eom(self) -> int:
        return Milter.CONTINUE  # type: ignore[no-any-return]


class LeanNoopMilter(NoopMilter):
    @Milter.nocallback  # type: ignore[untyped-decorator]
    def data(self) -> int:
        return Milter.CONTINUE  # type: ignore[no-any-return]

    @Milter.nocallback  # type: ignore[untyped-decorator]
    def eoh(self) -> int:
        return Milter.CONTINUE  # type: ignore[no-any-return]


def main() -> int:
    args = sys.argv[1:]
    lean = "--lean" in args
    args = [a for a in args if a != "--lean"]
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    Milter.factory = LeanNoopMilter if lean else NoopMilter
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.CHGBODY)
    # Like smtpplus-milter run: a unix socket usable by group postfix (the directory is setgid).
    os.umask(0o007)
    Milter.runmilter("noop", args[0], 60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
