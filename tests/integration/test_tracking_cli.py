"""``tracking migrate`` and ``stats`` against a real SQLite tracking store."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from smtpplus_milter.cli import main
from smtpplus_milter.core.tracking import MessageRecord
from smtpplus_milter.infra.store import open_store
from smtpplus_milter.infra.store.base import STATS_COUNTERS, Attempt, Position
from tests.support.builders import message_record, write_config


def record(queue_id: str, day: int, subject: str, *recipients: str) -> MessageRecord:
    at = datetime(2026, 11, day, 10, 0, tzinfo=UTC)
    return message_record(queue_id, subject=subject, message_id=None, accepted_at=at, recipients=recipients)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path, settings={"tracking": {"store": f"sqlite:///{tmp_path}/t.db", "node": "relay-1"}})


def fill(config: Path) -> None:
    store = open_store(f"sqlite:///{config.parent}/t.db")
    try:
        store.migrate()
        store.record_messages(
            [
                record("4jdfvM0wYyzJVF1", 1, "Order 1", "a@example.org", "b@example.net"),
                record("4jdfvM0wYyzJVF2", 1, "Order 2", "c@example.org"),
                record("4jdfvM0wYyzJVF3", 2, "Order 1", "d@example.org"),
            ]
        )
        at = datetime(2026, 11, 1, 10, 1, tzinfo=UTC)
        store.record_attempts(
            [
                Attempt("relay-1", "4jdfvM0wYyzJVF1", "a@example.org", at, "sent", "2.0.0"),
                Attempt("relay-1", "4jdfvM0wYyzJVF1", "b@example.net", at, "bounced", "5.1.1"),
            ],
            Position("relay-1", "test-log", 100),
        )
    finally:
        store.close()


def test_migrate_then_again(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tracking", "migrate", "-c", str(config)]) == 0
    assert capsys.readouterr().out.startswith("applied schema version(s) 1")
    assert main(["tracking", "migrate", "-c", str(config)]) == 0
    assert capsys.readouterr().out == "schema is current\n"


def test_stats_by_date_as_json(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fill(config)
    assert main(["stats", "-c", str(config), "--format", "json"]) == 0
    rows = {row["date"]: row for row in json.loads(capsys.readouterr().out)}
    assert list(next(iter(rows.values()))) == ["date", *STATS_COUNTERS]
    first = rows["2026-11-01"]
    assert (first["messages"], first["recipients"], first["delivered"], first["bounced"]) == (2, 3, 1, 1)
    assert rows["2026-11-02"]["messages"] == 1


def test_stats_by_subject_as_csv_with_a_window(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fill(config)
    args = ["stats", "-c", str(config), "--by", "subject", "--until", "2026-11-02", "--format", "csv"]
    assert main(args) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {row["subject"]: row["messages"] for row in rows} == {"Order 1": "1", "Order 2": "1"}


def test_stats_table_and_an_empty_store(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "-c", str(config)]) == 0
    assert capsys.readouterr().out == "(no messages)\n"
    fill(config)
    assert main(["stats", "-c", str(config), "--by", "recipient_domain"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["recipient_domain", "messages", "recipients"]
    assert any(line.startswith("example.net") for line in lines[1:])


def test_without_tracking_or_with_a_bad_date(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    off = write_config(tmp_path)
    assert main(["stats", "-c", str(off)]) == 1
    assert "tracking is off" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["stats", "-c", str(off), "--since", "yesterday"])
    assert usage.value.code == 2
