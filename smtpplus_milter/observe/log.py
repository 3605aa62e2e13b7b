"""Structured logging: JSON lines for journald/log shippers, key=value on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog


class _CurrentStderr:
    """``sys.stderr`` as it is when a line is written, not when logging was set up.

    A command may configure logging while stderr is a temporary stream (a test's capture, a
    redirect) that is closed later; lines logged after that must still go somewhere valid.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure(
    stream: TextIO | None = None, *, json: bool | None = None, level: int = logging.INFO, cache: bool = False
) -> None:
    """Set up structlog once per process. JSON unless the stream is a terminal.

    Without *stream*, lines go to whatever ``sys.stderr`` is at the time of writing.
    *cache* (the running milter) binds each logger once instead of on every call: it saves a
    measurable share of the per-message cost, but later reconfiguration (tests' capture_logs)
    no longer reaches loggers already used.
    """
    target: TextIO | _CurrentStderr = stream or _CurrentStderr()
    if json is None:
        json = not target.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if json
        else structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"], drop_missing=True)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(target),  # type: ignore[arg-type]
        cache_logger_on_first_use=cache,
    )


def get_logger(**initial: Any) -> Any:
    return structlog.get_logger("smtpplus", **initial)
