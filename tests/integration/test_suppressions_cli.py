"""``suppressions list|add|remove|import|export`` against a real SQLite tracking store."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from smtpplus_milter.cli import main
from smtpplus_milter.cli.suppressions import KEYS
from smtpplus_milter.infra.store import open_store
from smtpplus_milter.infra.store.base import Suppression
from tests.support.builders import write_config

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path, settings={"tracking": {"store": f"sqlite:///{tmp_path}/t.db", "node": "relay-1"}})


def _run(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, str, str]:
    status = main(["suppressions", *args, "-c", str(config)])
    out, err = capsys.readouterr()
    return status, out, err


def _listed(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> list[dict[str, object]]:
    status, out, err = _run(capsys, config, "list", "--format", "json", *args)
    assert status == 0, err
    rows = json.loads(out)
    assert isinstance(rows, list)
    return rows


def _seed(config: Path, *entries: Suppression) -> None:
    store = open_store(f"sqlite:///{config.parent}/t.db")
    try:
        store.migrate()
        store.suppress(entries)
    finally:
        store.close()


def test_add_list_remove_by_scope(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = _run(capsys, config, "add", "Bob@Example.NET", "--user", "shop-frontend")
    assert status == 0, err
    assert out.startswith("suppressed bob@example.net in user:shop-frontend (manual)")
    assert _run(capsys, config, "add", "carol@example.net", "--list", "shop", "--reason", "unsubscribe")[0] == 0
    assert _run(capsys, config, "add", "dave@example.net", "--global")[0] == 0

    [entry] = _listed(capsys, config, "--user", "shop-frontend")
    assert list(entry) == list(KEYS)
    assert (entry["address"], entry["scope"], entry["reason"], entry["expires"]) == (
        "bob@example.net",
        "user:shop-frontend",
        "manual",
        None,
    )
    assert [row["scope"] for row in _listed(capsys, config)] == ["global", "list:shop", "user:shop-frontend"]
    assert [row["address"] for row in _listed(capsys, config, "--list", "shop")] == ["carol@example.net"]
    assert [row["address"] for row in _listed(capsys, config, "--global")] == ["dave@example.net"]

    assert _run(capsys, config, "remove", "BOB@example.net", "--user", "shop-frontend")[0] == 0
    status, _, err = _run(capsys, config, "remove", "bob@example.net", "--user", "shop-frontend")
    assert status == 1 and "has no entry in user:shop-frontend" in err
    assert _listed(capsys, config, "--user", "shop-frontend") == []


def test_expired_entries_only_with_all(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = datetime.now(UTC)
    _seed(
        config,
        Suppression(
            "user:shop-frontend", "old@example.net", "hard_bounce", now - timedelta(days=200), now - timedelta(days=20)
        ),
        Suppression("user:shop-frontend", "new@example.net", "hard_bounce", now, now + timedelta(days=180)),
    )
    assert [row["address"] for row in _listed(capsys, config)] == ["new@example.net"]
    assert [row["address"] for row in _listed(capsys, config, "--all")] == ["new@example.net", "old@example.net"]


def test_a_bounce_entry_does_not_replace_a_manual_one_but_says_so(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed(config, Suppression("global", "x@example.org", "complaint", T0, created_by="ingest"))
    status, out, _ = _run(capsys, config, "add", "x@example.org", "--global", "--reason", "hard_bounce")
    assert status == 0 and "keeps its existing entry" in out
    [entry] = _listed(capsys, config)
    assert entry["reason"] == "complaint"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(("add", "x@example.org"), "say which scope", id="no-scope"),
        pytest.param(("add", "not-an-address", "--global"), "not an address", id="bad-address"),
        pytest.param(("add", "x@example.org", "--global", "--expires", "2001-01-01"), "not in the future", id="past"),
        pytest.param(
            ("add", "x@example.org", "--global", "--reason", "complaint", "--expires", "2999-01-01"),
            "never expires",
            id="complaint-expiry",
        ),
        pytest.param(("remove", "x@example.org"), "say which scope", id="remove-no-scope"),
    ],
)
def test_refusals(config: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str) -> None:
    status, _, err = _run(capsys, config, *args)
    assert status == 1 and message in err and "nothing was changed" in err
    assert _listed(capsys, config, "--all") == []


def test_two_scopes_at_once_are_refused_by_the_parser(config: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["suppressions", "list", "--user", "a", "--global", "-c", str(config)])
    assert exited.value.code == 2


def test_export_then_import_into_another_store_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = write_config(tmp_path / "one", settings={"tracking": {"store": f"sqlite:///{tmp_path}/one/t.db"}})
    second = write_config(tmp_path / "two", settings={"tracking": {"store": f"sqlite:///{tmp_path}/two/t.db"}})
    _seed(
        first,
        Suppression("user:shop-frontend", "a@example.net", "hard_bounce", T0, T0 + timedelta(days=3650)),
        Suppression("list:shop", "b@example.net", "unsubscribe", T0),
        Suppression("global", "c@example.net", "manual", T0),
    )
    status, exported, _ = _run(capsys, first, "export", "--all")
    assert status == 0
    assert exported.splitlines()[0] == ",".join(KEYS)
    csv_file = tmp_path / "entries.csv"
    csv_file.write_text(exported, encoding="utf-8")
    status, out, err = _run(capsys, second, "import", str(csv_file))
    assert status == 0, err
    assert out.strip() == "imported 3 entries (3 new or changed)"
    _, again, _ = _run(capsys, second, "export", "--all")
    assert again == exported


def test_an_import_with_one_bad_line_imports_nothing(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [
        ",".join(KEYS),
        "a@example.net,user:shop-frontend,hard_bounce,2026-11-01T10:00:00Z,2027-05-01T10:00:00Z",
        "b@example.net,users:typo,manual,,",
        "c@example.net,global,bored,,",
        "d@example.net,global,complaint,,2030-01-01",
        "e@example.net,global,manual",
        "f@example.net,global,manual,,",
    ]
    csv_file = tmp_path / "bad.csv"
    csv_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    status, _, err = _run(capsys, config, "import", str(csv_file))
    assert status == 1
    assert "4 bad line(s)" in err
    for line in (3, 4, 5, 6):
        assert f"line {line}:" in err
    assert "nothing was changed" in err
    assert _listed(capsys, config, "--all") == []


def test_import_needs_the_header(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv_file = tmp_path / "headless.csv"
    csv_file.write_text("a@example.net,global,manual,,\n", encoding="utf-8")
    status, _, err = _run(capsys, config, "import", str(csv_file))
    assert status == 1 and "the first line must be the header address,scope,reason,created,expires" in err


def test_csv_and_table_formats(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = _run(capsys, config, "list")
    assert status == 0 and out.strip() == "(no entries)"
    _seed(config, Suppression("global", "x@example.org", "manual", T0))
    _, out, _ = _run(capsys, config, "list", "--format", "csv")
    assert list(csv.DictReader(io.StringIO(out))) == [
        {
            "address": "x@example.org",
            "scope": "global",
            "reason": "manual",
            "created": "2026-11-01T10:00:00Z",
            "expires": "",
        }
    ]
    _, out, _ = _run(capsys, config, "list")
    assert out.splitlines()[0].split() == list(KEYS) and "x@example.org" in out


def test_tracking_off_is_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    status, _, err = _run(capsys, config, "list")
    assert status == 1 and "tracking is off" in err
