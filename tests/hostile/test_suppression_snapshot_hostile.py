"""The suppression snapshot the milter reads at RCPT: whatever is in the file, the milter keeps a
list it read before (or none) and goes on: an oversized or broken file never stops mail."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from smtpplus_milter.infra import suppression_file
from smtpplus_milter.infra.suppression_file import NAME, Reader, render, write

T0 = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"# smtpplus-suppressions 1 generated=1 entries=1\n" + b"a" * 5000 + b"\n", id="one-long-line"),
        pytest.param(b"\xff\xfe" * 3000, id="not-utf8"),
        pytest.param(b"# smtpplus-suppressions 1 generated=1e400 entries=0\n", id="time-overflow"),
        pytest.param(
            b"# smtpplus-suppressions 1 generated=1 entries=1\nx\tglobal\tmanual\t1e400\n", id="entry-overflow"
        ),
        pytest.param(b"x" * 4000, id="over-the-size-bound"),
    ],
)
def test_a_hostile_file_keeps_the_last_good_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes
) -> None:
    monkeypatch.setattr(suppression_file, "MAX_BYTES", 3000)
    path = tmp_path / NAME
    clock = [0.0]
    problems: list[str] = []
    reader = Reader(path, on_problem=problems.append, clock=lambda: clock[0])
    write(path, render([("a@example.org", "global", "manual", T0)], T0))
    assert reader.current().entries == 1
    path.write_bytes(content)
    clock[0] = 5.0
    assert reader.current().entries == 1
    assert problems and "kept the previous list" in problems[-1]
