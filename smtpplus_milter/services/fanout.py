"""``smtpplus-milter fanout``: the content filter that gives each recipient a copy of their own.

The milter tags a message that needs splitting (``X-SMTPPlus-Fanout: <queue id> <mode>``); a
header check sends it to this filter through Postfix's LMTP client with a recipient limit of 1,
so each delivery here carries one recipient. Per delivery (docs/fanout.md):

1. The journal (infra/fanout_journal.py) already has (queue id, recipient): the copy was made and
   only Postfix's answer was lost. Answer ``250`` with the queue id remembered; send nothing.
2. Otherwise build the copy (``core.fanout.make_copy``), send it by SMTP to ``fanout.reinject``
   (a loopback smtpd that skips the milter) with the same envelope sender and that one recipient,
   read the new queue id from its 250 (``queued as X``), write the journal (on disk before we go
   on), and answer ``250 2.0.0 Ok: queued as X``: the log follower links that copy to the
   original message and recipient, as for any local relay.
3. Re-injection refused or failed, or the journal unreadable: ``451 4.3.0``; Postfix keeps the
   message and delivers it again later. No copy is lost.

For a tag that names a list and a user (``<queue id> each <list> <user>``) whose list has
``unsubscribe`` in this filter's config, each copy gets that recipient's ``List-Unsubscribe`` and
``List-Unsubscribe-Post`` (core/unsubscribe.py; docs/unsubscribe.md). Without the key (no
``secret_file`` yet) such a copy is deferred (451) rather than sent without them.

A copy the core could not read (``problem`` set) and a message without a tag go on unchanged,
never dropped or bounced. The journal write failing after the copy was sent is logged and
answered 250 all the same: a 451 there would make Postfix send the recipient a second copy.

The one duplicate left: the process dies between the re-injection's 250 and the journal's commit.

Deliveries run on a pool of worker threads, so one slow re-injection does not hold the others;
the re-injection connections are kept and reused (RSET between copies when one was refused).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import smtplib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import Envelope, Session

from smtpplus_milter.config import Config, HostPort
from smtpplus_milter.core.fanout import TAG, Copy, Tag, make_copy
from smtpplus_milter.infra.fanout_journal import FanoutJournal, JournalError
from smtpplus_milter.observe.metrics import FanoutMetrics
from smtpplus_milter.services.lmtp import LmtpDoor, OneRecipient, hostname

# Worker threads: re-injections in flight at once (each waits on the loopback smtpd's reply).
WORKERS = 4
# Each step of a re-injection (connect, MAIL, RCPT, DATA's reply) may take this long; Postfix's
# own LMTP client waits far longer (lmtp_data_done_timeout, 600 s) before it gives up on us.
REINJECT_TIMEOUT = 60.0
# After a stop, how long the deliveries in hand may take to be answered.
DRAIN_SECONDS = 30.0
# The journal is pruned at most this often (on the worker that happens to take a delivery).
PRUNE_EVERY = 3600.0
# What Postfix's smtpd (and most servers) say in the 250 after DATA.
_QUEUED_AS = re.compile(rb"queued as ([0-9A-Za-z]+)")


class ReinjectError(Exception):
    """The re-injection smtpd refused the copy, or could not be reached; the text says which."""


@dataclass(frozen=True)
class Sent:
    new_queue_id: str | None  # None: the 250 named no queue id (the copy is logged without a link)
    reply: str


class Reinjector:
    """Send one copy to one recipient over SMTP, reusing up to *pool* idle connections."""

    def __init__(self, target: HostPort, *, pool: int = WORKERS, timeout: float = REINJECT_TIMEOUT) -> None:
        self.target = target
        self._timeout = timeout
        self._pool = pool
        self._idle: list[smtplib.SMTP] = []
        self._lock = threading.Lock()
        self._name = hostname()

    def _connect(self) -> smtplib.SMTP:
        try:
            client = smtplib.SMTP(self.target.host, self.target.port, self._name, timeout=self._timeout)
            client.ehlo()
        except (OSError, smtplib.SMTPException) as exc:
            raise ReinjectError(f"cannot reach {self.target}: {exc}") from exc
        return client

    def _take(self) -> tuple[smtplib.SMTP, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._connect(), False

    def _give_back(self, client: smtplib.SMTP) -> None:
        with self._lock:
            if len(self._idle) < self._pool:
                self._idle.append(client)
                return
        _close(client)

    def send(self, sender: str, recipient: str, data: bytes, options: tuple[str, ...] = ()) -> Sent:
        # An address in UTF-8 goes out as it came (Postfix passed SMTPUTF8, or it is the server's
        # to refuse); smtplib would otherwise fail to encode it before sending anything.
        utf8 = not (sender.isascii() and recipient.isascii())
        client, reused = self._take()
        try:
            code, text = self._mail(client, sender, options, utf8)
        except OSError:  # smtplib's errors are OSErrors too
            code, text = 421, b"connection closed"
        if code == 421 and reused:
            # An idle connection the smtpd closed meanwhile (its idle timeout, a restart): nothing
            # of this copy was sent on it, so a fresh connection cannot make a duplicate.
            _close(client)
            client = self._connect()
            try:
                code, text = self._mail(client, sender, options, utf8)
            except OSError as exc:
                _close(client)
                raise ReinjectError(f"{self.target} closed the connection at MAIL FROM: {exc}") from exc
        elif code == 421:
            _close(client)
            raise ReinjectError(f"{self.target} closed the connection at MAIL FROM: {_text(text)}")
        try:
            if code != 250:
                raise ReinjectError(f"{self.target} refused MAIL FROM:<{sender}>: {code} {_text(text)}")
            code, text = client.rcpt(recipient)
            if code not in (250, 251):
                raise ReinjectError(f"{self.target} refused RCPT TO:<{recipient}>: {code} {_text(text)}")
            code, text = client.data(data)
            if code != 250:
                raise ReinjectError(f"{self.target} refused the copy after DATA: {code} {_text(text)}")
        except ReinjectError:
            # A refusal leaves the connection usable once the transaction is reset.
            try:
                client.rset()
            except (OSError, smtplib.SMTPException):
                _close(client)
            else:
                self._give_back(client)
            raise
        except (OSError, smtplib.SMTPException) as exc:
            _close(client)
            raise ReinjectError(f"re-injection to {self.target} failed: {type(exc).__name__}: {exc}") from exc
        self._give_back(client)
        found = _QUEUED_AS.search(text)
        return Sent(found.group(1).decode("ascii") if found else None, _text(text))

    def _mail(self, client: smtplib.SMTP, sender: str, options: tuple[str, ...], utf8: bool) -> tuple[int, bytes]:
        wanted = [option for option in options if _offered(client, option)]
        client.command_encoding = "utf-8" if utf8 or "SMTPUTF8" in wanted else "ascii"
        return client.mail(sender, wanted)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for client in idle:
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                _close(client)


def _offered(client: smtplib.SMTP, option: str) -> bool:
    """Pass an envelope option on only when the re-injection smtpd offers it."""
    upper = option.upper()
    if upper.startswith("BODY="):
        return client.has_extn("8bitmime")
    if upper == "SMTPUTF8":
        return client.has_extn("smtputf8")
    return False  # SIZE, DSN's RET/ENVID...: Postfix's LMTP client passes them, we need none


def _close(client: smtplib.SMTP) -> None:
    try:
        client.close()
    except OSError:
        pass


def _text(text: bytes) -> str:
    return text.decode("utf-8", "replace").replace("\n", " ")


class FanoutHandler(OneRecipient):
    """The aiosmtpd handler: one recipient per delivery, each delivery on a worker thread."""

    def __init__(
        self,
        config: Config,
        log: Any,
        metrics: FanoutMetrics,
        journal: FanoutJournal,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        reinjector: Reinjector | None = None,
    ) -> None:
        self._config = config
        self._log = log
        self._metrics = metrics
        self._journal = journal
        self._now = now
        self._reinjector = reinjector or Reinjector(config.fanout.reinject)
        self._workers = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="fanout")
        self._lock = threading.Lock()
        self._pruned_at = 0.0
        self.in_flight = 0

    # -- aiosmtpd hooks --------------------------------------------------------------------

    async def handle_DATA(self, server: LMTP, session: Session, envelope: Envelope) -> str:
        raw = bytes(envelope.original_content or b"")
        # aiosmtpd spells the null sender (a bounce's) "<>"; smtplib writes "" as MAIL FROM:<>.
        sender = "" if envelope.mail_from in (None, "<>") else envelope.mail_from
        recipient = envelope.rcpt_tos[0]
        options = tuple(envelope.mail_options)
        self.in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._workers, self.deliver, raw, sender, recipient, options)
        finally:
            self.in_flight -= 1

    # -- on a worker thread ----------------------------------------------------------------

    def deliver(self, raw: bytes, sender: str, recipient: str, options: tuple[str, ...] = ()) -> str:
        """The reply to Postfix for this one delivery (see the module docstring)."""
        self._maybe_prune()
        copy = make_copy(raw, recipient)
        tag = copy.tag
        queue_id = tag.queue_id if tag is not None else None
        fields: dict[str, object] = {"queue_id": queue_id, "recipient": recipient}
        if tag is not None:
            try:
                made = self._journal.find(tag.queue_id, recipient)
            except JournalError as exc:
                return self._deferred(fields, str(exc))
            if made is not None:
                self._counted("replayed", fields, new_queue_id=made.new_queue_id)
                return _accepted(made.new_queue_id)
            if tag.list_name is not None and copy.problem is None:
                fields["list"] = tag.list_name
                headed = self._with_unsubscribe(raw, recipient, tag, fields)
                if isinstance(headed, str):
                    return self._deferred(fields, headed)
                copy = headed
        if tag is None:
            # Not split by us (should not happen: only the tag routes a message here); it goes on
            # as it came, and with no queue id to key on a retry would send it again.
            result, data, problem = "passed", raw, copy.problem or f"no {TAG} header"
        elif copy.problem is not None:
            result, data, problem = "passed", copy.data, copy.problem
        else:
            result, data, problem = ("rewritten" if copy.rewritten else "unchanged"), copy.data, None
        try:
            sent = self._reinjector.send(sender, recipient, data, options)
        except ReinjectError as exc:
            return self._deferred(fields, str(exc))
        if tag is not None:
            try:
                self._journal.record(tag.queue_id, recipient, sent.new_queue_id, self._now())
            except JournalError as exc:
                # The copy is out: a 451 now would make Postfix send it a second time.
                self._log.error("fanout_journal_failed", reason=str(exc), **fields)
        extra = {"problem": problem} if problem is not None else {}
        if sent.new_queue_id is None:
            extra["reply"] = sent.reply  # no link to the copy: say what the smtpd answered
        self._counted(result, fields, new_queue_id=sent.new_queue_id, **extra)
        return _accepted(sent.new_queue_id)

    def _with_unsubscribe(self, raw: bytes, recipient: str, tag: Tag, fields: dict[str, object]) -> Copy | str:
        """The copy with *recipient*'s List-Unsubscribe headers, or why it must wait (no key).

        A list that is unknown here or has no unsubscribe (any more) gets the copy without them;
        so does an address too long for a token (noted in the log line).
        """
        config = self.config
        assert tag.list_name is not None and tag.user is not None
        section = config.settings.lists.get(tag.list_name)
        if section is None or section.unsubscribe is None:
            fields["unsubscribe"] = "the list has no unsubscribe in this config"
            return make_copy(raw, recipient)
        settings = config.unsubscribe.get(tag.list_name)
        if settings is None:
            return f"lists.{tag.list_name}.unsubscribe needs secret_file, which is not read yet"
        try:
            extra = settings.headers(tag.user, tag.list_name, recipient, tag.queue_id)
        except ValueError as exc:
            fields["unsubscribe"] = str(exc)
            return make_copy(raw, recipient)
        return make_copy(raw, recipient, extra_headers=extra)

    def _counted(self, result: str, fields: dict[str, object], **more: object) -> None:
        self._metrics.copies.labels(result=result).inc()
        level = self._log.warning if result in ("passed", "deferred") else self._log.info
        level("fanout_copy", **fields, result=result, **more)

    def _deferred(self, fields: dict[str, object], reason: str) -> str:
        self._counted("deferred", fields, new_queue_id=None, reason=reason)
        return "451 4.3.0 Copy not made now, try again later"

    def _maybe_prune(self) -> None:
        with self._lock:
            if self._pruned_at and time.monotonic() - self._pruned_at < PRUNE_EVERY:
                return
            self._pruned_at = time.monotonic()
            days = self._config.fanout.journal_days
        try:
            forgotten = self._journal.prune(self._now(), days)
        except JournalError as exc:
            self._log.error("fanout_journal_failed", reason=f"prune: {exc}")
            return
        if forgotten:
            self._log.info("fanout_journal_pruned", forgotten=forgotten, days=days)

    # -- the service's side ----------------------------------------------------------------

    @property
    def config(self) -> Config:
        with self._lock:
            return self._config

    def replace(self, config: Config) -> None:
        """Use *config* from the next delivery on (a new reinject target gets new connections)."""
        with self._lock:
            self._config = config
            if config.fanout.reinject != self._reinjector.target:
                old, self._reinjector = self._reinjector, Reinjector(config.fanout.reinject)
                old.close()

    def close(self) -> None:
        self._workers.shutdown(wait=True)
        self._reinjector.close()
        self._journal.close()


def _accepted(new_queue_id: str | None) -> str:
    return f"250 2.0.0 Ok: queued as {new_queue_id}" if new_queue_id else "250 2.0.0 Ok: queued"


class FanoutService(LmtpDoor):
    """:class:`smtpplus_milter.daemon.Service` for ``fanout``: LMTP on ``fanout.listen``."""

    def __init__(self, handler: FanoutHandler, load: Callable[[], Config], log: Any) -> None:
        # Postfix refuses a message over message_size_limit before it is queued, so what reaches us
        # is bounded by limits.max_message_bytes plus the headers added on the way (a margin).
        limit = handler.config.settings.limits.max_message_bytes * 2 + 1024 * 1024
        super().__init__(
            handler.config.fanout.listen,
            handler,
            session_class=LMTP,
            ident="smtpplus-milter fanout",
            data_size_limit=limit,
            drain_seconds=DRAIN_SECONDS,
            load=load,
            log=log,
        )
        self._fanout = handler

    def reload(self) -> None:
        config = self._reread()
        if config is None:
            return
        old = self._fanout.config.fanout
        moved = [
            f"fanout.{key} changed to {getattr(config.fanout, key)}"
            for key in ("listen", "journal", "metrics_listen")
            if getattr(config.fanout, key) != getattr(old, key)
        ]
        if moved:
            self._log.warning("config_reload_partial", reason="; ".join(moved) + ": restart fanout to apply")
        self._fanout.replace(config)
        self._log.info("config_reloaded", path=str(config.path))

    def details(self) -> Mapping[str, object]:
        fanout = self._fanout.config.fanout
        return {"listen": str(self._listen), "reinject": str(fanout.reinject), "journal": str(fanout.journal)}
