"""An SMTP sink on loopback that can hold its clients at MAIL FROM until a test opens its gate.

For tests of several senders sharing one outbox: while the gate is closed, every sender that
reached this server waits in MAIL FROM, so a test can see that two senders were in the middle of
sending at the same moment (``held``). Nothing is recorded before DATA, so a sender that gives up
while held leaves no message behind and cannot make a retry look like a duplicate; the gate opens
by itself after ``max_hold`` seconds, below the senders' own SMTP timeout (30 s), for the same
reason. Every message that arrives is recorded, like the lab's sink.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from types import TracebackType

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from lab.harness import ReceivedMessage, free_port


class GatedSink:
    def __init__(self, *, max_hold: float = 20.0) -> None:
        self.port = free_port()
        self.max_hold = max_hold
        self._gate = threading.Event()
        self._changed = threading.Condition()
        self._messages: list[ReceivedMessage] = []
        self._held = 0
        self._most_held = 0
        self._controller: Controller | None = None

    # --- what a test looks at -------------------------------------------------------------

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self._changed:
            return list(self._messages)

    @property
    def held(self) -> int:
        """How many sessions are waiting at the closed gate now."""
        with self._changed:
            return self._held

    @property
    def most_held(self) -> int:
        """The most sessions that were waiting at the gate at one moment."""
        with self._changed:
            return self._most_held

    def close_gate(self) -> None:
        self._gate.clear()

    def open_gate(self) -> None:
        self._gate.set()

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` (called under the lock, which is reentrant) is true; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.5))
        return True

    # --- the SMTP side (aiosmtpd handler hooks, run in the controller's thread) -------------

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        with self._changed:
            self._held += 1
            self._most_held = max(self._most_held, self._held)
            self._changed.notify_all()
        try:
            deadline = time.monotonic() + self.max_hold
            # Polling, not a blocking wait: other sessions must keep being served meanwhile.
            while not self._gate.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            with self._changed:
                self._held -= 1
                self._changed.notify_all()
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content
        with self._changed:
            self._messages.append(
                ReceivedMessage(
                    mail_from=envelope.mail_from or "",
                    rcpt_tos=list(envelope.rcpt_tos),
                    data=bytes(content) if content is not None else b"",
                    received_at=time.time(),
                )
            )
            self._changed.notify_all()
        return "250 2.0.0 Ok: stored by the gated sink"

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> GatedSink:
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port, ready_timeout=10.0)
        self._controller.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._gate.set()  # nobody stays held while the server stops
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()
