"""The fanout journal on a real SQLite file: WAL with synchronous=FULL, a copy found after a reopen
(what a restarted filter sees), the recipient's case ignored, pruning by age, threads sharing it,
and an unusable path named in the error."""

from __future__ import annotations

import concurrent.futures
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from smtpplus_milter.infra.fanout_journal import FanoutJournal, JournalError, Made

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_a_copy_is_found_after_a_reopen(tmp_path: Path) -> None:
    journal = FanoutJournal(tmp_path / "fanout.db")
    journal.record("QID1", "Bob@Example.org", "NEW1", NOW)
    journal.record("QID1", "carol@example.org", None, NOW)
    journal.close()  # without a checkpoint the rows are in the -wal file
    again = FanoutJournal(tmp_path / "fanout.db")
    assert again.find("QID1", "bob@example.org") == Made("NEW1", NOW)
    assert again.find("QID1", "carol@example.org") == Made(None, NOW)
    assert again.find("QID2", "bob@example.org") is None
    with sqlite3.connect(tmp_path / "fanout.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    again.close()


def test_synchronous_full(tmp_path: Path) -> None:
    journal = FanoutJournal(tmp_path / "fanout.db")
    assert journal._db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    journal.close()


def test_prune_forgets_only_old_copies(tmp_path: Path) -> None:
    journal = FanoutJournal(tmp_path / "fanout.db")
    journal.record("OLD", "bob@example.org", "N1", NOW - timedelta(days=8))
    journal.record("NEW", "bob@example.org", "N2", NOW - timedelta(days=6))
    assert journal.prune(NOW, 7) == 1
    assert journal.find("OLD", "bob@example.org") is None
    assert journal.find("NEW", "bob@example.org") is not None
    journal.close()


def test_threads_share_it(tmp_path: Path) -> None:
    journal = FanoutJournal(tmp_path / "fanout.db")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda n: journal.record("QID", f"r{n}@example.org", f"N{n}", NOW), range(200)))
    assert journal.count() == 200
    journal.close()


def test_an_unusable_path_names_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(JournalError, match=str(blocker / "fanout.db")):
        FanoutJournal(blocker / "fanout.db")
