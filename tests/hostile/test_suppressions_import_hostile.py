"""``suppressions import`` reads a CSV someone else made: an oversized, binary or malformed file is
refused whole with a reason (nothing imported), never half-imported and never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpplus_milter.cli import main
from smtpplus_milter.cli import suppressions as suppressions_cli
from smtpplus_milter.infra.store import open_store
from tests.support.builders import write_config

HEADER = "address,scope,reason,created,expires\n"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path, settings={"tracking": {"store": f"sqlite:///{tmp_path}/t.db"}})


def _entries(config: Path) -> int:
    store = open_store(f"sqlite:///{config.parent}/t.db")
    try:
        store.migrate()
        return len(list(store.suppressions()))
    finally:
        store.close()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        pytest.param(HEADER + "a@example.org,global,manual,,\n" * 50, "more than 20 lines", id="over-the-line-bound"),
        pytest.param(b"\xff\xfe\x00binary" * 100, "cannot read", id="binary"),
        pytest.param(HEADER + '"unterminated,global,manual,,\n', "bad line", id="unterminated-quote"),
        pytest.param(HEADER + "a@example.org,global,manual,,,extra\n", "exactly 5 fields", id="extra-field"),
        pytest.param(HEADER + "x" * 100_000 + "@example.org,global,manual,,\n", "bad line", id="huge-address"),
        pytest.param(HEADER + "a@example.org,global,manual,9999-99-99,\n", "not a date", id="bad-date"),
    ],
)
def test_a_hostile_import_is_refused_whole(
    config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    content: str | bytes,
    reason: str,
) -> None:
    monkeypatch.setattr(suppressions_cli, "MAX_IMPORT_LINES", 20)
    path = tmp_path / "in.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    status = main(["suppressions", "import", str(path), "-c", str(config)])
    err = capsys.readouterr().err
    assert status == 1 and reason in err and "nothing was changed" in err and "Traceback" not in err
    assert _entries(config) == 0
