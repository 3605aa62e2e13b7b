"""Run ``smtpplus-milter run`` with experimental changes patched in, to measure what they would save.

    python bench/milter_variant.py VARIANT[+VARIANT...] -c CONFIG

Only for ``bench/throughput.py --modes none,unix,v:synclog`` and friends: each variant is a
what-if, applied by monkeypatching the installed package before the normal ``run`` command
starts, so the product code stays untouched and the measurement runs the same binary path.

Variants:

``synclog``
    Write the per-message log events through structlog in the libmilter thread that decided the
    message, as before the background log writer: what the writer saves.
``nolog``
    Drop the per-message log events (to measure what is left of their cost; not a proposal).
``timing``
    Measure, not change: the CPU time (``time.thread_time``) spent inside each callback, and
    in the session steps, the reporter and ``getsymval`` below them, summed per name and
    written as JSON at exit to the file named by ``$SMTPPLUS_BENCH_TIMING`` (default: stderr,
    i.e. the milter log).

(Earlier variants, measured in docs/benchmarks.md: ``cache`` is now part of the product, and
``lean``/``fastlog`` patched adapter internals that no longer exist; run this script at commit
e83ef40 to reproduce them.)
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from smtpplus_milter import cli
from smtpplus_milter.services import milter as adapter

VARIANTS = ("synclog", "nolog", "timing")


def apply_synclog() -> None:
    from smtpplus_milter.observe import log as logsetup

    def emit(self: Any, level: str, event: str, fields: dict[str, Any]) -> None:
        logsetup.emit_now(level, event, fields)

    setattr(logsetup.EventWriter, "emit", emit)  # noqa: B010 - patching a class is the point here


def apply_nolog() -> None:
    from smtpplus_milter.observe import log as logsetup

    def emit(self: Any, level: str, event: str, fields: dict[str, Any]) -> None:
        return None

    setattr(logsetup.EventWriter, "emit", emit)  # noqa: B010


_spent: dict[str, list[float]] = {}  # name -> [calls, CPU seconds]
_spent_lock = threading.Lock()


def _timed(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return func(*args, **kwargs)
        finally:
            spent = time.thread_time() - started
            with _spent_lock:
                entry = _spent.setdefault(name, [0, 0.0])
                entry[0] += 1
                entry[1] += spent

    return wrapper


def _report_timing() -> None:
    summary = {
        name: {"calls": int(calls), "cpu_us_per_call": round(seconds / calls * 1e6, 1), "cpu_s": seconds}
        for name, (calls, seconds) in sorted(_spent.items())
        if calls
    }
    text = json.dumps({"event": "bench_timing", "spent": summary})
    target = os.environ.get("SMTPPLUS_BENCH_TIMING")
    if target:
        with open(target, "w", encoding="utf-8") as out:
            out.write(text + "\n")
    else:
        print(text, file=sys.stderr, flush=True)


def apply_timing() -> None:
    from smtpplus_milter.core import session
    from smtpplus_milter.observe import report

    cls = adapter.SmtpPlusMilter
    for name in ("__init__", "envfrom", "data", "header", "eoh", "body", "eom", "abort", "close"):
        method = cls.__dict__[name]
        timed = _timed(f"callback.{name}", method)
        # Keep pymilter's markers (@noreply, @nocallback) where it looks for them.
        for marker in ("milter_protocol",):
            if hasattr(method, marker):
                setattr(timed, marker, getattr(method, marker))
        setattr(cls, name, timed)
    steps = session.MessageSession
    for name in ("mail_from", "end_of_headers", "end_of_message", "accept"):
        setattr(steps, name, _timed(f"session.{name}", getattr(steps, name)))
    for name in ("decide_mail_from", "decide_headers"):
        setattr(session, name, _timed(f"core.{name}", getattr(session, name)))
    timed_report = _timed("reporter.report (metrics, queue the log events)", report.Reporter.report)
    setattr(report.Reporter, "report", timed_report)  # noqa: B010
    setattr(cls, "getsymval", _timed("pymilter.getsymval", cls.getsymval))  # noqa: B010
    atexit.register(_report_timing)


def main() -> int:
    if len(sys.argv) < 2 or any(v not in VARIANTS for v in sys.argv[1].split("+")):
        print(__doc__, file=sys.stderr)
        return 2
    for variant in sys.argv[1].split("+"):
        appliers = {"synclog": apply_synclog, "nolog": apply_nolog, "timing": apply_timing}
        appliers[variant]()
    return cli.main(["run", *sys.argv[2:]])


if __name__ == "__main__":
    sys.exit(main())
