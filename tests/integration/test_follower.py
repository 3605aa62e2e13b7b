"""The log follower against real files and a real store (SQLite; one scenario on PostgreSQL too).

Most tests drive :meth:`Follower.step` in-process so each file operation (a partial line, a rename,
a truncation) happens at a known moment; two run the real ``smtpplus-milter follow`` process (kill -9
and restart; the metrics over HTTP; SIGTERM).
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lab.harness import free_port
from smtpplus_milter.config.values import HostPort
from smtpplus_milter.core.suppression import Policy
from smtpplus_milter.infra.spool import SpoolAppender, SpoolReader
from smtpplus_milter.infra.store import TrackingStore, open_store
from smtpplus_milter.infra.store.base import Report
from smtpplus_milter.infra.suppression_file import Writer as SnapshotWriter
from smtpplus_milter.observe.metrics import FollowerMetrics
from smtpplus_milter.services.follower import REFRESH_SECONDS, REMOVED_GRACE_SECONDS, Follower, is_local_relay
from smtpplus_milter.services.notifier import Audience, Notifier, Plan, planner
from tests.support import postgres
from tests.support.builders import message_record, write_config

NODE = "relay-1"
USER = "shop-frontend"


def ts(second: int) -> str:
    return f"2026-12-01T03:{second // 60:02d}:{second % 60:02d}.000000+00:00"


def qid(n: int) -> str:
    """A long queue id (enable_long_queue_ids): ten characters, 'z', an inode part without 'z'."""
    return f"4jdfvM0wYyz{n}"


def smtpd(q: str, second: int = 0, user: str = USER) -> str:
    return (
        f"{ts(second)} relay postfix/submission/smtpd[100]: {q}: client=app.example[192.0.2.1],"
        f" sasl_method=PLAIN, sasl_username={user}\n"
    )


def delivery(q: str, to: str, status: str, second: int, relay: str = "mx.example.org[192.0.2.25]:25") -> str:
    dsn, reply = {
        "sent": ("2.0.0", "250 2.0.0 Ok: queued as 4Abc"),
        "deferred": ("4.4.1", "connect to mx.example.org[192.0.2.25]:25: Connection refused"),
        "bounced": ("5.1.1", "host mx.example.org[192.0.2.25] said: 550 5.1.1 no such user (in reply to RCPT TO)"),
    }[status]
    return (
        f"{ts(second)} relay postfix/smtp[200]: {q}: to=<{to}>, relay={relay}, delay=1.2,"
        f" delays=0.1/0/0.5/0.6, dsn={dsn}, status={status} ({reply})\n"
    )


def handoff(q: str, to: str, new: str, second: int, relay: str) -> str:
    return (
        f"{ts(second)} relay postfix/smtp[201]: {q}: to=<{to}>, relay={relay}, delay=0.2,"
        f" delays=0.1/0/0/0.1, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as {new})\n"
    )


def expired(q: str, second: int) -> str:
    return (
        f"{ts(second)} relay postfix/qmgr[300]: {q}: from=<info@yourcompany.com>, status=expired, returned to sender\n"
    )


def removed(q: str, second: int) -> str:
    return f"{ts(second)} relay postfix/qmgr[300]: {q}: removed\n"


def notification(q: str, new: str, second: int) -> str:
    return f"{ts(second)} relay postfix/bounce[400]: {q}: sender non-delivery notification: {new}\n"


def append(path: Path, text: str) -> None:
    with path.open("ab") as handle:
        handle.write(text.encode())


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/t.db"


@pytest.fixture
def store(url: str) -> Iterator[TrackingStore]:
    opened = open_store(url)
    opened.migrate()
    yield opened
    opened.close()


def follower(url: str, log: Path, metrics: FollowerMetrics | None = None, chunk: int = 1 << 20) -> Follower:
    return Follower(url, NODE, log, metrics or FollowerMetrics(), poll=0.01, chunk=chunk)


def run_out(f: Follower, limit: int = 1000) -> None:
    """Step until a step does nothing (the file is read to its end)."""
    for _ in range(limit):
        if not f.step():
            return
    raise AssertionError("the follower never reached the end of the file")


def story(store: TrackingStore, q: str) -> dict[str, tuple[str, list[str]]]:
    found = store.message(q, NODE)
    assert found is not None, q
    return {r.address: (r.state, [a.status for a in r.attempts]) for r in found.recipients}


def attempt_count(store: TrackingStore, q: str) -> int:
    return sum(len(v[1]) for v in story(store, q).values())


def test_a_log_written_in_pieces_gives_each_attempt_once(store: TrackingStore, url: str, tmp_path: Path) -> None:
    log = tmp_path / "postfix.log"
    store.record_messages([message_record(qid(1), recipients=("a@example.org", "b@example.net"))])
    text = (
        smtpd(qid(1))
        + delivery(qid(1), "a@example.org", "deferred", 1)
        + delivery(qid(1), "b@example.net", "bounced", 2)
        + delivery(qid(1), "a@example.org", "sent", 3)
        + removed(qid(1), 4)
    )
    f = follower(url, log)
    assert not f.step()  # no file yet: it waits
    log.write_bytes(b"")
    data = text.encode()
    # Cut in the middle of lines, so a partial line waits for its end.
    for start in range(0, len(data), 37):
        append(log, data[start : start + 37].decode())
        run_out(f)
    f.close()
    assert story(store, qid(1)) == {
        "a@example.org": ("delivered", ["deferred", "sent"]),
        "b@example.net": ("bounced", ["bounced"]),
    }
    saved = store.position(NODE)
    assert saved is not None and saved.offset == len(data)


def test_foreign_lines_and_unknown_queue_ids_are_skipped(store: TrackingStore, url: str, tmp_path: Path) -> None:
    log = tmp_path / "postfix.log"
    store.record_messages([message_record(qid(1))])
    log.write_text(
        f"{ts(0)} relay dovecot[5]: auth: client=x, sasl_username=y\n"
        f"{ts(0)} relay postfix/smtpd[6]: connect from unknown[192.0.2.9]\n"
        + delivery(qid(2), "x@example.org", "sent", 1)  # not tracked (no smtpd login, no record)
        + f"{ts(1)} relay postfix/smtpd[6]: {qid(3)}: client=plain[192.0.2.9]\n"  # not authenticated
        + delivery(qid(3), "y@example.org", "sent", 2)
        + "\x00\xff garbage line\n"
        + delivery(qid(1), "a@example.org", "sent", 3)
    )
    f = follower(url, log)
    run_out(f)
    f.close()
    assert story(store, qid(1)) == {"a@example.org": ("delivered", ["sent"])}
    assert store.message(qid(2), NODE) is None
    # Nothing of the untracked ids was written (attempts of unknown messages would be kept otherwise).
    assert store.open_queue_ids(NODE).users == {}
    assert _attempt_rows(url) == 1


def _attempt_rows(url: str) -> int:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM attempts").fetchone()[0])


def test_an_authenticated_submission_is_tracked_before_its_record_arrives(
    store: TrackingStore, url: str, tmp_path: Path
) -> None:
    log = tmp_path / "postfix.log"
    log.write_text(smtpd(qid(5)) + delivery(qid(5), "late@example.org", "sent", 1))
    f = follower(url, log)
    run_out(f)
    f.close()
    # The milter's record comes later (it waited in the spool): the attempt is applied then.
    store.record_messages([message_record(qid(5), recipients=("late@example.org",))])
    assert story(store, qid(5)) == {"late@example.org": ("delivered", ["sent"])}


@pytest.mark.parametrize(
    ("relay", "local"),
    [
        pytest.param("127.0.0.1[127.0.0.1]:10025", True, id="loopback-v4"),
        pytest.param("localhost[::1]:10026", True, id="localhost-v6"),
        pytest.param("private/amavis", True, id="unix-socket"),
        pytest.param("none", True, id="none"),
        pytest.param("mx.example.org[192.0.2.25]:25", False, id="remote"),
        pytest.param("[2001:db8::25]:25", False, id="remote-v6"),
    ],
)
def test_which_relays_are_local(relay: str, local: bool) -> None:
    assert is_local_relay(relay) is local


def test_queued_as_local_is_a_link_and_remote_is_a_delivery(store: TrackingStore, url: str, tmp_path: Path) -> None:
    log = tmp_path / "postfix.log"
    store.record_messages(
        [
            message_record(qid(1), recipients=("a@example.org",)),
            message_record(qid(2), recipients=("b@example.org",)),
        ]
    )
    log.write_text(
        handoff(qid(1), "a@example.org", qid(11), 1, "127.0.0.1[127.0.0.1]:10025")
        + delivery(qid(11), "a@example.org", "deferred", 2)
        + delivery(qid(11), "a@example.org", "sent", 3)
        + handoff(qid(2), "b@example.org", qid(12), 4, "mx.example.org[192.0.2.25]:25")
        + delivery(qid(12), "b@example.org", "bounced", 5)  # the remote host's queue: not ours
    )
    f = follower(url, log)
    run_out(f)
    f.close()
    assert story(store, qid(1)) == {"a@example.org": ("delivered", ["deferred", "sent"])}
    assert store.message(qid(11), NODE) is not None  # found through the link
    assert story(store, qid(2)) == {"b@example.org": ("delivered", ["sent"])}
    assert store.message(qid(12), NODE) is None


def test_expired_expires_every_recipient_still_waiting(store: TrackingStore, url: str, tmp_path: Path) -> None:
    log = tmp_path / "postfix.log"
    recipients = ("a@example.org", "b@example.org", "c@example.org")
    store.record_messages([message_record(qid(1), recipients=recipients)])
    log.write_text(
        delivery(qid(1), "a@example.org", "sent", 1)
        + delivery(qid(1), "b@example.org", "deferred", 2)
        + expired(qid(1), 3)
        + notification(qid(1), qid(99), 4)
        + removed(qid(1), 5)
        + expired(qid(1), 3)  # the same line again (a rotated file read twice): nothing changes
    )
    f = follower(url, log)
    run_out(f)
    f.close()
    assert story(store, qid(1)) == {
        "a@example.org": ("delivered", ["sent"]),
        "b@example.org": ("expired", ["deferred", "expired"]),
        "c@example.org": ("expired", ["expired"]),
    }
    # The notification's id names the same message for `messages show`, and changes no recipient.
    assert store.message(qid(99), NODE) is not None


def test_rotation_by_rename_finishes_the_old_file(store: TrackingStore, url: str, tmp_path: Path) -> None:
    log = tmp_path / "postfix.log"
    store.record_messages([message_record(qid(1), recipients=("a@example.org", "b@example.org", "c@example.org"))])
    log.write_text(delivery(qid(1), "a@example.org", "sent", 1))
    f = follower(url, log)
    run_out(f)
    log.rename(tmp_path / "postfix.log.1")
    # postlogd writes one more line to the old file before it reopens: it must not be lost.
    append(tmp_path / "postfix.log.1", delivery(qid(1), "b@example.org", "sent", 2))
    run_out(f)  # reads that line; the new file does not exist yet, so it stays with the old one
    log.write_text(delivery(qid(1), "c@example.org", "bounced", 3))
    run_out(f)
    f.close()
    assert story(store, qid(1)) == {
        "a@example.org": ("delivered", ["sent"]),
        "b@example.org": ("delivered", ["sent"]),
        "c@example.org": ("bounced", ["bounced"]),
    }
    saved = store.position(NODE)
    assert saved is not None and saved.offset == log.stat().st_size
    assert saved.file_id.startswith(f"{log.stat().st_dev}:{log.stat().st_ino}:")


def test_a_file_rotated_while_stopped_is_finished_at_the_next_start(
    store: TrackingStore, url: str, tmp_path: Path
) -> None:
    log = tmp_path / "postfix.log"
    store.record_messages([message_record(qid(1), recipients=("a@example.org", "b@example.org", "c@example.org"))])
    log.write_text(delivery(qid(1), "a@example.org", "sent", 1))
    f = follower(url, log)
    run_out(f)
    f.close()
    append(log, delivery(qid(1), "b@example.org", "sent", 2))
    log.rename(tmp_path / "postfix.log.1")
    log.write_text(delivery(qid(1), "c@example.org", "sent", 3))
    f = follower(url, log)
    run_out(f)
    f.close()
    assert {address: state for address, (state, _) in story(store, qid(1)).items()} == {
        "a@example.org": "delivered",
        "b@example.org": "delivered",
        "c@example.org": "delivered",
    }


def test_copytruncate_starts_again_at_zero(store: TrackingStore, url: str, tmp_path: Path) -> None:
    log = tmp_path / "postfix.log"
    store.record_messages([message_record(qid(1), recipients=("a@example.org", "b@example.org"))])
    log.write_text(smtpd(qid(7)) + delivery(qid(1), "a@example.org", "deferred", 1))
    f = follower(url, log)
    run_out(f)
    # copytruncate: the content is copied away and the file emptied in place (same inode), then
    # Postfix writes on at the start.
    with log.open("r+b") as handle:
        handle.truncate(0)
    append(log, delivery(qid(1), "b@example.org", "sent", 2))
    run_out(f)
    f.close()
    assert story(store, qid(1)) == {
        "a@example.org": ("deferred", ["deferred"]),
        "b@example.org": ("delivered", ["sent"]),
    }
    saved = store.position(NODE)
    assert saved is not None and saved.offset == log.stat().st_size


def test_a_batch_the_store_refused_is_written_when_it_is_back(url: str, tmp_path: Path) -> None:
    log = tmp_path / "postfix.log"
    real = open_store(url)
    real.migrate()
    real.record_messages([message_record(qid(1))])
    down = [True]

    def opener(target: str) -> TrackingStore:
        if down[0]:
            raise OSError("connection refused")
        return open_store(target)

    log.write_text(delivery(qid(1), "a@example.org", "sent", 1))
    metrics = FollowerMetrics()
    f = Follower(url, NODE, log, metrics, opener=opener, poll=0.01)
    assert not f.step()
    assert metrics.store_errors._value.get() == 1
    down[0] = False
    f._next_try = 0.0  # the back-off (1 s, doubling) is not what this test is about
    run_out(f)
    f.close()
    assert story(real, qid(1)) == {"a@example.org": ("delivered", ["sent"])}
    real.close()


# -- the milter's spool -----------------------------------------------------------------------------


def spool_with(directory: Path, *numbers: int) -> SpoolAppender:
    appender = SpoolAppender(directory, max_bytes=1 << 20)
    appender.append([message_record(qid(n), recipients=("a@example.org",)).as_dict() for n in numbers])
    return appender


def test_the_milters_records_reach_the_store_and_their_ids_are_watched(url: str, tmp_path: Path) -> None:
    log = tmp_path / "postfix.log"
    spool_with(tmp_path / "spool", 1, 2)
    metrics = FollowerMetrics()
    f = Follower(url, NODE, log, metrics, spool=SpoolReader(tmp_path / "spool"), poll=0.01)
    assert f.step()  # no log file yet: the spool is drained all the same
    assert metrics.tracking_spooled._value.get() == 0
    # No smtpd line and no refresh of the open ids yet: the record itself made qid(2) watched.
    log.write_text(delivery(qid(2), "a@example.org", "sent", 1))
    run_out(f)
    f.close()
    real = open_store(url)
    try:
        assert story(real, qid(1)) == {"a@example.org": ("queued", [])}
        assert story(real, qid(2)) == {"a@example.org": ("delivered", ["sent"])}
    finally:
        real.close()
    assert SpoolReader(tmp_path / "spool").read().records == ()  # marked done


def test_store_down_the_spool_waits_then_drains_each_record_once(url: str, tmp_path: Path) -> None:
    log = tmp_path / "postfix.log"
    log.write_bytes(b"")
    appender = spool_with(tmp_path / "spool", 1, 2, 3)
    down = [True]

    def opener(target: str) -> TrackingStore:
        if down[0]:
            raise OSError("connection refused")
        return open_store(target)

    metrics = FollowerMetrics()
    f = Follower(url, NODE, log, metrics, spool=SpoolReader(tmp_path / "spool"), opener=opener, poll=0.01)
    assert not f.step()
    assert metrics.store_errors._value.get() == 1
    assert metrics.tracking_spooled._value.get() == 3  # counted even while the store is away
    appender.append([message_record(qid(4)).as_dict()])  # the milter goes on meanwhile
    down[0] = False
    f._next_try = f._next_count = 0.0  # the back-off is not what this test is about
    run_out(f)
    f.close()
    real = open_store(url)
    try:
        assert sorted(m.record.queue_id for m in real.messages(limit=None)) == [qid(n) for n in (1, 2, 3, 4)]
    finally:
        real.close()
    assert metrics.tracking_spooled._value.get() == 0


def test_records_stored_but_not_marked_before_a_crash_are_not_counted_twice(url: str, tmp_path: Path) -> None:
    spool_with(tmp_path / "spool", 1, 2)
    real = open_store(url)
    real.migrate()
    real.record_messages([message_record(qid(1), recipients=("a@example.org",))])  # then killed: no mark
    f = Follower(url, NODE, tmp_path / "postfix.log", FollowerMetrics(), spool=SpoolReader(tmp_path / "spool"))
    run_out(f)
    f.close()
    try:
        assert sorted(m.record.queue_id for m in real.messages(limit=None)) == [qid(1), qid(2)]
        [by_date] = list(real.stats("date"))
        assert (by_date["messages"], by_date["recipients"]) == (2, 2)
    finally:
        real.close()


# -- the real process -------------------------------------------------------------------------------


def _config(tmp_path: Path, log: Path, url: str, port: int) -> Path:
    return write_config(
        tmp_path,
        settings={
            "tracking": {
                "store": url,
                "node": NODE,
                "maillog": str(log),
                "metrics_listen": f"127.0.0.1:{port}",
                "spool_dir": str(tmp_path / "spool"),
            }
        },
    )


def _follow(config: Path, tmp_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "smtpplus_milter", "follow", "-c", str(config), "--pid-file", str(tmp_path / "f.pid")],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "follow.err").open("ab"),
    )


def _wait(condition: object, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def _offset(url: str) -> int:
    s = open_store(url)
    try:
        saved = s.position(NODE)
        return 0 if saved is None else saved.offset
    finally:
        s.close()


def test_kill_9_mid_file_then_restart_gives_each_attempt_once(store: TrackingStore, url: str, tmp_path: Path) -> None:
    log = tmp_path / "postfix.log"
    messages = 4000
    store.record_messages(
        [message_record(qid(n), recipients=("a@example.org", "b@example.org")) for n in range(messages)]
    )
    with log.open("w") as handle:
        for n in range(messages):
            handle.write(delivery(qid(n), "a@example.org", "deferred", n % 3000))
            handle.write(delivery(qid(n), "a@example.org", "sent", n % 3000 + 1))
            handle.write(delivery(qid(n), "b@example.org", "bounced", n % 3000 + 2))
            for filler in range(20):  # other mail on the same host
                handle.write(delivery(qid(100_000 + n * 20 + filler), "x@example.net", "sent", n % 3000))
    size = log.stat().st_size
    config = _config(tmp_path, log, url, free_port())
    process = _follow(config, tmp_path)
    try:
        _wait(lambda: _offset(url) > 0)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        killed_at = _offset(url)
        assert 0 < killed_at < size, "the kill must land mid-file for this test to mean anything"
        process = _follow(config, tmp_path)
        _wait(lambda: _offset(url) == size)
    finally:
        process.terminate()
        process.wait(10)
    stories = [story(store, qid(n)) for n in range(messages)]
    expected = {"a@example.org": ("delivered", ["deferred", "sent"]), "b@example.org": ("bounced", ["bounced"])}
    assert all(s == expected for s in stories)
    assert _attempt_rows(url) == 3 * messages
    stats = next(store.stats())
    assert (stats["delivered"], stats["bounced"], stats["deferred"]) == (messages, messages, 0)


def test_the_process_serves_metrics_and_saves_on_sigterm(store: TrackingStore, url: str, tmp_path: Path) -> None:
    log = tmp_path / "postfix.log"
    store.record_messages([message_record(qid(1), recipients=("a@example.org", "b@example.org"))])
    port = free_port()
    process = _follow(_config(tmp_path, log, url, port), tmp_path)
    try:
        time.sleep(0.3)
        spool_with(tmp_path / "spool", 7)  # the milter (here: this process) appends while the follower runs
        log.write_text(delivery(qid(1), "a@example.org", "sent", 1) + delivery(qid(1), "b@example.org", "deferred", 2))

        def scraped() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
                    return str(answer.read().decode())
            except OSError:
                return ""

        _wait(lambda: 'smtpplus_deliveries_total{status="deferred",user="shop-frontend"} 1.0' in scraped())
        page = scraped()
        assert 'smtpplus_deliveries_total{status="sent",user="shop-frontend"} 1.0' in page
        assert "smtpplus_follower_lag_seconds 0.0" in page
        _wait(lambda: store.message(qid(7), NODE) is not None)
        _wait(lambda: "smtpplus_tracking_spooled 0.0" in scraped())
        assert (tmp_path / "f.pid").read_text().strip() == str(process.pid)
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not (tmp_path / "f.pid").exists()
    assert _offset(url) == log.stat().st_size


# -- PostgreSQL ---------------------------------------------------------------------------------------


def test_on_postgresql_links_expirations_and_the_position(tmp_path: Path) -> None:
    if (why := postgres.available()) is not None:
        pytest.skip(why)
    with postgres.private_server() as server:
        pg_url = server.create_database()
        pg = open_store(pg_url)
        try:
            pg.migrate()
            pg.record_messages([message_record(qid(1), recipients=("a@example.org", "b@example.org"))])
            log = tmp_path / "postfix.log"
            log.write_text(
                smtpd(qid(1))
                + handoff(qid(1), "a@example.org", qid(11), 1, "127.0.0.1[127.0.0.1]:10025")
                + handoff(qid(1), "b@example.org", qid(11), 1, "127.0.0.1[127.0.0.1]:10025")
                + delivery(qid(11), "a@example.org", "sent", 2)
                + delivery(qid(11), "b@example.org", "deferred", 3)
                + expired(qid(11), 4)
            )
            f = follower(pg_url, log)
            run_out(f)
            f.close()
            assert story(pg, qid(1)) == {
                "a@example.org": ("delivered", ["sent"]),
                "b@example.org": ("expired", ["deferred", "expired"]),
            }
            saved = pg.position(NODE)
            assert saved is not None and saved.offset == log.stat().st_size
        finally:
            pg.close()


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(f"{ts(1)} relay postfix/smtp[200]: {qid(1)}: ", id="rfc3339"),
        pytest.param(f"Dec 01 03:00:01 relay postfix/relay/smtp[200]: {qid(1)}: ", id="postlogd-classic"),
        pytest.param(f"Dec  1 03:00:01 relay postfix-out/smtp[200]: {qid(1)}: ", id="syslog-second-instance"),
        pytest.param(f"Dec 01 03:00:01 relay postfix/smtp[200]: [ID 197553 mail.info] {qid(1)}: ", id="solaris-tag"),
    ],
)
def test_every_header_form_passes_the_prefilter(store: TrackingStore, url: str, tmp_path: Path, line: str) -> None:
    log = tmp_path / "postfix.log"
    store.record_messages([message_record(qid(1))])
    log.write_text(line + "to=<a@example.org>, relay=mx.example.org[192.0.2.25]:25, dsn=2.0.0, status=sent (250 ok)\n")
    f = Follower(url, NODE, log, FollowerMetrics(), zone=UTC, poll=0.01)
    run_out(f)
    f.close()
    assert story(store, qid(1)) == {"a@example.org": ("delivered", ["sent"])}


def test_an_id_is_forgotten_after_its_removal_and_the_grace(store: TrackingStore, url: str, tmp_path: Path) -> None:
    log = tmp_path / "postfix.log"
    store.record_messages([message_record(qid(1)), message_record(qid(2))])
    now = [1000.0]
    f = Follower(url, NODE, log, FollowerMetrics(), poll=0.01, clock=lambda: now[0])
    log.write_text(delivery(qid(1), "a@example.org", "sent", 1) + removed(qid(1), 2))
    run_out(f)
    assert f.watched() == 2  # qid(2) is still open
    now[0] += REMOVED_GRACE_SECONDS + REFRESH_SECONDS + 1
    run_out(f)
    assert f.watched() == 1
    now[0] += REFRESH_SECONDS + 1  # a refresh looks at the latest rows again: qid(1) stays forgotten
    run_out(f)
    assert f.watched() == 1
    append(log, delivery(qid(1), "a@example.org", "deferred", 3))  # a stray late line: not recorded
    run_out(f)
    f.close()
    assert story(store, qid(1)) == {"a@example.org": ("delivered", ["sent"])}


def test_retention_prunes_at_start(store: TrackingStore, url: str, tmp_path: Path) -> None:
    log = tmp_path / "postfix.log"
    log.write_text("")
    old, recent = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 4, tzinfo=UTC)
    store.record_messages([message_record(qid(1), accepted_at=old), message_record(qid(2), accepted_at=recent)])
    wall = datetime(2026, 12, 5, tzinfo=UTC).timestamp()
    f = Follower(url, NODE, log, FollowerMetrics(), retention_days=30, poll=0.01, wall=lambda: wall)
    run_out(f)
    f.close()
    assert store.message(qid(1), NODE) is None
    assert store.message(qid(2), NODE) is not None


def test_records_after_a_gap_are_logged_and_a_torn_line_is_counted_once(
    url: str, tmp_path: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    log = tmp_path / "postfix.log"
    log.write_bytes(b"")
    directory = tmp_path / "spool"
    appender = spool_with(directory, 1)
    appender.close()
    segment = directory / sorted(p.name for p in directory.glob("records-*.jsonl"))[-1]
    with segment.open("ab") as file:
        file.write(b'{"node":"relay-1","queue_id":"4jdf')  # the milter was killed mid-write
    appender = spool_with(directory, 2)  # the restarted milter writes a new segment
    now = [100.0]
    metrics = FollowerMetrics()
    f = Follower(url, NODE, log, metrics, spool=SpoolReader(directory), poll=0.01, clock=lambda: now[0])

    def said(name: str) -> int:
        return sum(1 for entry in logs if entry["event"] == name)

    run_out(f)
    assert (said("tracking_spool_records_found"), said("tracking_spool_records_stored")) == (1, 1)
    assert said("tracking_spool_line_skipped") == 1 and metrics.spool_skipped._value.get() == 1
    now[0] += 10  # soon after: no new "found" line
    appender.append([message_record(qid(3)).as_dict()])
    run_out(f)
    assert said("tracking_spool_records_found") == 1
    now[0] += 61  # after a minute without records: said again
    appender.append([message_record(qid(4)).as_dict()])
    run_out(f)
    f.close()
    assert said("tracking_spool_records_found") == 2
    assert metrics.spool_skipped._value.get() == 1  # counted once, not at every read
    real = open_store(url)
    try:
        assert sorted(m.record.queue_id for m in real.messages(limit=None)) == [qid(n) for n in (1, 2, 3, 4)]
    finally:
        real.close()


def test_issue_14_duties_suppression_snapshot_notices_and_complaint_counts(
    store: TrackingStore, url: str, tmp_path: Path
) -> None:
    """With its issue-14 parts the follower applies the suppression rules with each outcome, writes
    the snapshot for the milter, sends due notices, and counts complaints ingest recorded."""
    log = tmp_path / "postfix.log"
    store.record_messages([message_record(qid(1), recipients=("gone@example.org", "fine@example.org"))])
    append(log, smtpd(qid(1)) + delivery(qid(1), "gone@example.org", "bounced", 1))
    metrics = FollowerMetrics()
    sent: list[tuple[str, list[str]]] = []
    notifier = Notifier(
        None,
        HostPort("127.0.0.1", 1),
        "postmaster@relay.example",
        "test",
        send=lambda message, sender, to, smtp: sent.append((str(message["Subject"]), list(to))),
    )
    plan = Plan(bounces=Audience(("it@example.com",)))
    snapshot = SnapshotWriter(tmp_path / "suppressions.tsv")
    f = Follower(
        url,
        NODE,
        log,
        metrics,
        poll=0.01,
        policy=Policy(hard_days=180, soft_limit=5),
        on_outcome=planner(plan),
        notifier=notifier,
        snapshot=snapshot,
    )
    try:
        run_out(f)
        f._next_duties = 0.0  # the next step does the duties now rather than in 5 s
        run_out(f)
        assert [(s.scope, s.address, s.reason) for s in store.suppressions()] == [
            ("user:shop-frontend", "gone@example.org", "hard_bounce")
        ]
        assert "gone@example.org\tuser:shop-frontend\thard_bounce" in (tmp_path / "suppressions.tsv").read_text()
        assert [to for _, to in sent] == [["it@example.com"]] and "gone@example.org" in sent[0][0]
        assert metrics.bounces.labels(user="shop-frontend", type="hard")._value.get() == 1
        report = Report(NODE, qid(1), "fine@example.org", "complaint", datetime.now(UTC))
        store.record_report(report, None, ())
        f._next_duties = 0.0
        run_out(f)
        assert metrics.complaints.labels(user="shop-frontend")._value.get() == 1
    finally:
        f.close()
