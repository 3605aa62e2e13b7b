"""Run ``smtpplus-milter run`` with experimental changes patched in, to measure what they would save.

    python bench/milter_variant.py VARIANT[+VARIANT...] -c CONFIG

Only for ``bench/throughput.py --modes none,unix,v:lean+cache`` and friends: each variant is a
what-if, applied by monkeypatching the installed package before the normal ``run`` command
starts, so the product code stays untouched and the measurement runs the same binary path.

Variants:

``lean``
    The fewest round trips that keep every decision: DATA and end-of-headers are declined
    (``@nocallback``), and the header decision moves from end-of-headers to end-of-message.
    The client sees a refusal at the same moment (Postfix hands the message to milters only
    after the final dot, so end of headers and end of message answer the same SMTP reply). Over
    TCP dropping DATA brings back a delayed-ACK stall (docs/benchmarks.md), so this is for unix sockets.
``cache``
    Memoise the From:/Sender: parser (``email.headerregistry`` plus IDNA) by header value: an
    SMTP+ user sends from the same few From: values all day.
``nolog``
    Drop the per-message ``message`` log line (to measure its cost; not a proposal).
``fastlog``
    Write the per-message ``message`` line with one ``json.dumps`` and one ``write`` (same
    fields, same JSON-lines file) instead of going through structlog's processor chain: what a
    lean hot-path logger would cost.
``timing``
    Measure, not change: the CPU time (``time.thread_time``) spent inside each callback, and
    in the policy, logging and metrics calls below them, summed per name and written as JSON at
    exit to the file named by ``$SMTPPLUS_BENCH_TIMING`` (default: stderr, i.e. the milter log).
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

import Milter

from smtpplus_milter import cli
from smtpplus_milter.core import addresses, authorization
from smtpplus_milter.services import milter as adapter

VARIANTS = ("lean", "cache", "nolog", "fastlog", "timing")


def apply_lean() -> None:
    cls = adapter.SmtpPlusMilter
    judge_headers = cls.eoh  # the guarded end-of-headers decision
    finish = cls.eom

    @Milter.nocallback  # type: ignore[untyped-decorator]
    def data(self: Any) -> int:
        return Milter.CONTINUE  # type: ignore[no-any-return]

    @Milter.nocallback  # type: ignore[untyped-decorator]
    def eoh(self: Any) -> int:
        return Milter.CONTINUE  # type: ignore[no-any-return]

    def eom(self: Any) -> int:
        verdict = judge_headers(self)
        if verdict != Milter.CONTINUE:
            return verdict
        return finish(self)

    setattr(cls, "data", data)  # noqa: B010 - patching a class is the point here
    setattr(cls, "eoh", eoh)  # noqa: B010
    setattr(cls, "eom", eom)  # noqa: B010


def apply_cache() -> None:
    parse = addresses.parse_address_header

    @functools.lru_cache(maxsize=4096)
    def cached(name: str, value: str) -> tuple[addresses.Address, ...]:
        return tuple(parse(name, value))  # AddressError is raised, and not cached

    def parse_address_header(name: str, value: str) -> list[addresses.Address]:
        return list(cached(name, value))

    setattr(authorization, "parse_address_header", parse_address_header)  # noqa: B010


class _DropMessageEvents:
    def __init__(self, log: Any) -> None:
        self._log = log

    def info(self, event: str, **fields: Any) -> Any:
        if event != "message":
            return self._log.info(event, **fields)
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


def apply_nolog() -> None:
    adapter.log = _DropMessageEvents(adapter.log)


class _FastMessageEvents(_DropMessageEvents):
    def __init__(self, log: Any) -> None:
        super().__init__(log)
        self._lock = threading.Lock()

    def info(self, event: str, **fields: Any) -> Any:
        if event != "message":
            return self._log.info(event, **fields)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        line = json.dumps({"event": event, **fields, "level": "info", "timestamp": stamp + "Z"}) + "\n"
        with self._lock:
            sys.stderr.write(line)
            sys.stderr.flush()
        return None


def apply_fastlog() -> None:
    adapter.log = _FastMessageEvents(adapter.log)


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
    from smtpplus_milter.observe import metrics

    cls = adapter.SmtpPlusMilter
    for name in ("__init__", "envfrom", "data", "header", "eoh", "eom", "abort", "close"):
        method = cls.__dict__[name]
        timed = _timed(f"callback.{name}", method)
        # Keep pymilter's markers (@noreply, @nocallback) where it looks for them.
        for marker in ("milter_protocol",):
            if hasattr(method, marker):
                setattr(timed, marker, getattr(method, marker))
        setattr(cls, name, timed)
    for name in ("decide_mail_from", "decide_headers"):
        setattr(adapter, name, _timed(f"policy.{name}", getattr(adapter, name)))
    setattr(cls, "_finish", _timed("milter._finish (log + metrics)", cls._finish))  # noqa: B010
    setattr(cls, "getsymval", _timed("pymilter.getsymval", cls.getsymval))  # noqa: B010
    metrics.MESSAGES.labels = _timed("metrics.labels", metrics.MESSAGES.labels)  # type: ignore[method-assign]
    atexit.register(_report_timing)


def main() -> int:
    if len(sys.argv) < 2 or any(v not in VARIANTS for v in sys.argv[1].split("+")):
        print(__doc__, file=sys.stderr)
        return 2
    for variant in sys.argv[1].split("+"):
        appliers = {
            "lean": apply_lean,
            "cache": apply_cache,
            "nolog": apply_nolog,
            "fastlog": apply_fastlog,
            "timing": apply_timing,
        }
        appliers[variant]()
    return cli.main(["run", *sys.argv[2:]])


if __name__ == "__main__":
    sys.exit(main())
