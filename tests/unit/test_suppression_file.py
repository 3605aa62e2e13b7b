"""The suppression snapshot: written by the follower, read by the milter, looked up at RCPT."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from smtpplus_milter.core.suppression import Entry, find
from smtpplus_milter.infra.suppression_file import NAME, Reader, SnapshotProblem, Writer, parse, render, write

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
ENTRIES = [
    ("Bob@Example.net", "user:shop-frontend", "hard_bounce", T0),
    ("bob@example.net", "global", "manual", T0),
    ("carol@example.net", "list:shop", "unsubscribe", T0),
    ("evil\t@example.net", "global", "manual", T0),  # cannot be written: left out
]


def test_render_and_parse_round_trip() -> None:
    snapshot = parse(render(ENTRIES, T0))
    assert snapshot.generated == T0 and snapshot.entries == 3
    assert snapshot.index["bob@example.net"] == (
        Entry("user:shop-frontend", "hard_bounce", T0),
        Entry("global", "manual", T0),
    )


@pytest.mark.parametrize(
    ("user", "list_name", "address", "expected"),
    [
        pytest.param("shop-frontend", "shop", "BOB@example.net", "hard_bounce", id="user-scope-first"),
        pytest.param("newsletter", None, "bob@example.net", "manual", id="global-for-others"),
        pytest.param("shop-frontend", "shop", "carol@example.net", "unsubscribe", id="list-scope"),
        pytest.param("shop-frontend", "staff", "carol@example.net", None, id="other-list"),
        pytest.param(None, None, "carol@example.net", None, id="no-user-no-list"),
        pytest.param("shop-frontend", "shop", "dave@example.net", None, id="not-listed"),
    ],
)
def test_find_by_scope(user: str | None, list_name: str | None, address: str, expected: str | None) -> None:
    index = parse(render(ENTRIES, T0)).index
    found = find(index, user, list_name, address)
    assert (found.reason if found else None) == expected


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        pytest.param(b"", "first line", id="empty"),
        pytest.param(b"# smtpplus-suppressions 2 generated=1 entries=0\n", "first line", id="other-version"),
        pytest.param(b"# smtpplus-suppressions 1 generated=x entries=0\n", "generated", id="bad-time"),
        pytest.param(b"# smtpplus-suppressions 1 generated=1 entries=1\na\tglobal\n", "line 2", id="short-line"),
        pytest.param(b"# smtpplus-suppressions 1 generated=1 entries=1\na\tglobal\tbored\t1\n", "line 2", id="reason"),
        pytest.param(b"# smtpplus-suppressions 1 generated=1 entries=1\n\xff\n", "UTF-8", id="bytes"),
    ],
)
def test_a_bad_file_is_a_problem_not_a_crash(data: bytes, problem: str) -> None:
    with pytest.raises(SnapshotProblem, match=problem):
        parse(data)


def test_the_reader_follows_replacements_and_keeps_the_last_good_list(tmp_path: Path) -> None:
    path = tmp_path / NAME
    problems: list[str] = []
    clock = [0.0]
    reader = Reader(path, on_problem=problems.append, clock=lambda: clock[0])
    assert reader.current().entries == 0 and "missing" in problems[0]
    assert reader.current().entries == 0 and len(problems) == 1  # said once, not every second

    write(path, render(ENTRIES[:1], T0))
    assert reader.current().entries == 0  # checked at most once a second
    clock[0] = 1.0
    assert reader.current().entries == 1
    assert path.stat().st_mode & 0o777 == 0o640

    path.write_bytes(b"garbage")
    clock[0] = 2.0
    assert reader.current().entries == 1 and "kept the previous list" in problems[-1]

    write(path, render(ENTRIES[:3], T0))
    clock[0] = 3.0
    assert reader.current().entries == 3


def test_the_writer_rewrites_only_when_the_entries_change(tmp_path: Path) -> None:
    path = tmp_path / NAME
    writer = Writer(path)
    assert writer.update(ENTRIES[:1], T0) is True
    assert writer.update(ENTRIES[:1], T0.replace(hour=11)) is False  # same entries, later: no rewrite
    assert writer.update(ENTRIES[:2], T0) is True
    path.unlink()
    assert writer.update(ENTRIES[:2], T0) is True  # gone: written again
    assert parse(path.read_bytes()).entries == 2
