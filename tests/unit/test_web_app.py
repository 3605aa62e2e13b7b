"""The unsubscribe endpoint's application on values (services/web.py ``respond``), and its config.

No socket: requests are :class:`Request` values, the store is a fake ``record``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from smtpplus_milter.config import ConfigError, HostPort, Web, load_config
from smtpplus_milter.core.tokens import make_unsubscribe_token
from smtpplus_milter.infra.store.base import Unsubscribe
from smtpplus_milter.services.web import (
    CSP,
    MAX_BODY_BYTES,
    Request,
    Response,
    Site,
    StoreUnavailable,
    WebApp,
    mask,
    one_click,
    respond,
)
from tests.support.builders import write_config

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
SITE = Site(KEY, frozenset({"newsletter", "shop"}))
TOKEN = make_unsubscribe_token("shop-frontend", "newsletter", "bob@example.net", KEY)
URLENCODED = "application/x-www-form-urlencoded"
BOUNDARY = "----b0undary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def multipart(name: str, value: str) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n--{BOUNDARY}--\r\n'
    ).encode()


class FakeStore:
    """record_unsubscribe's contract: True the first time per (list, address), False after; or down."""

    def __init__(self, down: bool = False) -> None:
        self.down = down
        self.items: list[Unsubscribe] = []

    def record(self, item: Unsubscribe) -> bool:
        if self.down:
            raise StoreUnavailable("store down")
        new = all((done.list_name, done.address) != (item.list_name, item.address) for done in self.items)
        self.items.append(item)
        return new


def answer(request: Request, store: FakeStore | None = None, site: Site = SITE) -> Response:
    return respond(request, site, (store or FakeStore()).record, lambda: NOW)


def post(body: bytes, content_type: str = URLENCODED, token: str = TOKEN) -> Request:
    return Request("POST", f"/u/{token}", content_type, len(body), body)


def header(response: Response, name: str) -> str | None:
    return dict(response.headers).get(name)


@pytest.mark.parametrize(
    ("body", "content_type", "source"),
    [
        pytest.param(b"List-Unsubscribe=One-Click", URLENCODED, "one_click", id="rfc8058-urlencoded"),
        pytest.param(b"List-Unsubscribe=One-Click\r\n", URLENCODED, "one_click", id="urlencoded-trailing-crlf"),
        pytest.param(b"List-Unsubscribe=One-Click", "", "one_click", id="no-content-type"),
        pytest.param(multipart("List-Unsubscribe", "One-Click"), MULTIPART, "one_click", id="rfc8058-multipart"),
        pytest.param(b"confirm=yes", URLENCODED, "page", id="page-form"),
        pytest.param(multipart("confirm", "yes"), MULTIPART, "page", id="multipart-other-field"),
        pytest.param(b"", URLENCODED, "page", id="empty-body"),
        pytest.param(b"List-Unsubscribe=Two-Clicks", URLENCODED, "page", id="other-value"),
        pytest.param(b"--x\r\nbroken", MULTIPART, "page", id="broken-multipart"),
    ],
)
def test_post_records_with_its_source(body: bytes, content_type: str, source: str) -> None:
    store = FakeStore()
    response = answer(post(body, content_type), store)
    assert response.status == 200
    assert response.recorded == ("newsletter", source)
    assert store.items == [Unsubscribe("shop-frontend", "newsletter", "bob@example.net", NOW, source, "web")]
    assert header(response, "Location") is None and header(response, "Set-Cookie") is None
    assert b"b***@example.net" in response.body and b"newsletter" in response.body


def test_a_repeat_is_200_and_not_counted_again() -> None:
    store = FakeStore()
    first = answer(post(b"List-Unsubscribe=One-Click"), store)
    again = answer(post(b"List-Unsubscribe=One-Click"), store)
    assert (first.status, again.status) == (200, 200)
    assert (first.recorded, again.recorded) == (("newsletter", "one_click"), None)


def test_get_shows_the_page_and_records_nothing() -> None:
    store = FakeStore()
    response = answer(Request("GET", f"/u/{TOKEN}"), store)
    assert response.status == 200
    assert store.items == [] and response.recorded is None
    page = response.body.decode()
    assert '<html lang="en">' in page and "<title>Unsubscribe from newsletter</title>" in page
    assert "b***@example.net" in page and "bob@" not in page
    assert page.count("<form") == 1 and '<form method="post">' in page and "action=" not in page
    assert page.count("<button") == 1 and ">Unsubscribe</button>" in page
    assert "focus-visible" in page
    assert "<script" not in page and "http" not in page.split("</style>")[1]  # nothing loaded from elsewhere
    assert header(response, "Content-Security-Policy") == CSP
    assert header(response, "Content-Type") == "text/html; charset=utf-8"


def test_the_token_is_read_in_any_case() -> None:
    assert answer(Request("GET", f"/u/{TOKEN.upper()}")).status == 200


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(f"/u/{TOKEN[:-1]}", id="truncated"),
        pytest.param(f"/u/{TOKEN[:-2]}{'a' if TOKEN[-2] != 'a' else 'b'}{TOKEN[-1]}", id="one-character-changed"),
        pytest.param(
            "/u/" + make_unsubscribe_token("shop-frontend", "newsletter", "bob@example.net", OTHER_KEY),
            id="another-key",
        ),
        pytest.param(
            "/u/" + make_unsubscribe_token("shop-frontend", "unknown", "bob@example.net", KEY), id="list-not-configured"
        ),
        pytest.param(
            "/u/" + make_unsubscribe_token("shop-frontend", "newsletter", "bob@example.net", KEY)[:1],
            id="one-character",
        ),
        pytest.param("/u/", id="empty"),
        pytest.param(f"/u/{TOKEN}/", id="trailing-slash"),
        pytest.param(f"/u/../u/{TOKEN}", id="traversal"),
        pytest.param("/u/" + "a" * 5000, id="very-long"),
        pytest.param("/u/%00", id="nul"),
        pytest.param("/u/\u00e9t\u00e9", id="non-ascii"),
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST", "PUT"])
def test_a_token_that_is_not_ours_is_404_and_records_nothing(path: str, method: str) -> None:
    store = FakeStore()
    body = b"List-Unsubscribe=One-Click"
    response = answer(Request(method, path, URLENCODED, len(body), body), store)
    assert response.status == 404
    assert store.items == [] and response.recorded is None


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        pytest.param(Request("GET", "/healthz"), 200, id="healthz"),
        pytest.param(Request("POST", "/healthz"), 405, id="healthz-post"),
        pytest.param(Request("GET", "/"), 404, id="root"),
        pytest.param(Request("GET", "/metrics"), 404, id="metrics-not-here"),
        pytest.param(Request("GET", f"/x/{TOKEN}"), 404, id="other-prefix"),
        pytest.param(Request("PUT", f"/u/{TOKEN}"), 405, id="put"),
        pytest.param(Request("DELETE", f"/u/{TOKEN}"), 405, id="delete"),
        pytest.param(Request("POST", f"/u/{TOKEN}", URLENCODED, MAX_BODY_BYTES + 1), 413, id="content-length"),
        pytest.param(Request("POST", f"/u/{TOKEN}", URLENCODED, None, b"x" * (MAX_BODY_BYTES + 1)), 413, id="body"),
    ],
)
def test_other_requests(request_: Request, status: int) -> None:
    store = FakeStore()
    response = answer(request_, store)
    assert response.status == status
    assert store.items == []
    if status == 405:
        assert header(response, "Allow") in ("GET", "GET, POST")


def test_a_body_of_exactly_the_bound_is_taken() -> None:
    body = b"List-Unsubscribe=One-Click&pad=" + b"x" * (MAX_BODY_BYTES - 31)
    assert len(body) == MAX_BODY_BYTES
    assert answer(post(body)).recorded == ("newsletter", "one_click")


def test_store_down_is_503_with_retry_after_never_200() -> None:
    response = answer(post(b"List-Unsubscribe=One-Click"), FakeStore(down=True))
    assert response.status == 503
    assert header(response, "Retry-After") is not None
    assert response.recorded is None


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        pytest.param("bob@example.net", "b***@example.net", id="plain"),
        pytest.param("b@example.net", "b***@example.net", id="one-letter"),
        pytest.param('"a@b"@example.net', '"***@example.net', id="quoted-with-at"),
        pytest.param("no-at", "n***", id="no-at"),
    ],
)
def test_mask(address: str, masked: str) -> None:
    assert mask(address) == masked


def test_the_page_escapes_what_the_token_carries() -> None:
    token = make_unsubscribe_token("u", "<b>news</b>", "<i>x</i>@example.net", KEY)
    response = answer(Request("GET", f"/u/{token}"), site=Site(KEY, frozenset({"<b>news</b>"})))
    assert b"<b>news" not in response.body and b"&lt;b&gt;news" in response.body


def test_one_click_reads_only_the_field() -> None:
    assert not one_click(URLENCODED, b"x=List-Unsubscribe%3DOne-Click")
    assert one_click(URLENCODED, b"a=1&List-Unsubscribe=One-Click")


# --- the WSGI wrapper, still without a socket -------------------------------------------------------


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        return lambda event, **fields: self.events.append((event, fields))


class Writer:
    def __init__(self, store: FakeStore) -> None:
        self.record = store.record


def call(app: WebApp, method: str, path: str, body: bytes = b"", content_type: str = URLENCODED) -> tuple[str, bytes]:
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "CONTENT_TYPE": content_type,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": BytesIO(body),
    }
    started: list[str] = []
    chunks = app(environ, lambda status, headers: started.append(status))
    return started[0], b"".join(chunks)


def test_the_wsgi_app_counts_only_new_unsubscribes() -> None:
    counted: list[tuple[str, str]] = []
    store = FakeStore()
    log = Log()
    app = WebApp(SITE, Writer(store), log, lambda name, source: counted.append((name, source)))  # type: ignore[arg-type]
    assert call(app, "POST", f"/u/{TOKEN}", b"List-Unsubscribe=One-Click")[0] == "200 OK"
    assert call(app, "POST", f"/u/{TOKEN}", b"List-Unsubscribe=One-Click")[0] == "200 OK"
    assert call(app, "GET", f"/u/{TOKEN}")[0] == "200 OK"
    assert call(app, "HEAD", "/healthz") == ("200 OK", b"")
    assert counted == [("newsletter", "one_click")]
    assert [event for event, _ in log.events] == ["unsubscribed"]
    assert app.in_flight == 0


# --- config: the web: section ----------------------------------------------------------------------


TRACKING = {"store": "sqlite:////tmp/never-opened.db"}


def test_web_section_defaults_and_reads_the_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, settings={"tracking": TRACKING, "secret_file": "secret", "web": {}})
    config = load_config(path, create_secret=True)
    assert config.web == Web(HostPort("127.0.0.1", 8025), None)
    assert config.secret is not None and len(config.secret.key) == 32
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600


def test_no_web_section_reads_no_key(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, settings={"secret_file": "secret"}), create_secret=True)
    assert config.web is None and config.secret is None
    assert not (tmp_path / "secret").exists()


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        pytest.param({"web": {}, "secret_file": "secret"}, "tracking is off", id="no-tracking"),
        pytest.param({"web": {}, "tracking": TRACKING}, "secret_file", id="no-secret-file"),
        pytest.param({"web": {"listen": "8025"}, "tracking": TRACKING, "secret_file": "s"}, "HOST:PORT", id="listen"),
        pytest.param({"web": {"port": 1}, "tracking": TRACKING, "secret_file": "s"}, "port", id="unknown-key"),
    ],
)
def test_web_section_problems(tmp_path: Path, settings: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, settings=settings), create_secret=True)
    assert words in str(caught.value)


def test_web_listening_beyond_loopback_is_a_warning(tmp_path: Path) -> None:
    settings = {"tracking": TRACKING, "secret_file": "secret", "web": {"listen": "192.0.2.7:8025"}}
    config = load_config(write_config(tmp_path, settings=settings), create_secret=True)
    assert any("web.listen" in warning and "not on loopback" in warning for warning in config.warnings)
