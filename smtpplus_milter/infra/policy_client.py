"""The milter's line to the policy daemon: "take back the count of this message" (docs/limits.md).

Postfix asks the policy daemon at end of data, before the milter sees the message; when the milter
then refuses it, the daemon has counted a message that was never sent. :class:`RefundSender`
tells the daemon (``request=smtpplus_refund`` with the login and the queue id, on
``policy.refund_listen``) from a thread of its own, so the mail path only puts a pair in a
bounded queue and never waits for the daemon. One connection is kept and reused; a failure is
retried once on a new connection and otherwise logged and dropped: the count then stays (the
limit errs towards less mail, never more).
"""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Callable

from smtpplus_milter.config.values import SocketSpec
from smtpplus_milter.core.policy_protocol import encode_request

REFUND = "smtpplus_refund"
QUEUE_SIZE = 10_000
TIMEOUT_SECONDS = 2.0
MAX_REPLY_BYTES = 4096


class RefundSender:
    """Sends refunds to the daemon on *spec* in the background; *on_result* gets ``refunded``,
    ``unknown`` (nothing counted under that id) or ``failed`` (with the reason) for each."""

    def __init__(self, spec: SocketSpec, on_result: Callable[[str, str], None] = lambda result, why: None) -> None:
        self.spec = spec
        self.on_result = on_result
        self._queue: queue.Queue[tuple[str, str] | None] = queue.Queue(QUEUE_SIZE)
        self._socket: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="policy-refunds", daemon=True)
        self._thread.start()

    def submit(self, login: str, queue_id: str) -> None:
        """Queue a refund; never blocks (a full queue drops it, reported as failed)."""
        try:
            self._queue.put_nowait((login, queue_id))
        except queue.Full:
            self.on_result("failed", "refund queue full")

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued (within *timeout*), then close."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            login, queue_id = item
            request = encode_request({"request": REFUND, "sasl_username": login, "queue_id": queue_id})
            reason = ""
            for _attempt in range(2):  # a kept connection the daemon closed meanwhile: once more
                try:
                    reply = self._ask(request)
                except OSError as exc:
                    reason = str(exc) or type(exc).__name__
                    self._close()
                    continue
                self.on_result("refunded" if reply == "OK" else "unknown", "")
                break
            else:
                self.on_result("failed", reason)
        self._close()

    def _ask(self, request: bytes) -> str:
        if self._socket is None:
            self._socket = self._connect()
        connection = self._socket
        connection.sendall(request)
        reply = b""
        while not reply.endswith(b"\n\n"):
            chunk = connection.recv(MAX_REPLY_BYTES)
            if not chunk or len(reply) + len(chunk) > MAX_REPLY_BYTES:
                raise ConnectionError("the policy daemon closed the connection")
            reply += chunk
        text = reply.decode("utf-8", "replace").strip()
        return text.removeprefix("action=")

    def _connect(self) -> socket.socket:
        spec = self.spec
        if spec.path is not None:
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            connection.settimeout(TIMEOUT_SECONDS)
            try:
                connection.connect(str(spec.path))
            except OSError:
                connection.close()
                raise
            return connection
        assert spec.host is not None and spec.port is not None
        return socket.create_connection((spec.host, spec.port), timeout=TIMEOUT_SECONDS)

    def _close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
