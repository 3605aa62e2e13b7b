"""The milter's tracking writer: records of accepted messages reach the store off the mail path.

:meth:`TrackingWriter.submit` is all the mail path does: one append to a deque (no lock, no I/O,
no wake-up). A thread of its own, every :data:`INTERVAL` seconds, appends what has come to the
on-disk spool (:mod:`smtpplus_milter.infra.spool`, ``fsync``\\ ed) and then moves the spool into the
store in order, marking each batch done once the store has it. While the store is slow or down the
records wait in the spool (at most ``tracking.spool_max_mb``) and go in when it is back; the
store's writes are idempotent, so a batch replayed after a crash is not counted twice.

What can be lost: on SIGTERM nothing (:meth:`stop` writes the deque to the spool and tries the
store once more); on kill -9 the records of the last :data:`INTERVAL` that were not yet in the
spool; when the spool is full, the records that do not fit (counted, and logged).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

from smtpplus_milter.core.tracking import MessageRecord
from smtpplus_milter.infra.spool import Spool, SpoolFull, SpoolProblem
from smtpplus_milter.infra.store import TrackingStore, open_store
from smtpplus_milter.observe.log import get_logger
from smtpplus_milter.observe.metrics import Metrics

log = get_logger()

INTERVAL = 0.1
# The store gets what the spool holds this often (or as soon as a full batch waits): its work per
# transaction is then shared by ~10 flushes' records. The spool is still written every INTERVAL,
# so what a kill -9 can lose does not change; records reach the store up to a second later.
STORE_INTERVAL = 1.0
BATCH = 500
# While the store fails, wait this long before the next try (doubling up to the maximum).
RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 60.0


class TrackingWriter:
    """Records from the mail path to the store, through the spool. Start with :meth:`start`."""

    def __init__(
        self,
        store_url: str,
        spool: Spool,
        metrics: Metrics,
        *,
        opener: Callable[[str], TrackingStore] = open_store,
        interval: float = INTERVAL,
        store_interval: float = STORE_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store_url = store_url
        self.spool = spool
        self.metrics = metrics
        self.opener = opener
        self.interval = interval
        self.store_interval = store_interval
        self._next_store = 0.0
        self.clock = clock
        self._incoming: collections.deque[MessageRecord] = collections.deque()
        self._store: TrackingStore | None = None
        self._next_try = 0.0
        self._retry = RETRY_SECONDS
        self._waiting = spool.count_pending()  # left from before a restart
        # Batches appended while the spool held nothing older, with the offset after each: they are
        # exactly the spool's next lines, so the store gets them as they are instead of read back
        # and parsed (the writer's CPU is the milter's). Anything else goes through the spool.
        self._fresh: collections.deque[tuple[list[MessageRecord], int]] = collections.deque()
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # the thread and stop() never work on the spool together
        self._thread = threading.Thread(target=self._run, name="tracking-writer", daemon=True)
        # What the writer cost the milter process (its thread's CPU) and how many records it stored:
        # logged at stop, so an operator or bench/throughput.py can tell the writer's share per message.
        self.cpu_seconds = 0.0
        self.stored = 0
        metrics.tracking_spooled.set(self._waiting)

    def start(self) -> None:
        self._thread.start()

    def submit(self, record: MessageRecord) -> None:
        """Queue one record (the mail path): O(1), never blocks, never raises."""
        self._incoming.append(record)

    def stop(self, timeout: float = 5.0) -> None:
        """Put everything queued into the spool and try the store once more."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._lock:
            self._spool_incoming()
            self._next_try = self._next_store = 0.0
            self._drain()
            if self._store is not None:
                self._store.close()
                self._store = None
            self.spool.close()
        log.info("tracking_writer_stopped", stored=self.stored, cpu_seconds=round(self.cpu_seconds, 3))

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            started = time.thread_time()
            with self._lock:
                try:
                    self._spool_incoming()
                    self._drain()
                except Exception:  # the writer must keep running whatever one cycle did
                    log.exception("tracking_writer_failed")
            self.cpu_seconds += time.thread_time() - started

    def _spool_incoming(self) -> None:
        while self._incoming:
            batch: list[MessageRecord] = []
            while self._incoming and len(batch) < BATCH:
                batch.append(self._incoming.popleft())
            nothing_older = self._waiting == 0 or bool(self._fresh)
            try:
                end = self.spool.append([record.as_dict() for record in batch])
            except (SpoolFull, SpoolProblem) as exc:
                self.metrics.tracking_lost.inc(len(batch))
                log.error("tracking_records_lost", records=len(batch), reason=str(exc))
                continue
            if nothing_older:
                self._fresh.append((batch, end))
            self._waiting += len(batch)
        self.metrics.tracking_spooled.set(self._waiting)

    def _drain(self) -> None:
        """Move the spool into the store, in order, until it is empty or the store fails."""
        now = self.clock()
        if self._waiting == 0 or now < self._next_try or (now < self._next_store and self._waiting < BATCH):
            return
        self._next_store = now + self.store_interval
        while True:
            taken = 0
            records: list[MessageRecord]
            if self._fresh:
                # Consecutive fresh batches are consecutive in the spool: one store call for them.
                records, end = [], 0
                while taken < len(self._fresh) and (not records or len(records) + len(self._fresh[taken][0]) <= BATCH):
                    records += self._fresh[taken][0]
                    end = self._fresh[taken][1]
                    taken += 1
            else:
                pending = self.spool.pending(limit=BATCH)
                records, end = [MessageRecord.from_dict(item) for item in pending.records], pending.end
            if not records:
                self._waiting = 0
                break
            try:
                self._open().record_messages(records)
            except Exception as exc:
                self._fresh.clear()  # the next try reads the spool back
                self._failed(exc)
                break
            for _ in range(taken):
                self._fresh.popleft()
            self.spool.mark_done(end)
            self.stored += len(records)
            self._waiting = max(0, self._waiting - len(records))
            self._retry = RETRY_SECONDS
        self.metrics.tracking_spooled.set(self._waiting)

    def _open(self) -> TrackingStore:
        if self._store is None:
            store = self.opener(self.store_url)
            try:
                store.migrate()
            except Exception:
                store.close()
                raise
            self._store = store
        return self._store

    def _failed(self, exc: Exception) -> None:
        log.warning(
            "tracking_store_unavailable",
            store=_without_password(self.store_url),
            reason=str(exc)[:500],
            waiting=self._waiting,
            retry_in=self._retry,
        )
        if self._store is not None:
            try:
                self._store.close()
            except Exception:
                pass
            self._store = None
        self._next_try = self.clock() + self._retry
        self._retry = min(self._retry * 2, MAX_RETRY_SECONDS)


def _without_password(url: str) -> str:
    """A store URL fit for a log line (a postgresql:// URL may carry a password)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.partition(":")[0]
    return f"{scheme}://{user}@{host}"
