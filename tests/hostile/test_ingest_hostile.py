"""What a hostile sender can put in front of ``ingest`` (anyone may mail the return-path domain):
oversized, garbage, forged and overlong reports are kept in quarantine with exit 0 (never 75, which
would make Postfix retry them for days; never a bounce), within bounded time, and change nothing."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from smtpplus_milter.core.reports import MAX_REPORT_BYTES
from smtpplus_milter.core.tokens import make_bounce_token
from smtpplus_milter.infra.store import open_store
from tests.support.builders import message_record, write_config

KEY = bytes(range(32))
QID = "4jdfvM0wYyzJVF1"
TOKEN_ADDRESS = f"b+{make_bounce_token('relay-1', QID, KEY)}@bounce.relay.example"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    secret = tmp_path / "secret"
    secret.write_bytes(KEY)
    secret.chmod(0o600)
    settings = {
        "secret_file": str(secret),
        "tracking": {"store": f"sqlite:///{tmp_path}/t.db", "node": "relay-1", "spool_dir": str(tmp_path / "spool")},
        "bounces": {"return_path": "bounce.relay.example"},
    }
    path = write_config(tmp_path, settings=settings)
    store = open_store(f"sqlite:///{tmp_path}/t.db")
    store.migrate()
    store.record_messages([message_record(QID, recipients=("bob@example.net",))])
    store.close()
    return path


def _many_recipients_dsn(count: int) -> bytes:
    blocks = "".join(
        f"Final-Recipient: rfc822; stranger{n}@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        for n in range(count)
    )
    return (
        'MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.example\r\n\r\n{blocks}--b--\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("raw", "recipient", "reason"),
    [
        pytest.param(b"x" * (MAX_REPORT_BYTES + 10), TOKEN_ADDRESS, "over", id="over-the-size-bound"),
        pytest.param(bytes(range(256)) * 4096, TOKEN_ADDRESS, "", id="binary-garbage"),
        pytest.param(_many_recipients_dsn(5000), TOKEN_ADDRESS, "", id="5000-recipient-blocks"),
        pytest.param(_many_recipients_dsn(3), TOKEN_ADDRESS, "names no failed", id="strangers-only"),
        pytest.param(_many_recipients_dsn(3), "b+" + "A" * 60 + "@bounce.relay.example", "not ours", id="forged"),
        pytest.param(_many_recipients_dsn(3), "b+@bounce.relay.example", "not ours", id="empty-token"),
    ],
)
def test_hostile_reports_are_quarantined_quickly_and_change_nothing(
    config: Path, raw: bytes, recipient: str, reason: str
) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "smtpplus_milter", "ingest", "-c", str(config), "--recipient", recipient],
        input=raw,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert time.monotonic() - started < 20
    assert b'"event": "report_quarantined"' in done.stderr and reason.encode() in done.stderr
    kept = list((config.parent / "ingest-quarantine").glob("*.eml"))
    assert len(kept) == 1 and kept[0].stat().st_size <= MAX_REPORT_BYTES
    store = open_store(f"sqlite:///{config.parent}/t.db")
    try:
        found = store.message(QID)
        assert found is not None and [story.state for story in found.recipients] == ["queued"]
        assert list(store.suppressions()) == []
    finally:
        store.close()
