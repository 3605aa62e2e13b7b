"""The milter's tracking writer: records of accepted messages reach the spool off the mail path.

:meth:`TrackingWriter.submit` is all the mail path does: one append to a deque (no lock, no I/O,
no wake-up). A thread of its own, every :data:`INTERVAL` seconds, appends what has come to the
on-disk spool (:mod:`smtpplus_milter.infra.spool`: one write and one ``fsync`` per flush). The
milter never opens the store: the log follower (``smtpplus-milter follow``) reads the spool into it
(docs/tracking.md). So a slow or unreachable store (a PostgreSQL connect may hang for seconds)
never holds records in this process's memory, and the milter's CPU per message is the JSON and
the write only.

What can be lost: on SIGTERM nothing (:meth:`stop` writes the deque to the spool); on kill -9 the
records of the last :data:`INTERVAL` that were not yet in the spool; when the spool is full (the
follower stopped, or the store down for long), the batches that do not fit, counted in
``smtpplus_tracking_lost_total`` and logged as ``tracking_records_lost``.
"""

from __future__ import annotations

import collections
import threading
import time

from smtpplus_milter.core.tracking import MessageRecord
from smtpplus_milter.infra.spool import SpoolAppender, SpoolFull, SpoolProblem
from smtpplus_milter.observe.log import get_logger
from smtpplus_milter.observe.metrics import Metrics

log = get_logger()

INTERVAL = 0.1
BATCH = 500


class TrackingWriter:
    """Records from the mail path to the spool. Start with :meth:`start`, end with :meth:`stop`."""

    def __init__(self, spool: SpoolAppender, metrics: Metrics, *, interval: float = INTERVAL) -> None:
        self.spool = spool
        self.metrics = metrics
        self.interval = interval
        self._incoming: collections.deque[MessageRecord] = collections.deque()
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # the thread and stop() never write the spool together
        self._thread = threading.Thread(target=self._run, name="tracking-writer", daemon=True)
        # What the writer cost the milter process (its thread's CPU) and how many records it spooled:
        # logged at stop, so an operator or bench/throughput.py can tell the writer's share per message.
        self.cpu_seconds = 0.0
        self.spooled = 0

    def start(self) -> None:
        self._thread.start()

    def submit(self, record: MessageRecord) -> None:
        """Queue one record (the mail path): O(1), never blocks, never raises."""
        self._incoming.append(record)

    def stop(self, timeout: float = 5.0) -> None:
        """Put everything queued into the spool (fsynced) and close it."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._lock:
            self._flush()
            self.spool.close()
        log.info("tracking_writer_stopped", spooled=self.spooled, cpu_seconds=round(self.cpu_seconds, 3))

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            started = time.thread_time()
            with self._lock:
                try:
                    self._flush()
                except Exception:  # the writer must keep running whatever one cycle did
                    log.exception("tracking_writer_failed")
            self.cpu_seconds += time.thread_time() - started

    def _flush(self) -> None:
        while self._incoming:
            batch: list[MessageRecord] = []
            while self._incoming and len(batch) < BATCH:
                batch.append(self._incoming.popleft())
            try:
                self.spool.append([record.as_dict() for record in batch])
            except (SpoolFull, SpoolProblem) as exc:
                self.metrics.tracking_lost.inc(len(batch))
                log.error("tracking_records_lost", records=len(batch), reason=str(exc))
                continue
            self.spooled += len(batch)
