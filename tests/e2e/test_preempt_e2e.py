"""Priority preemption through the lab's real Postfix: ``smtpplus-milter preempt`` holds the low
queue while priority-1 mail waits or is being delivered and releases it afterwards.

The first test is the issue's scenario: a small ``qmgr_message_active_limit`` (200) and one slow
next hop shared by every queue, 2,000 low messages queued, then 20 priority-1 messages. Without
preemption the urgent mail waits in Postfix's incoming queue behind the backlog (the queue manager
takes new mail only as active slots free up, in directory order); with it, the urgent messages are
delivered while the backlog is on hold, and every low message is delivered afterwards, once.
"""

from __future__ import annotations

import json
import os
import re
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lab.harness import ReceivedMessage
from lab.stack import Stack, client_tls, make_message

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="private Postfix instances and postsuper need root"),
]

BULK = ("newsletter", "news@news.yourcompany.com")  # priority 5: the low queue
URGENT = ("ceo-outlook", "ceo@yourcompany.com")  # priority 1: the high queue


def _submit_bulk(stack: Stack, count: int, sessions: int = 8) -> None:
    assert stack.postfix is not None
    port = stack.postfix.submission_port
    failures: list[str] = []
    login, sender = BULK

    def worker(offset: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
            client.starttls(context=client_tls())
            client.login(login, stack.passwords[login])
            for index in range(offset, count, sessions):
                message = make_message(from_=sender, subject=f"bulk {index}", body="backlog line\r\n" * 50)
                try:
                    client.sendmail(sender, ["someone@example.org"], message)
                except smtplib.SMTPException as exc:
                    failures.append(str(exc))

    threads = [threading.Thread(target=worker, args=(offset,)) for offset in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]


def _send_urgent(stack: Stack, count: int) -> dict[str, float]:
    login, sender = URGENT
    submitted = {}
    for index in range(count):
        subject = f"urgent {index}"
        result = stack.send(make_message(from_=sender, subject=subject), login=login, mail_from=sender)
        assert result.accepted, result
        submitted[subject] = time.time()
    return submitted


def _subject(data: bytes) -> str:
    return data.split(b"\r\nSubject: ", 1)[1].split(b"\r\n", 1)[0].decode()


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _bulk_arrived(stack: Stack) -> list[ReceivedMessage]:
    return [m for m in stack.sink.messages if _subject(m.data).startswith("bulk")]


def _postsuper(stack: Stack, *args: str) -> None:
    assert stack.postfix is not None
    subprocess.run(["postsuper", "-c", str(stack.postfix.config_dir), *args], check=True, capture_output=True)


def _hold_dir(stack: Stack) -> set[str]:
    assert stack.postfix is not None
    hold = stack.postfix.queue_dir / "hold"
    return set(os.listdir(hold)) if hold.exists() else set()


def _state(stack: Stack) -> dict[str, object]:
    path = Path(stack.settings["priority"]["preempt"]["state_file"])
    return dict(json.loads(path.read_text())) if path.exists() else {"held": [], "paused_since": None}


def _queue_status(stack: Stack) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "smtpplus_milter", "queue", "status", "-c", str(stack.config_path), "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(done.stdout))


def test_urgent_mail_overtakes_a_backlog_ten_times_the_active_limit_on_a_shared_slow_next_hop() -> None:
    backlog, urgent = 2000, 20
    with Stack(
        priority_routing="relayhost",  # every queue's transport delivers to the same (slow) relayhost
        slow_seconds=0.03,
        postfix_main_cf={"qmgr_message_active_limit": "200"},
        preempt={"resume_after_seconds": 2},
    ) as stack:
        assert stack.postfix is not None and stack.preempt is not None
        _submit_bulk(stack, backlog)
        queued = len(stack.postfix.queue_ids())
        assert queued > 400, f"only {queued} bulk messages still queued: the backlog must exceed the active limit"
        delivered_before = len(stack.sink.messages)
        submitted = _send_urgent(stack, urgent)
        _wait(lambda: sum(_subject(m.data).startswith("urgent") for m in stack.sink.messages) == urgent, 60, "urgent")
        # What the pause holds, with Postfix's arrival times (the state file is written before each hold).
        held = [(item["arrival"], item["id"]) for item in _state(stack)["held"]]  # type: ignore[attr-defined]
        assert len(held) > 1000
        arrivals = [(m.received_at, _subject(m.data)) for m in stack.sink.messages]
        last_urgent = max(at for at, subject in arrivals if subject.startswith("urgent"))
        latencies = sorted(at - submitted[subject] for at, subject in arrivals if subject.startswith("urgent"))
        # Bulk deliveries that finished after the first urgent message was accepted and before the
        # last urgent one arrived: those already under way (the low transport runs 2 at a time) and
        # those started before the component's next scan (every 0.2 s), while 20 urgent messages are
        # submitted one after the other. Not the backlog: well over a thousand are still waiting.
        first_submit = min(submitted.values())
        overtaken_by = [s for at, s in arrivals if s.startswith("bulk") and first_submit < at < last_urgent]
        assert len(overtaken_by) <= 60, (len(overtaken_by), latencies)
        assert backlog - delivered_before - len(overtaken_by) > 1000  # the urgent mail did overtake a backlog
        assert latencies[int(0.95 * (urgent - 1))] < 2.0, latencies
        # Afterwards every bulk message arrives, exactly once, and nothing stays on hold.
        _wait(lambda: len(stack.sink.messages) >= backlog + urgent, 300, "the whole backlog")
        stack.postfix.wait_for_empty_queue(timeout=30)
        subjects = [_subject(m.data) for m in stack.sink.messages]
        assert sorted(subjects) == sorted([f"bulk {i}" for i in range(backlog)] + list(submitted))
        assert "status=bounced" not in stack.postfix.log_text()
        assert stack.preempt.events("preempt_paused") and stack.preempt.events("preempt_released")
        # Released in the order they arrived: Postfix logs each release as postsuper performs it.
        released = re.findall(r"postsuper\[\d+\]: (\w+): released from hold", stack.postfix.log_text())
        expected = [queue_id for _arrival, queue_id in sorted(held)]
        assert [queue_id for queue_id in released if queue_id in set(expected)] == expected
        assert _state(stack)["held"] == []
        metrics = stack.preempt.metrics_text()
        seconds = [line for line in metrics.splitlines() if line.startswith("smtpplus_preempt_seconds_total ")]
        assert seconds and float(seconds[0].split()[1]) > 0


def test_a_crash_while_holding_is_released_on_restart_and_an_operator_hold_is_never_released() -> None:
    with Stack(
        priority_routing="relayhost",  # one slow next hop: the urgent message is seen waiting for it
        slow_seconds=0.5,
        preempt={"resume_after_seconds": 600},  # the pause outlasts the test: only a restart ends it
    ) as stack:
        assert stack.postfix is not None and stack.preempt is not None
        _submit_bulk(stack, 30, sessions=2)
        # The operator holds one low message of their own before anything is paused: the newest,
        # which no delivery has started on yet (one under way would still be delivered).
        mine = max(stack.postfix.queue_json(), key=lambda item: item["arrival_time"])["queue_id"]
        _postsuper(stack, "-h", mine)
        _send_urgent(stack, 1)
        _wait(lambda: len(_state(stack)["held"]) > 0, 20, "the pause")  # type: ignore[arg-type]
        held = {item["id"] for item in _state(stack)["held"]}  # type: ignore[attr-defined]
        assert mine not in held
        _wait(lambda: held <= _hold_dir(stack), 20, "the held messages in Postfix's hold queue")
        status = _queue_status(stack)
        assert status["queues"]["low"]["paused"] is True  # type: ignore[index]
        assert status["queues"]["low"]["held"] == len(held)  # type: ignore[index]
        assert status["postfix"]["hold"] == len(held) + 1  # type: ignore[index]
        assert 'smtpplus_queue_paused{queue="low"} 1.0' in stack.preempt.metrics_text()
        delivered = len(_bulk_arrived(stack))

        stack.preempt.kill()  # kill -9: the state file still names what it held
        time.sleep(2)
        assert held <= _hold_dir(stack) and len(_bulk_arrived(stack)) <= delivered + 2
        stack.preempt.start()
        # No high mail waits now: the restart releases what the crashed run held.
        _wait(lambda: not (held & _hold_dir(stack)), 30, "the release after the restart")
        _wait(lambda: len(_bulk_arrived(stack)) >= 29, 120, "every bulk message but the operator's")
        stack.postfix.wait_for_log(r"released from hold", timeout=10)
        subjects = sorted(_subject(m.data) for m in _bulk_arrived(stack))
        assert len(subjects) == len(set(subjects)) == 29
        assert _hold_dir(stack) == {mine}  # the operator's hold stays
        assert _state(stack)["held"] == []


def test_a_clean_stop_releases_everything_it_holds() -> None:
    with Stack(priority_routing="relayhost", slow_seconds=0.5, preempt={"resume_after_seconds": 600}) as stack:
        assert stack.postfix is not None and stack.preempt is not None
        _submit_bulk(stack, 10, sessions=2)
        _send_urgent(stack, 1)
        _wait(lambda: len(_state(stack)["held"]) > 0, 20, "the pause")  # type: ignore[arg-type]
        assert stack.preempt.stop() == 0
        assert not _hold_dir(stack)
        _wait(lambda: len(_bulk_arrived(stack)) >= 10, 60, "the bulk messages")
        assert sorted(_subject(m.data) for m in _bulk_arrived(stack)) == sorted(f"bulk {i}" for i in range(10))
