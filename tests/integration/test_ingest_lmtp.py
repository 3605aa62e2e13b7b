"""``smtpplus-milter ingest --serve``: reports over LMTP, as Postfix's LMTP client delivers them
(one connection, many reports, one recipient each), into a real SQLite store: recorded once,
forged ones kept in quarantine with 250, a store that cannot be reached answered 451 (Postfix
keeps the report), a second recipient 452, and a broken config on SIGHUP keeps the old one."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.milter_process import IngestProcess
from smtpplus_milter.infra.store import open_store
from tests.support.ingest import QID, RECIPIENT, dsn, ingest_config, token_address

FORGED = "b+AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA@bounce.relay.example"


def _serve(tmp_path: Path, store: str | None = None) -> IngestProcess:
    spec = f"unix:{tmp_path}/ingest.sock"
    config = ingest_config(tmp_path, bounces={"ingest_listen": spec}, store=store)
    return IngestProcess(config, spec, tmp_path / "ingest.log")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[IngestProcess]:
    with _serve(tmp_path) as process:
        yield process


def _deliver(client: smtplib.LMTP, raw: bytes, *recipients: str) -> list[tuple[int, bytes]]:
    """MAIL, RCPT per recipient, DATA: every reply code in order (as Postfix's client sees them)."""
    client.ehlo_or_helo_if_needed()  # LHLO, once per connection
    replies = [client.mail("<>")]
    replies += [client.rcpt(recipient) for recipient in recipients]
    if any(code == 250 for code, _ in replies[1:]):
        replies.append(client.data(raw))
    else:
        client.rset()
    return replies


def _state(tmp_path: Path) -> str | None:
    store = open_store(f"sqlite:///{tmp_path}/t.db")
    try:
        found = store.message(QID)
    finally:
        store.close()
    assert found is not None
    return next(r.state for r in found.recipients if r.address == RECIPIENT)


def test_reports_over_one_connection_recorded_once_forged_kept(served: IngestProcess, tmp_path: Path) -> None:
    with smtplib.LMTP(str(tmp_path / "ingest.sock")) as client:
        first = _deliver(client, dsn(token_address()), token_address())
        again = _deliver(client, dsn(token_address()), token_address())  # Postfix retried after a lost answer
        forged = _deliver(client, dsn(FORGED), FORGED)
    assert first[-1] == (250, b"2.0.0 Report recorded")
    assert again[-1] == (250, b"2.0.0 Report recorded")
    assert forged[-1] == (250, b"2.0.0 Report kept")
    assert _state(tmp_path) == "bounced"
    statuses = [e["status"] for e in served.events("report_ingested")]
    assert statuses == ["recorded", "duplicate"]
    [kept] = served.events("report_quarantined")
    assert "not ours" in kept["reason"] and Path(kept["kept"]).read_bytes() == dsn(FORGED)


def test_one_recipient_per_delivery(served: IngestProcess, tmp_path: Path) -> None:
    with smtplib.LMTP(str(tmp_path / "ingest.sock")) as client:
        replies = _deliver(client, dsn(token_address()), token_address(), FORGED)
    assert [code for code, _ in replies] == [250, 250, 452, 250]
    assert replies[2][1].startswith(b"4.5.3")
    assert len(served.events("report_ingested")) == 1 and not served.events("report_quarantined")


def test_store_unreachable_is_451_and_the_service_goes_on(tmp_path: Path) -> None:
    with _serve(tmp_path, store="postgresql://smtpplus@127.0.0.1:1/tracking") as process:
        with smtplib.LMTP(str(tmp_path / "ingest.sock")) as client:
            replies = _deliver(client, dsn(token_address()), token_address())
            assert replies[-1][0] == 451 and replies[-1][1].startswith(b"4.3.0")
            assert client.noop()[0] == 250  # the connection (and the server) still serve
        assert process.alive()
        [deferred] = process.events("report_deferred")
        assert deferred["recipient"] == token_address()


def test_a_broken_config_on_sighup_keeps_the_old_one(served: IngestProcess, tmp_path: Path) -> None:
    config = tmp_path / "smtpplus.yaml"
    good = config.read_text()
    config.write_text(good.replace("return_path: bounce.relay.example", "return_path: a@b@c"))
    served.reload()
    served.wait_for_event("config_reload_failed")
    with smtplib.LMTP(str(tmp_path / "ingest.sock")) as client:
        assert _deliver(client, dsn(token_address()), token_address())[-1][0] == 250
    assert _state(tmp_path) == "bounced"
    config.write_text(good)
    served.reload()
    served.wait_for_event("config_reloaded")
