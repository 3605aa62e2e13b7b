"""``smtpplus-milter ingest --serve``: the ingest door as a long-running LMTP server.

Postfix's pipe transport starts one ``ingest`` process per report, and starting Python with the
config, the store and the report parser costs far more than reading the report (about 0.3 s of
imports against ~1 ms of work). With ``bounces.ingest_listen`` set, ``postfix-config`` routes the
return-path domain to Postfix's LMTP client instead, which keeps a few connections to this server
open and delivers report after report over them.

The server is aiosmtpd's LMTP protocol (a maintained asyncio SMTP/LMTP implementation: the
protocol is not ours to write again); each report is handed to the same
:func:`~smtpplus_milter.services.ingest.take` the pipe uses, on one worker thread that owns the
store connection (SQLite's and a pool's rules stay simple; ~1 ms per report keeps up with
hundreds per second). Replies, per delivery of one recipient:

* recorded, a duplicate, or kept in quarantine: ``250``;
* not recorded for a reason that may pass (store down, disk full, config unreadable): ``451 4.3.0``,
  Postfix keeps the report and delivers it again later, so none is lost;
* a second recipient in one delivery: ``452 4.5.3`` (Postfix sends it in the next delivery;
  ``postfix-config`` sets the recipient limit to 1 anyway) — one recipient, one reply, as LMTP wants;
* a report over the size bound: aiosmtpd stops keeping it (memory stays bounded); we answer ``250``
  and log ``report_quarantined`` with the size and a ``.reason`` note in the quarantine directory
  (the pipe keeps the first bytes; nothing of a report that big is a usable bounce) — never a
  bounce back to the sender.

SIGHUP re-reads the config: a valid one replaces the old between two reports (a changed store is
opened on the next report), an invalid one is logged and the old one kept.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, AnyStr

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import Envelope, Session

from smtpplus_milter.config import Config, SocketSpec
from smtpplus_milter.core.reports import MAX_REPORT_BYTES
from smtpplus_milter.infra.files import Ownership, replace_atomically
from smtpplus_milter.infra.store import TrackingStore, open_store
from smtpplus_milter.observe.alerts import COMPLAINT, Alert, AlertDispatcher
from smtpplus_milter.services.ingest import Taken, quarantine_dir, take
from smtpplus_milter.services.lmtp import LmtpDoor, OneRecipient

# aiosmtpd's own reply when DATA went over data_size_limit (it has dropped the data by then).
_TOO_MUCH = "552 Error: Too much mail data"
# After a stop, how long the reports being taken may take to finish.
DRAIN_SECONDS = 30.0


class _Session(LMTP):
    """aiosmtpd's LMTP with its size refusal turned into "kept a note" (see the module docstring)."""

    def __init__(self, handler: IngestHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._ingest = handler

    async def push(self, status: AnyStr) -> None:
        if status == _TOO_MUCH and self.envelope is not None:
            await super().push(await self._ingest.too_big(self.envelope))
            return
        await super().push(status)


class IngestHandler(OneRecipient):
    """The aiosmtpd handler: one recipient per delivery, each report through :func:`take`."""

    def __init__(
        self, config: Config, log: Any, *, quarantine: Path | None = None, alerts: AlertDispatcher | None = None
    ) -> None:
        self._config = config
        self._log = log
        self._given_quarantine = quarantine
        self._alerts = alerts
        self._store: TrackingStore | None = None
        self._store_url: str | None = None
        # One thread owns the store: every report is taken there, one after another.
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ingest")
        self._lock = threading.Lock()
        self.in_flight = 0

    # -- aiosmtpd hooks --------------------------------------------------------------------

    async def handle_DATA(self, server: LMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        recipient = envelope.rcpt_tos[0] if envelope.rcpt_tos else None
        self.in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            taken = await loop.run_in_executor(self._worker, self._take, bytes(raw), recipient)
        finally:
            self.in_flight -= 1
        if taken.retry:
            return "451 4.3.0 Report not recorded now, try again later"
        return "250 2.0.0 Report kept" if taken.event == "report_quarantined" else "250 2.0.0 Report recorded"

    async def too_big(self, envelope: Envelope) -> str:
        recipient = envelope.rcpt_tos[0] if envelope.rcpt_tos else None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._note_too_big, recipient, envelope.mail_from)

    # -- on the worker thread --------------------------------------------------------------

    def _take(self, raw: bytes, recipient: str | None) -> Taken:
        config = self.config
        taken = take(raw, recipient, config, lambda: self._open(config), self._quarantine(config), datetime.now(UTC))
        if taken.retry:
            self._drop_store()  # reconnect for the next report: the failure may have been the connection
        if taken.complaints and self._alerts is not None:
            mode = config.settings.authorization.mode
            for user, address, feedback in taken.complaints:
                alert = Alert(COMPLAINT, user, address, "recipient", mode, "delivered", feedback, taken.queue_id)
                self._alerts.submit(alert)
        level = self._log.error if taken.retry else self._log.warning if taken.event == "report_quarantined" else None
        (level or self._log.info)(taken.event, **taken.fields)
        return taken

    def _note_too_big(self, recipient: str | None, sender: str | None) -> str:
        now = datetime.now(UTC)
        reason = f"over {MAX_REPORT_BYTES} bytes (not kept: LMTP stops reading there)"
        directory = self._quarantine(self.config)
        note = f"{reason}\nrecipient: {recipient}\nsender: {sender}\n".encode("utf-8", "replace")
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o750)
            path = directory / f"{now.strftime('%Y%m%dT%H%M%S%fZ')}-too-big.reason"
            replace_atomically(path, note, new_file=Ownership(0o640, os.getuid(), os.getgid()))
        except OSError as exc:
            self._log.error("report_not_kept", reason=f"{reason}; the note too: {exc}", recipient=recipient)
            return "451 4.3.0 Report not kept now, try again later"
        self._log.warning("report_quarantined", reason=reason, kept=str(path), queue_id=None, recipient=recipient)
        return "250 2.6.0 Report over the size bound: noted, not kept"

    def _open(self, config: Config) -> TrackingStore:
        assert config.tracking is not None  # checked at start and on every reload
        url = config.tracking.store
        if self._store is not None and self._store_url != url:
            self._drop_store()
        if self._store is None:
            store = open_store(url)
            try:
                store.migrate()
            except BaseException:
                store.close()
                raise
            self._store, self._store_url = store, url
        return self._store

    def _drop_store(self) -> None:
        if self._store is not None:
            try:
                self._store.close()
            except Exception as exc:  # closing a broken connection: nothing more to do
                self._log.warning("store_close_failed", reason=f"{type(exc).__name__}: {exc}")
            self._store = None

    def _quarantine(self, config: Config) -> Path:
        return quarantine_dir(config, self._given_quarantine)

    # -- the service's side ----------------------------------------------------------------

    @property
    def config(self) -> Config:
        with self._lock:
            return self._config

    def replace(self, config: Config, alerts: AlertDispatcher | None) -> AlertDispatcher | None:
        """Use *config* (and *alerts*) from the next report on; the old dispatcher, to stop."""
        with self._lock:
            self._config, old = config, self._alerts
            self._alerts = alerts
        return old

    def close(self) -> None:
        self._worker.shutdown(wait=True)
        self._drop_store()
        if self._alerts is not None:
            self._alerts.stop(timeout=10.0)


class IngestService(LmtpDoor):
    """:class:`smtpplus_milter.daemon.Service` for ``ingest --serve``: LMTP on *listen*."""

    def __init__(
        self,
        listen: SocketSpec,
        handler: IngestHandler,
        load: Callable[[], Config],
        log: Any,
        alerts_of: Callable[[Config], AlertDispatcher | None],
    ) -> None:
        # A stop lets the reports being taken finish and be answered (a cut one is sent again by
        # Postfix and found to be a duplicate, but an answer saves the second delivery).
        super().__init__(
            listen,
            handler,
            session_class=_Session,
            ident="smtpplus-milter ingest",
            data_size_limit=MAX_REPORT_BYTES,
            drain_seconds=DRAIN_SECONDS,
            load=load,
            log=log,
        )
        self._ingest = handler
        self._alerts_of = alerts_of

    def reload(self) -> None:
        config = self._reread()
        if config is None:
            return
        if config.tracking is None:
            self._log.error("config_reload_failed", problems=[f"{config.path}: tracking is off: kept the old config"])
            return
        if config.bounces.ingest_listen != self._listen:
            self._log.warning(
                "config_reload_partial",
                reason=f"bounces.ingest_listen changed to {config.bounces.ingest_listen}: "
                "restart ingest --serve to move",
            )
        old = self._ingest.replace(config, self._alerts_of(config))
        if old is not None:
            old.stop(timeout=10.0)
        self._log.info("config_reloaded", path=str(config.path))

    def details(self) -> Mapping[str, object]:
        config = self._ingest.config
        return {"listen": str(self._listen), "node": config.tracking.node if config.tracking else None}
