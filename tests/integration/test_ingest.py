"""``smtpplus-milter ingest`` as Postfix's pipe runs it (a process, the report on stdin) against a
real SQLite tracking store: DSNs and ARF complaints matched by their token, recorded once; forged
tokens and non-reports kept in quarantine; a store that cannot be reached is exit 75."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lab.harness import Alertmanager
from smtpplus_milter.core.tokens import make_bounce_token
from smtpplus_milter.infra.store import open_store
from smtpplus_milter.infra.store.base import Attempt
from smtpplus_milter.infra.store.sql import SqlStore
from tests.support.builders import message_record, write_config

KEY = bytes(range(32))
QID = "4jdfvM0wYyzJVF1"
T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
RETURN_PATH = "bounce.relay.example"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    secret = tmp_path / "secret"
    secret.write_bytes(KEY)
    secret.chmod(0o600)
    settings = {
        "secret_file": str(secret),
        "tracking": {"store": f"sqlite:///{tmp_path}/t.db", "node": "relay-1", "spool_dir": str(tmp_path / "spool")},
        "bounces": {"return_path": RETURN_PATH},
        "notify": {
            "smtp": "127.0.0.1:10025",
            "from": "postmaster@relay.example",
            "bounces": {"to": ["it@example.com"]},
            "complaints": {"to": ["abuse-desk@example.com"]},
        },
    }
    path = write_config(tmp_path, settings=settings)
    store = open_store(f"sqlite:///{tmp_path}/t.db")
    store.migrate()
    store.record_messages([message_record(QID, recipients=("bob@example.net", "carol@example.net"), accepted_at=T0)])
    delivered = Attempt("relay-1", QID, "bob@example.net", T0 + timedelta(minutes=1), "sent", "2.0.0")
    store.record_attempts([delivered], None)
    store.close()
    return path


def _store(config: Path) -> SqlStore:
    store = open_store(f"sqlite:///{config.parent}/t.db")
    assert isinstance(store, SqlStore)
    return store


def _token_address() -> str:
    return f"b+{make_bounce_token('relay-1', QID, KEY)}@{RETURN_PATH}"


def _ingest(config: Path, raw: bytes, recipient: str | None = None) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "smtpplus_milter", "ingest", "-c", str(config)]
    if recipient:
        command += ["--recipient", recipient]
    return subprocess.run(command, input=raw, capture_output=True, timeout=60, check=False)


def _events(done: subprocess.CompletedProcess[bytes]) -> list[dict[str, object]]:
    lines = done.stderr.decode().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def dsn(recipient: str, status: str = "5.1.1", action: str = "failed") -> bytes:
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\n"
        f"To: {_token_address()}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n"
        "--b1\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.net\r\nArrival-Date: Mon, 30 Nov 2026 12:00:00 +0000\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: {action}\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; 550 {status} <{recipient}>: Recipient address rejected: User unknown\r\n"
        "--b1\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: info@yourcompany.com\r\nMessage-ID: <{QID}@yourcompany.com>\r\nSubject: Order\r\n"
        "--b1--\r\n"
    ).encode()


def arf(original_mail_from: str, rcpt: str | None = None) -> bytes:
    rcpt_line = f"Original-Rcpt-To: {rcpt}\r\n" if rcpt else ""
    return (
        "From: feedback@fbl.example\r\nTo: fbl@relay.example\r\nSubject: FW: complaint\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="b2"\r\n\r\n'
        "--b2\r\nContent-Type: text/plain\r\n\r\nThis is an abuse report.\r\n"
        "--b2\r\nContent-Type: message/feedback-report\r\n\r\n"
        f"Feedback-Type: abuse\r\nUser-Agent: FBL/1.0\r\nVersion: 1\r\nOriginal-Mail-From: <{original_mail_from}>\r\n"
        f"{rcpt_line}Arrival-Date: Mon, 30 Nov 2026 13:00:00 +0000\r\nReporting-MTA: dns; fbl.example\r\n"
        "--b2\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: info@yourcompany.com\r\nMessage-ID: <{QID}@yourcompany.com>\r\nSubject: Order\r\n"
        "--b2--\r\n"
    ).encode()


def test_a_dsn_after_delivery_bounces_the_recipient_once(config: Path) -> None:
    done = _ingest(config, dsn("bob@example.net"), _token_address())
    assert done.returncode == 0, done.stderr
    assert [e["event"] for e in _events(done)] == ["report_ingested"]
    again = _ingest(config, dsn("bob@example.net"), _token_address())  # Postfix delivers it twice
    assert again.returncode == 0 and _events(again)[0]["status"] == "duplicate"
    store = _store(config)
    try:
        found = store.message(QID)
        assert found is not None
        bob = next(r for r in found.recipients if r.address == "bob@example.net")
        assert bob.state == "bounced"
        assert [(a.status, a.dsn, a.failure_class) for a in bob.attempts] == [
            ("sent", "2.0.0", None),
            ("bounced", "5.1.1", "hard"),
        ]
        assert [(e.scope, e.reason, e.created_by) for e in store.suppressions()] == [
            ("user:shop-frontend", "hard_bounce", "follower")
        ]
        [notice] = store.claim("test", T0 + timedelta(days=1), timedelta(minutes=1), 10)
        assert notice.notification.to == "it@example.com" and notice.notification.payload["dsn"] == "5.1.1"
    finally:
        store.close()


def test_a_complaint_matched_through_the_quoted_envelope_sender(config: Path) -> None:
    done = _ingest(config, arf(_token_address(), "carol@example.net"), "fbl@relay.example")
    assert done.returncode == 0, done.stderr
    assert _ingest(config, arf(_token_address(), "carol@example.net"), "fbl@relay.example").returncode == 0
    store = _store(config)
    try:
        [row] = store.stats()
        assert row["complaints"] == 1
        assert [(e.address, e.reason, e.expires) for e in store.suppressions()] == [
            ("carol@example.net", "complaint", None)
        ]
        [notice] = store.claim("test", T0 + timedelta(days=1), timedelta(minutes=1), 10)
        assert notice.notification.kind == "complaint" and notice.notification.to == "abuse-desk@example.com"
    finally:
        store.close()


@pytest.mark.parametrize(
    ("raw", "recipient", "reason"),
    [
        pytest.param(
            dsn("bob@example.net"), f"b+{make_bounce_token('relay-1', QID, bytes(32))}@x", "not ours", id="forged"
        ),
        pytest.param(b"Subject: hello\r\n\r\nJust a person writing back.\r\n", None, "", id="not-a-report"),
        pytest.param(arf("someone@elsewhere.example"), None, "names no recipient", id="complaint-unattributed"),
    ],
)
def test_what_cannot_be_used_is_kept_in_quarantine(
    config: Path, raw: bytes, recipient: str | None, reason: str
) -> None:
    done = _ingest(config, raw, recipient)
    assert done.returncode == 0, done.stderr
    [event] = _events(done)
    assert event["event"] == "report_quarantined" and reason in str(event["reason"])
    kept = Path(str(event["kept"]))
    assert kept.read_bytes() == raw
    assert kept.with_suffix(".reason").read_text().strip() == event["reason"]
    assert kept.parent == config.parent / "ingest-quarantine"
    store = _store(config)
    try:
        assert list(store.suppressions()) == []
    finally:
        store.close()


def test_a_store_that_cannot_be_reached_is_a_temporary_failure(config: Path, tmp_path: Path) -> None:
    text = config.read_text().replace(f"sqlite:///{tmp_path}/t.db", "postgresql://nobody@/x?host=/nonexistent&port=1")
    config.write_text(text)
    done = _ingest(config, dsn("bob@example.net"), _token_address())
    assert done.returncode == 75, done.stderr
    assert _events(done)[-1]["event"] == "report_deferred"


def test_a_broken_config_is_a_temporary_failure(config: Path) -> None:
    config.write_text(config.read_text() + "\nunknown_key: 1\n")
    assert _ingest(config, dsn("bob@example.net"), _token_address()).returncode == 75


def test_the_pipe_runs_without_a_terminal_and_as_any_user(config: Path) -> None:
    # Postfix runs the pipe with a minimal environment: no HOME, no terminal.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    command = [sys.executable, "-m", "smtpplus_milter", "ingest", "-c", str(config), "--recipient", _token_address()]
    done = subprocess.run(command, input=dsn("bob@example.net"), capture_output=True, env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_a_complaint_raises_an_alert_in_a_real_alertmanager(config: Path, tmp_path: Path) -> None:
    with Alertmanager(tmp_path / "am") as alertmanager:
        text = config.read_text(encoding="utf-8")
        config.write_text(text + f"\nalerts:\n  alertmanager: {{url: 'http://127.0.0.1:{alertmanager.port}'}}\n")
        done = _ingest(config, arf(_token_address(), "carol@example.net"), "fbl@relay.example")
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 10
        while not (alerts := alertmanager.alerts()) and time.monotonic() < deadline:
            time.sleep(0.2)
        [alert] = alerts
        assert alert["labels"] == {
            "alertname": "SMTPPlusComplaint",
            "user": "shop-frontend",
            "recipient": "carol@example.net",
        }
        assert "abuse" in alert["annotations"]["summary"]
