"""The preemption component's state file, and ``queue status`` over a queue directory laid out as
Postfix lays it out (Postfix's own ``postconf`` names the directory, as in production)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from smtpplus_milter.config.values import Preempt
from smtpplus_milter.core.preempt import Held
from smtpplus_milter.infra.postfix_queue import PostfixTools
from smtpplus_milter.services.preempt import SavedState, StateFileError, queue_status, read_state, write_state
from tests.support.builders import write_config
from tests.support.queuefile import postfix_file

pytestmark = pytest.mark.skipif(shutil.which("postconf") is None, reason="needs Postfix's postconf")


def test_the_state_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "held.json"
    assert read_state(path) == SavedState((), None)  # none yet: nothing held
    state = SavedState((Held("4jdA", 10.5, True), Held("4jdB", 11.0, False)), 900.0, ("low",), 42, 901.0)
    write_state(path, state)
    assert read_state(path) == state
    assert path.stat().st_mode & 0o777 == 0o640
    assert not [p for p in tmp_path.iterdir() if p.name != "held.json"]  # no temporary file left


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("{not json", id="not-json"),
        pytest.param('{"held": [{"arrival": 1}]}', id="id-missing"),
        pytest.param('{"held": "4jdA"}', id="held-not-a-list"),
        pytest.param('{"version": 1}', id="held-missing"),
    ],
)
def test_a_state_file_it_cannot_read_is_an_error_not_an_empty_state(tmp_path: Path, text: str) -> None:
    # Reading it as "nothing held" would leave the mail it names on hold for good.
    path = tmp_path / "held.json"
    path.write_text(text)
    with pytest.raises(StateFileError, match="not a state file"):
        read_state(path)


def test_an_entry_without_from_active_counts_as_held_from_active(tmp_path: Path) -> None:
    # The cautious reading: such a message waits the longer settle time before its release.
    path = tmp_path / "held.json"
    path.write_text(json.dumps({"held": [{"id": "4jdA", "arrival": 1.0}], "paused_since": None}))
    assert read_state(path).held == (Held("4jdA", 1.0, True),)


def _queue(tmp_path: Path) -> tuple[Path, Path]:
    """A Postfix config directory whose main.cf names a queue directory with a few messages."""
    config_dir = tmp_path / "postfix"
    queue_dir = tmp_path / "queue"
    config_dir.mkdir()
    (config_dir / "main.cf").write_text(f"queue_directory = {queue_dir}\ncompatibility_level = 3.6\n")
    files = {
        "incoming/4jdH1": ("high", 0o700),
        "active/4jdL1": ("low", 0o700),
        "deferred/4/4jdL2": ("low", 0o700),
        "hold/4jdL3": ("low", 0o700),  # ours (in the state file)
        "hold/4jdOP": ("low", 0o700),  # the operator's
        "active/4jdN1": ("normal", 0o700),
        "incoming/4jdW1": ("low", 0o600),  # still being written: not a message yet
    }
    for name, (queue, mode) in files.items():
        path = queue_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(postfix_file(appended=(f"X-SMTPPlus-Queue: {queue}",)))
        os.chmod(path, mode)
    plain = queue_dir / "active" / "4jdX1"  # mail that is not SMTP+ mail: no queue header
    plain.write_bytes(postfix_file(appended=()))
    return config_dir, queue_dir


def test_queue_status_counts_each_queue_and_what_preemption_holds(tmp_path: Path) -> None:
    config_dir, _queue_dir = _queue(tmp_path)
    state_file = tmp_path / "held.json"
    write_state(state_file, SavedState((Held("4jdL3", 1.0, True), Held("4jdGONE", 2.0, True)), 900.0, ("low",), 1, 2))
    settings = Preempt(frozenset({"low"}), 5.0, config_dir, state_file)
    status = queue_status(PostfixTools(config_dir), settings, 1000.0)
    assert status["queues"] == {
        "high": {"messages": 1, "held": 0, "paused": False},
        "normal": {"messages": 1, "held": 0, "paused": False},
        "low": {"messages": 3, "held": 1, "paused": True},  # active, deferred, ours on hold
    }
    assert status["postfix"] == {"incoming": 1, "active": 3, "deferred": 1, "hold": 2}
    assert (status["other"], status["held_by_preempt"]) == (1, 1)
    assert status["preempt"]["paused_since"] == 900.0


def test_queue_status_command(tmp_path: Path) -> None:
    config_dir, _queue_dir = _queue(tmp_path)
    config = write_config(
        tmp_path,
        settings={
            "priority": {"preempt": {"postfix_config_dir": str(config_dir), "state_file": str(tmp_path / "held.json")}}
        },
    )
    command = [sys.executable, "-m", "smtpplus_milter", "queue", "status", "-c", str(config)]
    table = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert table.splitlines()[0].split() == ["QUEUE", "MESSAGES", "HELD", "PAUSED"]
    # No state file yet: nothing is ours, so both low messages on hold are holds of the operator.
    assert table.splitlines()[3].split() == ["low", "2", "0", "no"]
    assert "Preemption: not paused" in table
    as_json = json.loads(
        subprocess.run([*command, "--format", "json"], capture_output=True, text=True, check=True).stdout
    )
    assert as_json["postfix"]["hold"] == 2 and as_json["queues"]["low"]["paused"] is False
    # Another instance than the config names: --postfix-dir; a directory that is none: exit 1 and why.
    wrong = subprocess.run([*command, "--postfix-dir", str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert wrong.returncode == 1 and "queue status:" in wrong.stderr
