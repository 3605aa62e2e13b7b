"""systemd/smtpplus-preempt.service's capability set against a real Postfix queue.

The unit runs the preempt daemon as root with only the capabilities its CapabilityBoundingSet
names. Here the same work (postconf for the queue directory, a scan of the queue, ``queue status``,
postsuper -h and -H, postkick) runs under exactly that bounding set (``setpriv``), and again with
each capability taken away: the set must be enough, and each member must be needed.
"""

from __future__ import annotations

import json
import os
import shutil
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.harness import Postfix, free_port, make_workdir, remove_workdir

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="private Postfix instances need root"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed"),
]

REPO = Path(__file__).resolve().parents[2]

# Each step prints one JSON line when it worked; the first failure ends the run with its message.
WORK = """
import json, sys, time
from pathlib import Path
from smtpplus_milter.infra.postfix_queue import PostfixTools, scan
from smtpplus_milter.services.preempt import queue_status

tools = PostfixTools(Path(sys.argv[1]))
queue_dir = tools.queue_directory()
print(json.dumps({"step": "postconf", "queue_dir": str(queue_dir)}), flush=True)
found = [(m.queue_id, m.postfix_queue) for m in scan(queue_dir)]
print(json.dumps({"step": "scan", "found": found}), flush=True)
status = queue_status(tools, None, time.time())
print(json.dumps({"step": "status", "postfix": status["postfix"]}), flush=True)
ids = [queue_id for queue_id, _ in found]
tools.hold(ids)
held = sorted(p.name for p in (queue_dir / "hold").iterdir())
print(json.dumps({"step": "hold", "hold": held}), flush=True)
tools.release(ids)
print(json.dumps({"step": "release", "hold": sorted(p.name for p in (queue_dir / "hold").iterdir())}), flush=True)
tools.kick_deferred()
print(json.dumps({"step": "kick"}), flush=True)
"""


def _bounding_set() -> list[str]:
    """CapabilityBoundingSet of the shipped unit, as setpriv names them (dac_read_search, ...)."""
    text = (REPO / "systemd/smtpplus-preempt.service").read_text(encoding="utf-8")
    [line] = [line for line in text.splitlines() if line.startswith("CapabilityBoundingSet=")]
    caps = line.partition("=")[2].split()
    assert caps and all(cap.startswith("CAP_") for cap in caps)
    return [cap.removeprefix("CAP_").lower() for cap in caps]


def _run_with(caps: list[str], postfix: Postfix) -> tuple[list[dict[str, object]], str]:
    bounding = ",".join(["-all", *(f"+{cap}" for cap in caps)])
    done = subprocess.run(
        [
            "setpriv",
            f"--bounding-set={bounding}",
            "--inh-caps=-all",
            "--",
            sys.executable,
            "-c",
            WORK,
            str(postfix.config_dir),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return [json.loads(line) for line in done.stdout.splitlines()], done.stderr


@pytest.fixture(scope="module")
def postfix() -> Iterator[Postfix]:
    workdir = make_workdir("preempt-unit")
    # Nothing listens on the relay host's port: the message stays in the deferred queue.
    instance = Postfix(workdir / "postfix", relayhost_port=free_port(), sasl_socket=None)
    try:
        instance.start()
        with smtplib.SMTP("127.0.0.1", instance.smtp_port, timeout=30) as client:
            client.sendmail("bulk@example.org", ["someone@example.net"], "Subject: bulk\r\n\r\nhello\r\n")
        deadline = time.monotonic() + 60
        while not any(path.is_file() for path in (instance.queue_dir / "deferred").rglob("*")):
            assert time.monotonic() < deadline, "the message never reached the deferred queue"
            time.sleep(0.2)
        yield instance
    finally:
        instance.stop()
        remove_workdir(workdir)


@pytest.fixture
def clean_hold(postfix: Postfix) -> Iterator[None]:
    yield
    # A run that stopped half way must not leave the message on hold for the next one.
    subprocess.run(["postsuper", "-c", str(postfix.config_dir), "-H", "ALL"], capture_output=True, check=False)


def test_the_units_capabilities_are_enough(postfix: Postfix, clean_hold: None) -> None:
    steps, stderr = _run_with(_bounding_set(), postfix)
    assert [step["step"] for step in steps] == ["postconf", "scan", "status", "hold", "release", "kick"], stderr
    [(queue_id, where)] = steps[1]["found"]
    assert where == "deferred"
    assert steps[2]["postfix"] == {"incoming": 0, "active": 0, "deferred": 1, "hold": 0}
    assert steps[3]["hold"] == [queue_id]
    assert steps[4]["hold"] == []
    assert any(path.name == queue_id for path in (postfix.queue_dir / "deferred").rglob("*"))


@pytest.mark.parametrize(
    ("removed", "last_step", "message"),
    [
        # Postfix's queue subdirectories are postfix's, mode 0700: root reads them only by this one.
        pytest.param("dac_read_search", "postconf", "Permission denied", id="no-dac-read-search"),
        # postsuper switches to mail_owner before it touches the queue.
        pytest.param("setuid", "status", "setuid", id="no-setuid"),
        pytest.param("setgid", "status", "setgid", id="no-setgid"),
    ],
)
def test_each_capability_is_needed(
    postfix: Postfix, clean_hold: None, removed: str, last_step: str, message: str
) -> None:
    caps = _bounding_set()
    assert removed in caps
    steps, stderr = _run_with([cap for cap in caps if cap != removed], postfix)
    assert [step["step"] for step in steps][-1] == last_step, stderr
    assert message in stderr
