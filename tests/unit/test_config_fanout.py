"""Config of issue 15's filter: the fanout: section (defaults, paths beside the file, loopback only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from smtpplus_milter.config import ConfigError, Fanout, HostPort, SocketSpec, load_config
from tests.support.builders import write_config


def _load(directory: Path, fanout: dict[str, Any] | None) -> Fanout:
    settings = {} if fanout is None else {"fanout": fanout}
    return load_config(write_config(directory, settings=settings)).fanout


def test_defaults(tmp_path: Path) -> None:
    assert _load(tmp_path, None) == Fanout(
        listen=SocketSpec.parse("unix:/run/smtpplus-fanout/fanout.sock"),
        reinject=HostPort("127.0.0.1", 10027),
        metrics_listen=None,
        journal=Path("/var/lib/smtpplus/fanout.db"),
        journal_days=7,
    )


def test_given_values_and_a_relative_journal(tmp_path: Path) -> None:
    fanout = _load(
        tmp_path,
        {
            "listen": "inet:10026@127.0.0.1",
            "reinject": "[::1]:10027",
            "metrics_listen": "127.0.0.1:9466",
            "journal": "state/fanout.db",
            "journal_days": 10,
        },
    )
    assert fanout.listen == SocketSpec.parse("inet:10026@127.0.0.1")
    assert fanout.reinject == HostPort("::1", 10027)
    assert fanout.metrics_listen == HostPort("127.0.0.1", 9466)
    assert fanout.journal == tmp_path / "state/fanout.db"
    assert fanout.journal_days == 10


@pytest.mark.parametrize(
    ("fanout", "key", "words"),
    [
        pytest.param({"reinject": "192.0.2.1:10027"}, "reinject", "not a loopback", id="reinject-elsewhere"),
        pytest.param({"reinject": "mail.example:10027"}, "reinject", "not a loopback", id="reinject-by-name"),
        pytest.param({"reinject": "127.0.0.1"}, "reinject", "HOST:PORT", id="reinject-no-port"),
        pytest.param({"journal_days": 0}, "journal_days", "greater than or equal to 1", id="journal-days-0"),
        pytest.param({"listen": "inet:10026"}, "listen", "every interface", id="listen-no-host"),
        pytest.param({"threads": 8}, "threads", "", id="unknown-key"),
    ],
)
def test_refused(tmp_path: Path, fanout: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as raised:
        _load(tmp_path, fanout)
    [problem] = raised.value.problems
    assert problem.path[:2] == ("fanout", key) and words in problem.message
