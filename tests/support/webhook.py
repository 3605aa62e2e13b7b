"""A real HTTP webhook receiver on loopback for the alert tests (http.server in a thread).

``status`` is what it answers (200, or 500 to play a broken receiver); ``hang_seconds`` makes it
wait that long before answering, like a receiver that is stuck. Every request is recorded.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


class WebhookReceiver:
    def __init__(self, *, status: int = 200, hang_seconds: float = 0.0) -> None:
        self.status = status
        self.hang_seconds = hang_seconds
        self.requests: list[tuple[str, Any]] = []  # (path, parsed JSON body)
        self._arrived = threading.Condition()
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                try:
                    parsed: Any = json.loads(body)
                except ValueError:
                    parsed = body
                with receiver._arrived:
                    receiver.requests.append((self.path, parsed))
                    receiver._arrived.notify_all()
                if receiver.hang_seconds:
                    receiver._release.wait(receiver.hang_seconds)
                try:
                    self.send_response(receiver.status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                except OSError:
                    pass  # the client gave up waiting: that is the point of a hang

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread: threading.Thread | None = None

    def start(self) -> WebhookReceiver:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()  # hanging handlers answer now
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
            self._thread = None
        self._server.server_close()

    def bodies(self) -> list[Any]:
        with self._arrived:
            return [body for _path, body in self.requests]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.requests) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"webhook {self.url}: {len(self.requests)} of {count} requests in {timeout}s")
                self._arrived.wait(remaining)
            return [body for _path, body in self.requests]

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
