"""``smtpplus-milter web``: the unsubscribe endpoint (List-Unsubscribe URLs, RFC 8058 one-click).

Two halves. :func:`respond` is the application as a plain function over values (a
:class:`Request` in, a :class:`Response` out; the token key, the known lists, the clock and the
store's ``record`` passed in), so every rule below is tested without a socket. :class:`WebService`
serves it with waitress (a maintained production WSGI server; the stdlib's ``http.server`` says
itself it is not one) as a :class:`smtpplus_milter.daemon.Service`.

The rules, and why:

* ``POST /u/TOKEN`` records the unsubscribe. A receiver's one-click POST carries the body
  ``List-Unsubscribe=One-Click`` (urlencoded or multipart/form-data): source ``one_click``; any
  other body (the page's own form) is the person who pressed the button: source ``page``. The
  answer is 200 and a small page, never a redirect and never a cookie (receivers do not follow
  redirects and must not be tracked). A repeat is 200 as well and changes nothing (the store
  says it was already there).
* ``GET /u/TOKEN`` only shows a page with one button that POSTs to the same URL: mail scanners
  and link previews fetch every URL in a message, so a GET must never unsubscribe anybody.
* A token that is not ours (forged, truncated, made with another key, or for a list this host
  does not know): 404 whatever the method, nothing recorded.
* The store cannot take the unsubscribe: 503 with ``Retry-After`` — never a 200 that recorded
  nothing, so a receiver tries again.
* Bodies over :data:`MAX_BODY_BYTES` (64 KiB; a real one-click body is 26 bytes) are refused with
  413: by waitress before the body is read, and here from ``Content-Length``.
* ``GET /healthz``: 200. Any other path: 404; another method on a token URL: 405.

Every store write goes through one writer thread that owns the store connection
(:class:`StoreWriter`), like ``ingest --serve``: SQLite wants one writer anyway, and a request
waits for its own write to be committed before it is answered.
"""

from __future__ import annotations

import concurrent.futures
import email.parser
import email.policy
import html
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from smtpplus_milter.config import Config, HostPort
from smtpplus_milter.core.tokens import read_unsubscribe_token
from smtpplus_milter.daemon import reread
from smtpplus_milter.infra.store import TrackingStore, open_store
from smtpplus_milter.infra.store.base import Unsubscribe

# RFC 8058 section 3.1: the body a receiver POSTs, as one form field.
ONE_CLICK_FIELD = ("List-Unsubscribe", "One-Click")
MAX_BODY_BYTES = 64 * 1024
PREFIX = "/u/"
# A request waits this long for its write; then 503 (the writer may still record it: a repeat is harmless).
RECORD_TIMEOUT_SECONDS = 10.0
RETRY_AFTER_SECONDS = 60
# waitress's worker threads: requests answered at once (the store write is the slow part).
THREADS = 8
# After a stop, how long the requests in hand may take to be answered.
DRAIN_SECONDS = 10.0

# Nothing is loaded from elsewhere: no scripts, no images, no fonts; the form posts only to us.
CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"
_COMMON_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
)
_REASONS = MappingProxyType(
    {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 413: "Content Too Large", 503: "Service Unavailable"}
)


@dataclass(frozen=True)
class Request:
    """What the application reads of one HTTP request."""

    method: str
    path: str
    content_type: str = ""
    content_length: int | None = None
    body: bytes = b""


@dataclass(frozen=True)
class Response:
    """The answer; *recorded* is ``(list, source)`` when this request recorded a new unsubscribe."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    recorded: tuple[str, str] | None = None

    @property
    def status_line(self) -> str:
        return f"{self.status} {_REASONS.get(self.status, '')}".rstrip()


@dataclass(frozen=True)
class Site:
    """What the application needs of the config: the token key and the lists that exist."""

    key: bytes
    lists: frozenset[str]

    @classmethod
    def from_config(cls, config: Config) -> Site:
        if config.secret is None:  # load_config reads the key whenever web: is set
            raise ValueError(f"{config.path}: no secret_file key: the web endpoint cannot read tokens")
        return cls(config.secret.key, frozenset(config.settings.lists))


class StoreUnavailable(Exception):
    """The unsubscribe could not be recorded now (store down, timed out); the reason is the message."""


# Record one unsubscribe: True if new, False if it was there already; StoreUnavailable otherwise.
Record = Callable[[Unsubscribe], bool]


def mask(address: str) -> str:
    """``bob@example.net`` -> ``b***@example.net``: enough for its owner to recognise, little for others."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address[:1] + "***"
    return f"{local[:1]}***@{domain}"


def one_click(content_type: str, body: bytes) -> bool:
    """True if *body* carries RFC 8058's ``List-Unsubscribe=One-Click`` field."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "multipart/form-data":
        return ONE_CLICK_FIELD in _multipart_fields(content_type, body)
    # application/x-www-form-urlencoded, and receivers that send the same text without a type.
    text = body.decode("latin-1")
    return ONE_CLICK_FIELD in urllib.parse.parse_qsl(text.strip(), keep_blank_values=True)


def _multipart_fields(content_type: str, body: bytes) -> list[tuple[str, str]]:
    """The (name, value) of each text field of a multipart/form-data body (stdlib email parser)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    fields = []
    if not message.is_multipart():
        return []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields.append((name, payload.decode("utf-8", "replace").strip()))
    return fields


def respond(request: Request, site: Site, record: Record, now: Callable[[], datetime]) -> Response:
    """The answer to *request* (see the module docstring for every rule)."""
    if request.path == "/healthz":
        if request.method not in ("GET", "HEAD"):
            return _text(405, "Method not allowed\n", allow="GET")
        return _text(200, "ok\n")
    if not request.path.startswith(PREFIX):
        return _text(404, "Not found\n")
    token = read_unsubscribe_token(request.path[len(PREFIX) :], site.key)
    if token is None or token.list not in site.lists:
        return _page(404, "Link not valid", "<p>This unsubscribe link is not valid. Please check the address.</p>")
    if request.method == "GET":
        return _confirm_page(token.list, token.recipient)
    if request.method != "POST":
        return _text(405, "Method not allowed\n", allow="GET, POST")
    if (request.content_length or 0) > MAX_BODY_BYTES or len(request.body) > MAX_BODY_BYTES:
        return _text(413, f"Request body over {MAX_BODY_BYTES} bytes\n")
    source = "one_click" if one_click(request.content_type, request.body) else "page"
    item = Unsubscribe(token.user, token.list, token.recipient, now(), source, "web")
    try:
        new = record(item)
    except StoreUnavailable:
        response = _page(503, "Please try again", "<p>We could not record this right now. Please try again later.</p>")
        return Response(503, (*response.headers, ("Retry-After", str(RETRY_AFTER_SECONDS))), response.body)
    done = _page(
        200,
        "Unsubscribed",
        f"<p>{html.escape(mask(token.recipient))} will get no more mail from the list "
        f"<strong>{html.escape(token.list)}</strong>.</p>",
    )
    return Response(200, done.headers, done.body, (token.list, source) if new else None)


_STYLE = (
    "body{font:1.125rem/1.5 system-ui,sans-serif;max-width:36rem;margin:2rem auto;padding:0 1rem;color:#1a1a1a}"
    "button{font:inherit;padding:.6rem 1.4rem;border:2px solid #1a4fd6;border-radius:.3rem;background:#1a4fd6;"
    "color:#fff;cursor:pointer}"
    "button:focus-visible{outline:3px solid #b35900;outline-offset:3px}"
)


def _page(status: int, title: str, content: str) -> Response:
    body = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main><h1>{html.escape(title)}</h1>{content}</main></body></html>\n"
    )
    return Response(status, (("Content-Type", "text/html; charset=utf-8"), *_COMMON_HEADERS), body.encode())


def _confirm_page(list_name: str, recipient: str) -> Response:
    # One form, posting to this same URL (no action attribute), one labelled button; no script.
    return _page(
        200,
        f"Unsubscribe from {list_name}",
        f'<p id="what">Stop sending the list <strong>{html.escape(list_name)}</strong> to '
        f"<strong>{html.escape(mask(recipient))}</strong>?</p>"
        '<form method="post"><input type="hidden" name="confirm" value="yes">'
        '<button type="submit" aria-describedby="what">Unsubscribe</button></form>',
    )


def _text(status: int, text: str, allow: str | None = None) -> Response:
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "text/plain; charset=utf-8"), *_COMMON_HEADERS)
    if allow is not None:
        headers = (*headers, ("Allow", allow))
    return Response(status, headers, text.encode())


# --- the store writer -------------------------------------------------------------------------


class StoreWriter:
    """One thread that owns the store and records unsubscribes for every request thread.

    A failed write drops the connection (the next one reconnects: the failure may have been the
    connection) and is :class:`StoreUnavailable` to the request.
    """

    def __init__(self, url: str, log: Any) -> None:
        self._url = url
        self._log = log
        self._store: TrackingStore | None = None
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="web-store")

    def record(self, item: Unsubscribe) -> bool:
        future = self._worker.submit(self._record, item)
        try:
            return future.result(RECORD_TIMEOUT_SECONDS)
        except concurrent.futures.TimeoutError:
            raise StoreUnavailable(f"the store did not answer within {RECORD_TIMEOUT_SECONDS:.0f} s") from None

    def use(self, url: str) -> None:
        """Record into *url* from the next unsubscribe on (a reload)."""
        self._worker.submit(self._switch, url)

    def close(self) -> None:
        self._worker.shutdown(wait=True)
        self._drop()

    def _switch(self, url: str) -> None:
        if url != self._url:
            self._drop()
            self._url = url

    def _record(self, item: Unsubscribe) -> bool:
        try:
            if self._store is None:
                store = open_store(self._url)
                try:
                    store.migrate()
                except BaseException:
                    store.close()
                    raise
                self._store = store
            return self._store.record_unsubscribe(item)
        except Exception as exc:  # any store failure: answered 503, retried by the receiver
            self._drop()
            reason = f"{type(exc).__name__}: {exc}"
            self._log.error("unsubscribe_not_recorded", reason=reason, list=item.list_name, user=item.user)
            raise StoreUnavailable(reason) from exc

    def _drop(self) -> None:
        if self._store is not None:
            try:
                self._store.close()
            except Exception as exc:  # closing a broken connection: nothing more to do
                self._log.warning("store_close_failed", reason=f"{type(exc).__name__}: {exc}")
            self._store = None


# --- WSGI and the service ---------------------------------------------------------------------


class WebApp:
    """The WSGI application around :func:`respond`: the current site, the writer, metrics, the log."""

    def __init__(self, site: Site, writer: StoreWriter, log: Any, count: Callable[[str, str], None]) -> None:
        self._site = site
        self._writer = writer
        self._log = log
        self._count = count
        self._lock = threading.Lock()
        self.in_flight = 0

    @property
    def site(self) -> Site:
        with self._lock:
            return self._site

    def replace(self, site: Site) -> None:
        with self._lock:
            self._site = site

    def __call__(self, environ: Mapping[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with self._lock:
            self.in_flight += 1
            site = self._site
        try:
            response = respond(_request(environ), site, self._writer.record, lambda: datetime.now(UTC))
        finally:
            with self._lock:
                self.in_flight -= 1
        if response.recorded is not None:
            list_name, source = response.recorded
            self._count(list_name, source)
            self._log.info("unsubscribed", list=list_name, source=source)
        start_response(response.status_line, [*response.headers, ("Content-Length", str(len(response.body)))])
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else response.body]


def _request(environ: Mapping[str, Any]) -> Request:
    """The :class:`Request` of a WSGI environ; reads at most one byte over the body bound."""
    method = str(environ.get("REQUEST_METHOD", "GET"))
    try:
        length: int | None = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = None
    body = b""
    if method == "POST" and length is not None and 0 < length <= MAX_BODY_BYTES:
        body = environ["wsgi.input"].read(length)
    elif method == "POST" and length is None:
        body = environ["wsgi.input"].read(MAX_BODY_BYTES + 1)
    # PATH_INFO is decoded as latin-1 by WSGI; a token is plain ASCII, anything else is not ours.
    return Request(method, str(environ.get("PATH_INFO", "")), str(environ.get("CONTENT_TYPE", "")), length, body)


class WebService:
    """:class:`smtpplus_milter.daemon.Service` for ``web``: waitress on *listen* until a stop."""

    def __init__(self, listen: HostPort, app: WebApp, writer: StoreWriter, load: Callable[[], Config], log: Any):
        from waitress.server import create_server

        self._listen = listen
        self._app = app
        self._writer = writer
        self._load = load
        self._log = log
        self._stopping = threading.Event()
        # The server binds here, in start(): a port in use is a start-up failure, not a thread's.
        self._server: Any = create_server(
            app,
            host=listen.host,
            port=listen.port,
            threads=THREADS,
            max_request_body_size=MAX_BODY_BYTES,
            # A slow client holds a connection, never a worker thread (waitress buffers the whole
            # request before the application runs); these bound how long and how much it may hold.
            channel_timeout=30,
            max_request_header_size=16 * 1024,
            connection_limit=500,
            ident="smtpplus-milter web",
            clear_untrusted_proxy_headers=True,
            asyncore_loop_timeout=0.2,
        )

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    def serve(self) -> None:
        from waitress import wasyncore

        server, socket_map = self._server, self._server._map
        while not self._stopping.is_set():
            wasyncore.loop(timeout=0.2, map=socket_map, count=1)
        # No new connections; let the requests in hand be answered, then close everything.
        wasyncore.dispatcher.close(server)
        deadline = time.monotonic() + DRAIN_SECONDS
        while self._app.in_flight and time.monotonic() < deadline:
            wasyncore.loop(timeout=0.05, map=socket_map, count=1)
        for _ in range(5):  # flush the last answers' bytes
            wasyncore.loop(timeout=0.01, map=socket_map, count=1)
        server.task_dispatcher.shutdown()
        wasyncore.close_all(socket_map)

    def stop(self) -> None:
        self._stopping.set()

    def busy(self) -> int:
        return self._app.in_flight

    def close(self) -> None:
        self._writer.close()

    def reload(self) -> None:
        config = reread(self._load, self._log)
        if config is None:
            return
        if config.web is None or config.tracking is None or config.secret is None:
            self._log.error("config_reload_failed", problems=[f"{config.path}: no web: section: kept the old config"])
            return
        if config.web.listen != self._listen:
            self._log.warning(
                "config_reload_partial", reason=f"web.listen changed to {config.web.listen}: restart web to move"
            )
        self._writer.use(config.tracking.store)
        self._app.replace(Site.from_config(config))
        self._log.info("config_reloaded", path=str(config.path))

    def details(self) -> Mapping[str, object]:
        return {"listen": f"{self._listen.host}:{self.port}", "lists": sorted(self._app.site.lists)}
