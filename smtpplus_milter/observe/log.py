"""Structured logging: JSON lines for journald/log shippers, key=value on a terminal."""

from __future__ import annotations

import collections
import json as jsonlib
import logging
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


# An event's fields, or what builds them: the background writer builds them in its own thread.
Fields = dict[str, Any] | Callable[[], dict[str, Any]]
Emit = Callable[[str, str, Fields], None]


def _built(fields: Fields) -> dict[str, Any]:
    return fields() if callable(fields) else fields


def emit_now(level: str, event: str, fields: Fields) -> None:
    """Write one event through structlog, in the calling thread (commands, tests)."""
    getattr(get_logger(), level)(event, **_built(fields))


class EventWriter:
    """Writes the per-message events from a thread of its own, in batches, off libmilter's threads.

    :meth:`emit` only stamps the time and appends the fields (or the function that builds them)
    to a deque (one atomic append: no lock, no thread wake-up per message). The writer thread
    wakes every :data:`INTERVAL` seconds, builds and renders what has come (one ``json.dumps`` per
    line, the same keys structlog writes) and writes it with one ``write``. Waking the writer for
    every line (a ``queue.Queue``) cost more CPU than writing the line in place; batching is what
    saves (docs/benchmarks.md). On a terminal the
    lines are rendered through structlog instead (key=value, for people).

    Nothing is dropped: past :data:`MAX_PENDING` unwritten lines (a stalled stderr) :meth:`emit`
    writes the backlog itself, and :meth:`stop` writes everything still pending before it returns.
    """

    INTERVAL = 0.05
    MAX_PENDING = 10_000

    def __init__(self, stream: TextIO | None = None, *, json: bool | None = None, interval: float = INTERVAL) -> None:
        self._stream: TextIO | _CurrentStderr = stream or _CurrentStderr()
        self.interval = interval
        self.json = (not self._stream.isatty()) if json is None else json
        self._pending: collections.deque[tuple[float, str, str, Fields]] = collections.deque()
        self._write_lock = threading.Lock()  # one writer at a time, lines in order
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def emit(self, level: str, event: str, fields: Fields) -> None:
        self._pending.append((time.time(), level, event, fields))
        if len(self._pending) > self.MAX_PENDING:
            self.flush()

    def flush(self) -> None:
        """Write everything emitted so far (the writer thread, a backlog, a stop, tests)."""
        with self._write_lock:
            batch = []
            while True:
                try:
                    batch.append(self._pending.popleft())
                except IndexError:
                    break
            if batch:
                self._write(batch)

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is pending and end the thread."""
        self._stopping.set()
        self._thread.join(timeout)
        self.flush()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            if self._pending:
                self.flush()

    def _write(self, batch: list[tuple[float, str, str, Fields]]) -> None:
        if not self.json:
            for _at, level, event, fields in batch:
                emit_now(level, event, fields)
            return
        lines = []
        for at, level, event, fields in batch:
            stamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            try:
                record = {**_built(fields), "event": event, "level": level, "timestamp": stamp}
                lines.append(jsonlib.dumps(record, default=str))
            except Exception as exc:  # never lose the line for one odd value
                lines.append(jsonlib.dumps({"event": event, "level": level, "timestamp": stamp, "error": repr(exc)}))
        try:
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass  # stderr gone (closed pipe): nothing better to do with a log line
