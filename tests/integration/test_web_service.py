"""A real ``smtpplus-milter web`` process with a SQLite store, spoken to as a receiver would (RFC 8058)."""

from __future__ import annotations

import http.client
import signal
import urllib.request
from pathlib import Path

from tests.support.web import LIST, ONE_CLICK, RECIPIENT, USER, running_web, store_of, token, unsubscribed


def request(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_one_click_post_suppresses_the_recipient_and_a_replay_changes_nothing(tmp_path: Path) -> None:
    with running_web(tmp_path, metrics=True) as web:
        status, headers, body = request(web.port, "POST", f"/u/{token()}", ONE_CLICK, FORM)
        assert status == 200
        assert "Location" not in headers and "Set-Cookie" not in headers
        assert b"b***@example.net" in body
        [entry] = unsubscribed(tmp_path)
        assert (entry.scope, entry.address, entry.reason, entry.expires) == (
            f"list:{LIST}",
            RECIPIENT,
            "unsubscribe",
            None,
        )
        assert entry.created_by == "web"

        assert request(web.port, "POST", f"/u/{token()}", ONE_CLICK, FORM)[0] == 200
        assert unsubscribed(tmp_path) == [entry]
        store = store_of(tmp_path)
        try:
            assert store.report_counts("relay-1", "unsubscribe") == {USER: 1}
        finally:
            store.close()

        with urllib.request.urlopen(f"http://127.0.0.1:{web.metrics_port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert f'smtpplus_unsubscribes_total{{list="{LIST}",source="one_click"}} 1.0' in metrics
        assert web.events("unsubscribed")[0]["source"] == "one_click"


def test_get_records_nothing_forged_is_404_and_healthz(tmp_path: Path) -> None:
    with running_web(tmp_path) as web:
        status, headers, body = request(web.port, "GET", f"/u/{token()}")
        assert status == 200 and b'<form method="post">' in body
        assert headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert request(web.port, "GET", f"/u/{token()[:-3]}")[0] == 404
        assert request(web.port, "POST", f"/u/{token(key=b'x' * 32)}", ONE_CLICK, FORM)[0] == 404
        assert request(web.port, "GET", "/healthz")[0] == 200
        assert unsubscribed(tmp_path) == []


def test_multipart_one_click(tmp_path: Path) -> None:
    body = b'--xyz\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\nOne-Click\r\n--xyz--\r\n'
    with running_web(tmp_path, metrics=True) as web:
        status, _, _ = request(
            web.port, "POST", f"/u/{token()}", body, {"Content-Type": "multipart/form-data; boundary=xyz"}
        )
        assert status == 200
        assert web.events("unsubscribed")[0]["source"] == "one_click"
    assert len(unsubscribed(tmp_path)) == 1


def test_store_unwritable_is_503_then_recorded_after_it_returns(tmp_path: Path) -> None:
    with running_web(tmp_path) as web:
        db = tmp_path / "t.db"
        db.rename(tmp_path / "t.db.away")
        (tmp_path / "t.db").mkdir()  # the store path is now a directory: SQLite cannot open it
        status, headers, _ = request(web.port, "POST", f"/u/{token()}", ONE_CLICK, FORM)
        assert status == 503 and "Retry-After" in headers
        (tmp_path / "t.db").rmdir()
        (tmp_path / "t.db.away").rename(db)
        assert request(web.port, "POST", f"/u/{token()}", ONE_CLICK, FORM)[0] == 200
        assert len(unsubscribed(tmp_path)) == 1


def test_sighup_keeps_serving_and_a_bad_file_is_kept_out(tmp_path: Path) -> None:
    with running_web(tmp_path) as web:
        config = web.config_path
        good = config.read_text()
        config.write_text("web: [not, a, mapping\n")
        web.reload()
        web.wait_for_event("config_reload_failed")
        assert request(web.port, "GET", f"/u/{token()}")[0] == 200
        config.write_text(good)
        web.reload()
        web.wait_for_event("config_reloaded")
        assert web.process is not None
        web.process.send_signal(signal.SIGTERM)
        assert web.process.wait(15) == 0
