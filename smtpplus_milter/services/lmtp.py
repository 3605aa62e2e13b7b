"""The LMTP server both LMTP doors run (``ingest --serve`` and ``fanout``): listen, serve, drain.

aiosmtpd's LMTP protocol on a unix or inet socket (a maintained asyncio implementation: the
protocol is not ours to write again), on an asyncio loop of its own; each door brings its
session class and handler. A stop closes the listening socket, then waits up to *drain_seconds*
while the door still has deliveries in hand, so that they are answered rather than cut (a cut one
is delivered again by Postfix, which each door makes harmless, but an answer saves the retry).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any, Protocol

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import Envelope, Session

from smtpplus_milter.config import Config, SocketSpec
from smtpplus_milter.daemon import reread

# An idle LMTP connection is closed after this long (Postfix's client reconnects when it needs to).
IDLE_SECONDS = 300


class OneRecipient:
    """aiosmtpd handler part: one recipient per delivery, so the one reply after DATA is about it.

    LMTP answers DATA once per accepted recipient; taking one per transaction keeps the handler's
    one answer right (Postfix's ``_destination_recipient_limit = 1`` sends them so anyway). A
    second RCPT is told to come again in the next delivery.
    """

    async def handle_RCPT(
        self, server: LMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if envelope.rcpt_tos:
            return "452 4.5.3 One recipient per delivery: send this recipient again"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"


def hostname() -> str:
    """The name the server greets with: gethostname(), not getfqdn(): no DNS look-up at start."""
    return socket.gethostname()


class LmtpServer:
    """Serve *session* connections on *listen* until :meth:`stop`; then drain (see the module)."""

    def __init__(
        self, listen: SocketSpec, session: Callable[[], LMTP], in_flight: Callable[[], int], drain_seconds: float
    ) -> None:
        self._listen = listen
        self._session = session
        self._in_flight = in_flight
        self._drain_seconds = drain_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.ready = threading.Event()

    def serve(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        listen = self._listen
        if listen.path is not None:
            server = await self._loop.create_unix_server(self._session, path=str(listen.path))
        else:
            assert listen.port is not None  # an inet SocketSpec always has one
            server = await self._loop.create_server(self._session, host=listen.host, port=listen.port)
        self.ready.set()
        async with server:
            await self._stop.wait()
            server.close()
            deadline = self._loop.time() + self._drain_seconds
            while self._in_flight() and self._loop.time() < deadline:
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)


class Handler(Protocol):
    """What a door's aiosmtpd handler offers the service around it."""

    @property
    def in_flight(self) -> int: ...

    def close(self) -> None: ...


class LmtpDoor:
    """:class:`smtpplus_milter.daemon.Service` parts both LMTP doors share: serve *handler*'s
    sessions (*session_class*, aiosmtpd's LMTP or a subclass) on *listen*, stop and drain, close;
    each door adds ``reload`` and ``details``."""

    def __init__(
        self,
        listen: SocketSpec,
        handler: Handler,
        *,
        session_class: type[LMTP],
        ident: str,
        data_size_limit: int,
        drain_seconds: float,
        load: Callable[[], Config],
        log: Any,
    ) -> None:
        self._listen = listen
        self._handler = handler
        self._load = load
        self._log = log
        name = hostname()

        def session() -> LMTP:
            return session_class(
                handler,
                hostname=name,
                ident=ident,
                data_size_limit=data_size_limit,
                enable_SMTPUTF8=True,
                decode_data=False,
                timeout=IDLE_SECONDS,
            )

        self._server = LmtpServer(listen, session, lambda: handler.in_flight, drain_seconds)

    def serve(self) -> None:
        self._server.serve()

    def stop(self) -> None:
        self._server.stop()

    def busy(self) -> int:
        return self._handler.in_flight

    def close(self) -> None:
        self._handler.close()

    def _reread(self) -> Config | None:
        """The config file again, or None after logging why it was not taken (the old one stays)."""
        return reread(self._load, self._log)
