"""Structured logging: JSON lines for journald/log shippers, key=value on a terminal."""

from __future__ import annotations

import json as jsonlib
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
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


Emit = Callable[[str, str, dict[str, Any]], None]


def emit_now(level: str, event: str, fields: dict[str, Any]) -> None:
    """Write one event through structlog, in the calling thread (commands, tests)."""
    getattr(get_logger(), level)(event, **fields)


class EventWriter:
    """Writes the per-message events from a thread of its own, so libmilter's threads do not.

    Rendering a JSON line and writing it cost about 140 µs of a message's time on the milter's
    callback path (docs/benchmarks.md); here :meth:`emit` only stamps the time and queues the
    fields. The writer renders JSON lines itself (one ``json.dumps`` each, the same keys structlog
    writes) and writes everything queued with one ``write``. On a terminal it renders through
    structlog instead (key=value, for people).

    Nothing is dropped: if the writer falls :data:`MAX_PENDING` lines behind (a stalled stderr),
    :meth:`emit` waits for room rather than losing a line, and :meth:`stop` writes everything
    still queued before it returns.
    """

    MAX_PENDING = 10_000

    def __init__(self, stream: TextIO | None = None, *, json: bool | None = None) -> None:
        self._stream: TextIO | _CurrentStderr = stream or _CurrentStderr()
        self.json = (not self._stream.isatty()) if json is None else json
        self._queue: queue.Queue[tuple[float, str, str, dict[str, Any]] | None] = queue.Queue(self.MAX_PENDING)
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        self._queue.put((time.time(), level, event, fields))

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued and end the thread."""
        self._queue.put(None)
        self._thread.join(timeout)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything emitted so far is written (tests, shutdown)."""
        done = threading.Event()
        self._queue.put((0.0, "", "", {"_flushed": done}))
        done.wait(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            while item is not None and len(batch) < 256:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(item)
            self._write([entry for entry in batch if entry is not None])
            if batch[-1] is None:
                return

    def _write(self, batch: list[tuple[float, str, str, dict[str, Any]]]) -> None:
        lines: list[str] = []
        for at, level, event, fields in batch:
            flushed = fields.get("_flushed")
            if isinstance(flushed, threading.Event):
                self._out(lines)
                lines = []
                flushed.set()
                continue
            if not self.json:
                getattr(get_logger(), level)(event, **fields)
                continue
            stamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            try:
                lines.append(jsonlib.dumps({**fields, "event": event, "level": level, "timestamp": stamp}, default=str))
            except Exception as exc:  # never lose the line for one odd value
                lines.append(jsonlib.dumps({"event": event, "level": level, "timestamp": stamp, "error": repr(exc)}))
        self._out(lines)

    def _out(self, lines: list[str]) -> None:
        if not lines:
            return
        try:
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass  # stderr gone (closed pipe): nothing better to do with a log line
