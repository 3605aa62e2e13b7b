"""The re-injection smtpd as the fanout filter sees it: an SMTP sink on loopback that answers
``250 2.0.0 Ok: queued as <id>`` like Postfix's smtpd, with a new id per message, and that a test
can make refuse at RCPT or after DATA (``rcpt_reply`` / ``data_reply``), answer without a queue
id (``queue_ids = False``) or take its time (``rcpt_delay``, ``delay``). Every accepted message is recorded with
the id it was given."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass
from types import TracebackType

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from lab.harness import free_port


@dataclass(frozen=True)
class Reinjected:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    queue_id: str
    mail_options: tuple[str, ...]


class ReinjectSink:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.rcpt_reply: str | None = None  # e.g. "550 5.1.1 no": every RCPT refused with it
        self.data_reply: str | None = None  # e.g. "451 4.3.0 later": every message refused after DATA
        self.queue_ids = True
        self.delay = 0.0  # before the answer after DATA (the message is not recorded yet)
        self.rcpt_delay = 0.0  # before the answer at RCPT
        self._ids = itertools.count(1)
        self._changed = threading.Condition()
        self._messages: list[Reinjected] = []
        self._controller: Controller | None = None

    @property
    def messages(self) -> list[Reinjected]:
        with self._changed:
            return list(self._messages)

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Reinjected]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"reinject sink: {len(self._messages)} of {count} messages within {timeout}s")
                self._changed.wait(left)
            return list(self._messages)

    # --- aiosmtpd hooks -------------------------------------------------------------------

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if self.rcpt_delay:
            await asyncio.sleep(self.rcpt_delay)
        if self.rcpt_reply is not None:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.data_reply is not None:
            return self.data_reply
        queue_id = f"C{next(self._ids):06d}X"
        with self._changed:
            self._messages.append(
                Reinjected(
                    mail_from=envelope.mail_from or "",
                    rcpt_tos=tuple(envelope.rcpt_tos),
                    data=bytes(envelope.original_content or b""),
                    queue_id=queue_id,
                    mail_options=tuple(envelope.mail_options),
                )
            )
            self._changed.notify_all()
        return f"250 2.0.0 Ok: queued as {queue_id}" if self.queue_ids else "250 2.0.0 Ok"

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> ReinjectSink:
        self._controller = Controller(
            self, hostname="127.0.0.1", port=self.port, ready_timeout=10.0, enable_SMTPUTF8=True
        )
        self._controller.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()
