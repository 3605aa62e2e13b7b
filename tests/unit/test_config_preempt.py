"""priority.preempt: what the file says becomes config.preempt; what it may not say is refused with a hint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from smtpplus_milter.config import ConfigError, Preempt, load_config
from smtpplus_milter.config.values import HostPort
from tests.support.builders import write_config


def _load(directory: Path, preempt: Any, queues: dict[int, str] | None = None) -> Any:
    priority: dict[str, Any] = {"preempt": preempt}
    if queues is not None:
        priority["queues"] = queues
    return load_config(write_config(directory, settings={"priority": priority}))


def _problem(directory: Path, preempt: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        _load(directory, preempt)
    [problem] = caught.value.problems
    return f"{'.'.join(map(str, problem.path))}: {problem}"


def test_absent_means_no_preemption(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path)).preempt is None


def test_the_contract_form_with_our_defaults(tmp_path: Path) -> None:
    config = _load(tmp_path, {"pause": ["low"], "resume_after_seconds": 5})
    assert config.preempt == Preempt(
        pause=frozenset({"low"}),
        resume_after_seconds=5.0,
        postfix_config_dir=Path("/etc/postfix"),
        state_file=Path("/var/lib/smtpplus-preempt/held.json"),
        metrics_listen=None,
    )
    assert not [w for w in config.warnings if "preempt" in w]


def test_every_key(tmp_path: Path) -> None:
    preempt = {
        "pause": ["normal", "low"],
        "resume_after_seconds": 0.5,
        "postfix_config_dir": "postfix-out",  # relative: beside the config file
        "state_file": "/run/held.json",
        "metrics_listen": "127.0.0.1:9469",
    }
    config = _load(tmp_path, preempt)
    assert config.preempt.pause == frozenset({"normal", "low"})
    assert config.preempt.resume_after_seconds == 0.5
    assert config.preempt.postfix_config_dir == tmp_path / "postfix-out"
    assert config.preempt.metrics_listen == HostPort("127.0.0.1", 9469)


@pytest.mark.parametrize(
    ("preempt", "expected"),
    [
        pytest.param({"pause": ["high"]}, "high cannot be paused", id="high"),
        pytest.param({"pause": []}, "priority.preempt.pause", id="empty"),
        pytest.param({"pause": ["bulk"]}, "priority.preempt.pause.0", id="unknown-queue"),
        pytest.param({"pause": ["low", "low"]}, "named twice", id="twice"),
        pytest.param({"resume_after_seconds": -1}, "greater than or equal to 0", id="negative"),
        pytest.param({"resume_after_seconds": 7200}, "less than or equal to 3600", id="too-long"),
        pytest.param({"resume_after_seconds": "5s"}, "priority.preempt.resume_after_seconds", id="text"),
        pytest.param({"pause_queues": ["low"]}, "pause_queues", id="misspelt-key"),
        pytest.param({"metrics_listen": "nowhere"}, "priority.preempt.metrics_listen", id="bad-listen"),
    ],
)
def test_refused(tmp_path: Path, preempt: dict[str, Any], expected: str) -> None:
    assert expected in _problem(tmp_path, preempt)


@pytest.mark.parametrize(
    ("queues", "pause", "warning"),
    [
        pytest.param(
            {1: "normal", 2: "normal", 3: "normal", 4: "low", 5: "low"},
            ["low"],
            "nothing will ever pause",
            id="no-high",
        ),
        pytest.param(
            {1: "high", 2: "high", 3: "normal", 4: "normal", 5: "normal"}, ["low"], "names low", id="idle-pause"
        ),
        pytest.param(None, ["low"], None, id="defaults"),
    ],
)
def test_warnings(tmp_path: Path, queues: dict[int, str] | None, pause: list[str], warning: str | None) -> None:
    config = _load(tmp_path, {"pause": pause}, queues)
    found = [w for w in config.warnings if "priority.preempt" in w]
    assert (len(found) == 1 and warning in found[0]) if warning else not found
