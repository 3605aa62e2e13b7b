"""The tracking store's contract, one suite run against every backend (SQLite file, private PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from smtpplus_milter.core.suppression import Policy
from smtpplus_milter.core.tracking import MessageRecord
from smtpplus_milter.infra.store import open_store
from smtpplus_milter.infra.store.base import (
    STATS_BY,
    STATS_COUNTERS,
    Attempt,
    Expiration,
    MessageFilter,
    Notification,
    Outcome,
    Position,
    Report,
    StoredLink,
    StoreProblem,
    Suppression,
    Unsubscribe,
)
from smtpplus_milter.infra.store.sql import SqlStore
from tests.support import postgres

T0 = datetime(2026, 3, 1, 9, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def pg_server() -> Iterator[postgres.Server]:
    if (why := postgres.available()) is not None:
        pytest.skip(why)
    with postgres.private_server() as server:
        yield server


def _open(request: pytest.FixtureRequest, path: Path) -> SqlStore:
    """A fresh, migrated store of the backend the test is parametrised with."""
    if request.param == "sqlite":
        url = f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("pg_server").create_database()
    opened = open_store(url)
    assert isinstance(opened, SqlStore)
    opened.migrate()
    return opened


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    opened = _open(request, tmp_path / "tracking.db")
    yield opened
    opened.close()


@pytest.fixture(params=["sqlite", "postgres"])
def two_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[SqlStore, SqlStore]]:
    first, second = _open(request, tmp_path / "one.db"), _open(request, tmp_path / "two.db")
    yield first, second
    first.close()
    second.close()


def record(queue_id: str = "Q1", *recipients: str, **changes: Any) -> MessageRecord:
    values: dict[str, Any] = {
        "node": "relay1",
        "queue_id": queue_id,
        "user": "alice",
        "list": "news",
        "envelope_from": "bounces@example.org",
        "header_from": "alice@example.org",
        "subject": "Hello",
        "message_id": f"<{queue_id}@example.org>",
        "size": 1234,
        "priority": 3,
        "queue": "normal",
        "accepted_at": T0,
        "recipients": recipients or ("bob@example.net",),
    }
    values.update(changes)
    return MessageRecord(**values)


def attempt(status: str, minutes: int = 1, queue_id: str = "Q1", to: str = "bob@example.net") -> Attempt:
    dsn = {"sent": "2.0.0", "deferred": "4.4.1", "bounced": "5.1.1", "expired": "4.4.7"}[status]
    return Attempt("relay1", queue_id, to, T0 + timedelta(minutes=minutes), status, dsn, "mx[192.0.2.1]:25", 1.5, "ok")


def states(store: SqlStore, queue_id: str = "Q1") -> dict[str, str]:
    found = store.message(queue_id)
    assert found is not None
    return {story.address: story.state for story in found.recipients}


def test_migrate_twice_is_a_no_op(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/fresh.db")
    assert isinstance(store, SqlStore)
    assert store.migrate() == (1, 2, 3)
    assert store.migrate() == ()
    assert store.schema_version() == 3
    store.close()


def test_migrate_twice_on_postgres(pg_server: postgres.Server) -> None:
    store = open_store(pg_server.create_database())
    assert isinstance(store, SqlStore)
    assert store.migrate() == (1, 2, 3)
    assert store.migrate() == ()
    assert store.schema_version() == 3
    store.close()


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("sqlite:///relative.db", id="sqlite-relative"),
        pytest.param("sqlite:////no/such/dir/t.db", id="sqlite-missing-dir"),
        pytest.param("mysql://db/x", id="unknown-scheme"),
    ],
)
def test_a_bad_url_is_a_problem_a_person_can_act_on(url: str) -> None:
    with pytest.raises(StoreProblem, match="tracking store"):
        open_store(url)


def test_recording_is_idempotent(store: SqlStore) -> None:
    first = store.record_messages([record("Q1", "bob@example.net", "Carol@Example.com"), record("Q1")])
    again = store.record_messages([record("Q1", "bob@example.net", "carol@example.com")])

    assert (first.new, first.replayed, again.new, again.replayed) == (1, 1, 0, 1)
    [row] = store.stats("user")
    assert (row["messages"], row["recipients"]) == (1, 2)
    assert [(c.address, c.messages) for c in store.recipients()] == [("bob@example.net", 1), ("carol@example.com", 1)]


def _rows(store: SqlStore) -> dict[str, list[tuple[Any, ...]]]:
    """Every row a record writes, without the generated message ids."""
    with store._reading() as cur:
        cur.execute(
            "SELECT node, queue_id, username, list_name, envelope_from, header_from, subject, message_id, size,"
            " priority, queue, accepted_at, day, rcpt_total, rcpt_delivered, rcpt_deferred, rcpt_bounced,"
            " rcpt_expired, rcpt_suppressed FROM messages ORDER BY node, queue_id"
        )
        messages = cur.fetchall()
        cur.execute(
            "SELECT m.queue_id, r.address, r.domain, r.state FROM recipients r JOIN messages m ON m.id = r.message"
            " ORDER BY m.queue_id, r.address"
        )
        recipients = cur.fetchall()
        cur.execute("SELECT * FROM contacts ORDER BY username, address")
        contacts = cur.fetchall()
    return {"messages": messages, "recipients": recipients, "contacts": contacts}


def test_a_batch_writes_the_same_rows_as_one_record_at_a_time(two_stores: tuple[SqlStore, SqlStore]) -> None:
    batched, single = two_stores
    later = T0 + timedelta(hours=1)
    batch = [
        record("OLD", "bob@example.net"),  # already stored: a replay
        record("N1", "bob@example.net", "Carol@Example.com", accepted_at=later),
        record("A1", "bob@example.net", "dave@example.com"),  # attempts came first
        record("A2", "bob@example.net", user="bob"),  # an attempt on the id it continued as (queued_as)
        record("N1", "bob@example.net"),  # twice in the batch: the second is a replay
        # The same contact at the same time in one batch: the later record's state wins, as one by one.
        record("T1", "erin@example.org", accepted_at=later),
        record("T2", "erin@example.org", accepted_at=later),
        # More than one multi-row insert's worth.
        *(record(f"M{i:03d}", f"x{i % 7}@example.org", accepted_at=T0 + timedelta(minutes=i)) for i in range(150)),
    ]
    for store in (batched, single):
        store.record_messages([record("OLD", "bob@example.net", "zed@example.org")])
        store.record_attempts(
            [
                attempt("deferred", 1, queue_id="A1"),
                attempt("sent", 2, queue_id="A1"),
                attempt("bounced", 3, queue_id="A1", to="dave@example.com"),
                attempt("bounced", 4, queue_id="A2b"),
                attempt("bounced", 5, queue_id="T2", to="erin@example.org"),
            ],
            None,
            [StoredLink("relay1", "A2", "A2b", "queued_as")],
        )

    result = batched.record_messages(batch)
    one_by_one = [single.record_messages([one]) for one in batch]

    assert (result.new, result.replayed) == (sum(r.new for r in one_by_one), sum(r.replayed for r in one_by_one))
    assert (result.new, result.replayed) == (len(batch) - 2, 2)
    assert _rows(batched) == _rows(single)
    assert states(batched, "A1") == {"bob@example.net": "delivered", "dave@example.com": "bounced"}
    assert states(batched, "A2") == {"bob@example.net": "bounced"}
    erin = [c for c in batched.recipients() if c.address == "erin@example.org"]
    assert [(c.messages, c.state) for c in erin] == [(2, "bounced")]


@pytest.mark.parametrize(
    ("statuses", "final"),
    [
        pytest.param((), "queued", id="no-attempt"),
        pytest.param(("deferred",), "deferred", id="deferred"),
        pytest.param(("deferred", "deferred", "deferred"), "deferred", id="deferred-repeats"),
        pytest.param(("deferred", "sent"), "delivered", id="deferred-then-sent"),
        pytest.param(("sent", "deferred"), "delivered", id="late-deferred-keeps-delivered"),
        pytest.param(("deferred", "bounced", "deferred"), "bounced", id="late-deferred-keeps-bounced"),
        pytest.param(("deferred", "expired"), "expired", id="expired"),
        pytest.param(("expired", "sent"), "expired", id="a-final-state-is-final"),
        pytest.param(("bounced", "sent"), "bounced", id="bounced-stays"),
    ],
)
@pytest.mark.parametrize("attempts_first", [False, True], ids=["record-first", "attempts-before-record"])
def test_state_only_moves_forward(store: SqlStore, statuses: tuple[str, ...], final: str, attempts_first: bool) -> None:
    attempts = [attempt(status, minutes=i) for i, status in enumerate(statuses)]
    if not attempts_first:
        store.record_messages([record()])
    for i, one in enumerate(attempts):
        store.record_attempts([one], Position("relay1", "log", i))
    if attempts_first:
        store.record_messages([record()])

    assert states(store) == {"bob@example.net": final}
    found = store.message("Q1")
    assert found is not None
    assert [a.status for a in found.recipients[0].attempts] == list(statuses)
    [row] = store.stats()
    expected = {state: int(state == final) for state in ("delivered", "deferred", "bounced", "expired")}
    assert {state: row[state] for state in expected} == expected
    assert [c.state for c in store.recipients()] == [final]


class Crash(Exception):
    pass


def test_position_is_saved_with_the_attempts_or_not_at_all(store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.record_messages([record()])
    store.record_attempts([attempt("deferred", 1)], Position("relay1", "log-a", 100))

    def crash(*_: object) -> None:
        raise Crash("the follower died between the attempts and its position")

    with monkeypatch.context() as patched:
        patched.setattr(store, "_write_position", crash)
        with pytest.raises(Crash):
            store.record_attempts(
                [attempt("deferred", 2), attempt("sent", 3)],
                Position("relay1", "log-a", 300),
                [StoredLink("relay1", "Q1", "Q9", "queued_as")],
            )

    assert store.position("relay1") == Position("relay1", "log-a", 100)
    assert states(store) == {"bob@example.net": "deferred"}
    found = store.message("Q1")
    assert found is not None and len(found.recipients[0].attempts) == 1
    assert store.message("Q9") is None

    # The follower restarts from the old position and reads the same lines again: counted once.
    done = store.record_attempts([attempt("deferred", 2), attempt("sent", 3)], Position("relay1", "log-a", 300))
    assert (done.new, done.replayed) == (2, 0)
    assert states(store) == {"bob@example.net": "delivered"}
    assert store.position("relay1") == Position("relay1", "log-a", 300)


def test_a_replay_of_counted_lines_is_detected(store: SqlStore) -> None:
    store.record_messages([record("Q1", "bob@example.net", "carol@example.com")])
    batch = [attempt("deferred", 1), attempt("sent", 2), attempt("bounced", 2, to="carol@example.com")]
    first = store.record_attempts(batch, Position("relay1", "log", 10))
    before = list(store.stats())
    replay = store.record_attempts(batch, Position("relay1", "log", 10))

    assert (first.new, first.replayed, replay.new, replay.replayed) == (3, 0, 0, 3)
    assert list(store.stats()) == before
    found = store.message("Q1")
    assert found is not None
    assert sum(len(story.attempts) for story in found.recipients) == 3


def test_position_per_node(store: SqlStore) -> None:
    assert store.position("relay1") is None
    store.record_attempts([], Position("relay1", "dev:ino:hash", 42))
    store.record_attempts([], Position("relay2", "other", 7))
    store.record_attempts([], Position("relay1", "dev:ino2:hash2", 0))
    assert store.position("relay1") == Position("relay1", "dev:ino2:hash2", 0)
    assert store.position("relay2") == Position("relay2", "other", 7)


def test_a_reinjected_copy_continues_the_original_recipients_story(store: SqlStore) -> None:
    store.record_messages([record("Q1", "bob@example.net")])
    store.record_attempts([attempt("deferred", 1, queue_id="Q2")], None)  # before the link is known
    store.link("relay1", "Q1", "Q2", "queued_as")
    assert states(store) == {"bob@example.net": "deferred"}
    store.record_attempts([attempt("bounced", 5, queue_id="Q3")], None, [StoredLink("relay1", "Q2", "Q3", "queued_as")])
    assert states(store) == {"bob@example.net": "bounced"}

    via_new_id = store.message("Q3")
    assert via_new_id is not None and via_new_id.record.queue_id == "Q1"
    assert [(a.queue_id, a.status) for a in via_new_id.recipients[0].attempts] == [
        ("Q2", "deferred"),
        ("Q3", "bounced"),
    ]


def test_a_notification_does_not_change_the_original_recipients(store: SqlStore) -> None:
    store.record_messages([record("Q1", "bob@example.net")])
    store.record_attempts([attempt("bounced", 1)], None)
    store.link("relay1", "Q1", "QN", "notification")
    store.record_attempts([attempt("sent", 2, queue_id="QN")], None)
    assert states(store) == {"bob@example.net": "bounced"}


def _day(hour: int, minute: int = 0, second: int = 0, day: int = 1) -> datetime:
    return datetime(2026, 3, day, hour, minute, second, tzinfo=UTC)


def _stats_fixture(store: SqlStore) -> None:
    store.record_messages(
        [
            record("A", "x@one.example", "y@two.example", accepted_at=_day(0)),
            record("B", "z@one.example", subject="Other", accepted_at=_day(23, 59, 59), user="bob", list=None),
            record("C", "x@one.example", accepted_at=_day(0, day=2), header_from="news@example.org"),
        ]
    )
    store.record_attempts(
        [
            attempt("sent", 1, queue_id="A", to="x@one.example"),
            attempt("bounced", 1, queue_id="A", to="y@two.example"),
            attempt("deferred", 1, queue_id="B", to="z@one.example"),
        ],
        None,
    )


def _row(key: str, value: object, messages: int, recipients: int, **states: int) -> dict[str, object]:
    row: dict[str, object] = dict.fromkeys(STATS_COUNTERS, 0)
    row.update({key: value, "messages": messages, "recipients": recipients, **states})
    return row


@pytest.mark.parametrize(
    ("by", "since", "until", "user", "expected"),
    [
        pytest.param(
            "date",
            None,
            None,
            None,
            [_row("date", "2026-03-01", 2, 3, delivered=1, bounced=1, deferred=1), _row("date", "2026-03-02", 1, 1)],
            id="date-all",
        ),
        pytest.param(
            "date",
            _day(0),
            _day(0, day=2),
            None,
            [_row("date", "2026-03-01", 2, 3, delivered=1, bounced=1, deferred=1)],
            id="since-inclusive-until-exclusive",
        ),
        pytest.param(
            "date",
            _day(0, 0, 1),
            _day(23, 59, 59),
            None,
            [],
            id="both-boundaries-miss",
        ),
        pytest.param("date", None, None, "bob", [_row("date", "2026-03-01", 1, 1, deferred=1)], id="date-one-user"),
        pytest.param(
            "subject",
            None,
            None,
            None,
            [_row("subject", "Hello", 2, 3, delivered=1, bounced=1), _row("subject", "Other", 1, 1, deferred=1)],
            id="subject",
        ),
        pytest.param(
            "sender",
            None,
            None,
            None,
            [
                _row("sender", "alice@example.org", 2, 3, delivered=1, bounced=1, deferred=1),
                _row("sender", "news@example.org", 1, 1),
            ],
            id="sender",
        ),
        pytest.param(
            "user",
            None,
            _day(0, day=2),
            None,
            [_row("user", "alice", 1, 2, delivered=1, bounced=1), _row("user", "bob", 1, 1, deferred=1)],
            id="user-until",
        ),
        pytest.param(
            "list",
            _day(12),
            None,
            None,
            [_row("list", None, 1, 1, deferred=1), _row("list", "news", 1, 1)],
            id="list-since",
        ),
        pytest.param(
            "recipient_domain",
            None,
            None,
            None,
            [
                _row("recipient_domain", "one.example", 3, 3, delivered=1, deferred=1),
                _row("recipient_domain", "two.example", 1, 1, bounced=1),
            ],
            id="recipient-domain",
        ),
    ],
)
def test_stats(
    store: SqlStore,
    by: str,
    since: datetime | None,
    until: datetime | None,
    user: str | None,
    expected: list[dict[str, object]],
) -> None:
    _stats_fixture(store)
    rows = store.stats(by, since, until, user)
    assert isinstance(rows, Iterator)
    got = sorted(rows, key=lambda row: (row[by] is not None, str(row[by])))
    assert got == expected
    assert all(set(row) == {by, *STATS_COUNTERS} for row in got)


def test_every_by_is_covered() -> None:
    covered = {"date", "subject", "sender", "user", "list", "recipient_domain"}
    assert set(STATS_BY) == covered


def test_stats_refuses_an_unknown_grouping(store: SqlStore) -> None:
    with pytest.raises(StoreProblem, match="stats by 'weekday'"):
        list(store.stats("weekday"))


def test_messages_and_filters(store: SqlStore) -> None:
    _stats_fixture(store)
    ids = [m.record.queue_id for m in store.messages()]
    assert ids == ["C", "B", "A"]
    assert [m.record.queue_id for m in store.messages(MessageFilter(user="bob"))] == ["B"]
    assert [m.record.queue_id for m in store.messages(MessageFilter(to="X@one.example"))] == ["C", "A"]
    assert [m.record.queue_id for m in store.messages(MessageFilter(message_id="<A@example.org>"))] == ["A"]
    assert [m.record.queue_id for m in store.messages(MessageFilter(since=_day(0), until=_day(0, day=2)))] == ["B", "A"]
    assert [m.record.queue_id for m in store.messages(limit=1)] == ["C"]
    shown = store.message("A")
    assert shown is not None
    assert {s.address: (s.state, [a.status for a in s.attempts]) for s in shown.recipients} == {
        "x@one.example": ("delivered", ["sent"]),
        "y@two.example": ("bounced", ["bounced"]),
    }
    assert store.message("nope") is None


def test_the_recipients_database(store: SqlStore) -> None:
    store.record_messages(
        [
            record("Q1", "bob@example.net", accepted_at=T0),
            record("Q3", "bob@example.net", user="bob", accepted_at=T0 + timedelta(hours=1)),
        ]
    )
    store.record_attempts([attempt("bounced", 1)], None)
    store.record_messages([record("Q2", "bob@example.net", accepted_at=T0 + timedelta(days=1))])
    store.record_attempts([attempt("sent", 60 * 24 + 1, queue_id="Q2")], None)
    # A late line about the older message does not change the row: it shows the latest message's state.
    store.record_attempts([attempt("deferred", 5, queue_id="Q3")], None)

    rows = {(c.user, c.address): c for c in store.recipients()}
    alice = rows[("alice", "bob@example.net")]
    assert (alice.first_sent, alice.last_sent, alice.messages, alice.state, alice.suppressed) == (
        T0,
        T0 + timedelta(days=1),
        2,
        "delivered",
        None,
    )
    assert rows[("bob", "bob@example.net")].state == "deferred"
    assert [c.user for c in store.recipients(user="bob")] == ["bob"]
    assert [c.user for c in store.recipients(state="delivered")] == ["alice"]
    assert len(list(store.recipients(limit=1))) == 1


def test_prune_in_batches(store: SqlStore) -> None:
    old = [record(f"OLD{i}", accepted_at=T0 - timedelta(days=100 + i)) for i in range(5)]
    store.record_messages([*old, record("NEW", accepted_at=T0)])
    store.record_attempts([attempt("sent", queue_id="OLD0"), attempt("sent", queue_id="NEW")], None)
    # An attempt of a message that was never recorded ages out too.
    store.record_attempts([attempt("deferred", -200 * 24 * 60, queue_id="UNTRACKED")], None)

    assert store.prune(T0 - timedelta(days=90), batch=2) == 5

    assert [m.record.queue_id for m in store.messages()] == ["NEW"]
    assert store.message("OLD0") is None
    [row] = store.stats()
    assert (row["messages"], row["delivered"]) == (1, 1)
    with store._reading() as cur:
        cur.execute("SELECT queue_id FROM attempts ORDER BY queue_id")
        assert [r[0] for r in cur.fetchall()] == ["NEW"]


def test_results_are_streamed_and_a_reader_may_stop_early(store: SqlStore) -> None:
    store.record_messages([record(f"Q{i}", accepted_at=T0 + timedelta(minutes=i)) for i in range(5)])
    messages = store.messages(limit=None)
    contacts = store.recipients()
    assert isinstance(messages, Iterator) and isinstance(contacts, Iterator)
    assert next(messages).record.queue_id == "Q4"
    del messages  # abandoned half-way; the store must still take writes
    store.record_attempts([attempt("sent", queue_id="Q0")], Position("relay1", "log", 1))
    assert states(store, "Q0") == {"bob@example.net": "delivered"}


def test_writers_in_several_threads(store: SqlStore) -> None:
    problems: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for i in range(20):
                queue_id = f"W{worker}-{i}"
                store.record_messages([record(queue_id)])
                store.record_attempts([attempt("sent", queue_id=queue_id)], Position(f"node{worker}", "log", i))
        except BaseException as exc:
            problems.append(exc)

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert problems == []
    [row] = store.stats()
    assert (row["messages"], row["delivered"]) == (80, 80)
    assert [store.position(f"node{worker}") for worker in range(4)] == [
        Position(f"node{worker}", "log", 19) for worker in range(4)
    ]


def test_an_expiry_expires_the_recipients_still_waiting_once(store: SqlStore) -> None:
    store.record_messages([record("Q1", "bob@example.net", "carol@example.com", "dave@example.com")])
    store.link("relay1", "Q1", "Q2", "queued_as")
    store.record_attempts([attempt("sent", 1, queue_id="Q2"), attempt("deferred", 2, "Q2", "carol@example.com")], None)
    at = T0 + timedelta(days=5)
    done = store.record_attempts([], Position("relay1", "log", 99), expirations=[Expiration("relay1", "Q2", at)])
    assert done.new == 2
    assert states(store) == {
        "bob@example.net": "delivered",
        "carol@example.com": "expired",
        "dave@example.com": "expired",
    }
    assert store.expire("relay1", "Q2", at) == 0  # read twice: nothing more
    found = store.message("Q1")
    assert found is not None
    assert {s.address: [(a.queue_id, a.status, a.at) for a in s.attempts][-1] for s in found.recipients} == {
        "bob@example.net": ("Q2", "sent", T0 + timedelta(minutes=1)),
        "carol@example.com": ("Q2", "expired", at),
        "dave@example.com": ("Q2", "expired", at),
    }
    assert store.position("relay1") == Position("relay1", "log", 99)
    assert next(store.stats())["expired"] == 2


def test_open_queue_ids_are_the_unfinished_messages_then_the_new_ones(store: SqlStore) -> None:
    store.record_messages([record("Q1"), record("Q2", user="bob"), record("QX", node="relay2")])
    store.link("relay1", "Q1", "Q1b", "queued_as")
    store.record_attempts([attempt("sent", 1, queue_id="Q2")], None)  # Q2 is finished
    opened = store.open_queue_ids("relay1")
    assert dict(opened.users) == {"Q1": "alice", "Q1b": "alice"}
    store.record_messages([record("Q3", user="carol")])
    fresh = store.open_queue_ids("relay1", after=opened.mark)
    # What was recorded since the mark, whatever its state (a few rows before it are looked at again).
    assert fresh.users["Q3"] == "carol"
    assert "QX" not in fresh.users
    assert fresh.mark > opened.mark


# -- the suppression list (issue 14) ------------------------------------------------------------

POLICY = Policy(hard_days=180, soft_limit=2)


def _bounce(dsn: str, failure_class: str, minutes: int, queue_id: str = "Q1", to: str = "bob@example.net") -> Attempt:
    at = T0 + timedelta(minutes=minutes)
    return Attempt("relay1", queue_id, to, at, "bounced", dsn, "mx[192.0.2.1]:25", 1.0, "550 no", failure_class)


def _entries(store: SqlStore, **filters: Any) -> list[tuple[str, str, str]]:
    return [(e.scope, e.address, e.reason) for e in store.suppressions(**filters)]


def test_a_hard_bounce_suppresses_for_the_user_and_a_replay_changes_nothing(store: SqlStore) -> None:
    store.record_messages([record("Q1", "bob@example.net", "carol@example.net")])
    hard = _bounce("5.1.1", "hard", 1)
    blocked = _bounce("5.7.1", "blocked", 1, to="carol@example.net")
    store.record_attempts([hard, blocked], None, policy=POLICY)
    store.record_attempts([hard, blocked], None, policy=POLICY)  # the follower re-read its lines
    [entry] = store.suppressions()
    assert (entry.scope, entry.address, entry.reason) == ("user:alice", "bob@example.net", "hard_bounce")
    assert entry.created == hard.at and entry.expires == hard.at + timedelta(days=180)
    assert (entry.source_node, entry.source_queue_id, entry.created_by) == ("relay1", "Q1", "follower")
    assert _entries(store, now=hard.at + timedelta(days=181)) == []  # expired by then
    assert _entries(store, now=hard.at + timedelta(days=179)) == [("user:alice", "bob@example.net", "hard_bounce")]


def test_without_a_policy_nothing_is_suppressed(store: SqlStore) -> None:
    store.record_messages([record("Q1")])
    store.record_attempts([_bounce("5.1.1", "hard", 1)], None)
    assert _entries(store) == []


def test_soft_failures_in_a_row_over_three_days_suppress_and_a_delivery_lifts_it(store: SqlStore) -> None:
    days = 24 * 60
    store.record_messages([record(f"Q{n}", accepted_at=T0 + timedelta(days=n)) for n in range(4)])
    store.record_attempts([_bounce("5.2.2", "soft", 0, "Q0")], None, policy=POLICY)
    assert _entries(store) == []
    store.record_attempts([_bounce("4.4.7", "soft", 3 * days + 1, "Q1")], None, policy=POLICY)
    assert _entries(store) == [("user:alice", "bob@example.net", "soft_bounce")]
    delivered = Attempt("relay1", "Q2", "bob@example.net", T0 + timedelta(days=4), "sent", "2.0.0")
    store.record_attempts([delivered], None, policy=POLICY)
    assert _entries(store) == []


def test_a_bounce_never_replaces_a_complaint_and_a_delivery_does_not_lift_it(store: SqlStore) -> None:
    complaint = Suppression("user:alice", "Bob@Example.net", "complaint", T0, None, "relay1", "Q0", "ingest")
    assert store.suppress([complaint]) == 1
    store.record_messages([record("Q1"), record("Q2")])
    store.record_attempts([_bounce("5.1.1", "hard", 1)], None, policy=POLICY)
    sent = Attempt("relay1", "Q2", "bob@example.net", T0 + timedelta(minutes=2), "sent", "2.0.0")
    store.record_attempts([sent], None, policy=POLICY)
    [entry] = store.suppressions(address="BOB@example.net")
    assert (entry.reason, entry.created_by, entry.expires) == ("complaint", "ingest", None)


def test_manual_entries_by_scope_and_removal(store: SqlStore) -> None:
    entries = [
        Suppression("global", "x@example.org", "manual", T0, created_by="root@relay"),
        Suppression("list:news", "y@example.org", "unsubscribe", T0, created_by="web"),
        Suppression("user:alice", "z@example.org", "manual", T0, T0 + timedelta(days=1), created_by="root@relay"),
    ]
    assert store.suppress(entries) == 3
    assert _entries(store, scope="list:news") == [("list:news", "y@example.org", "unsubscribe")]
    assert len(_entries(store, now=T0 + timedelta(days=2))) == 2
    assert store.unsuppress("global", "X@example.org") is True
    assert store.unsuppress("global", "x@example.org") is False
    assert [scope for scope, _, _ in _entries(store)] == ["list:news", "user:alice"]


@pytest.mark.parametrize(
    ("scope", "reason"),
    [
        pytest.param("users:alice", "manual", id="bad-scope"),
        pytest.param("user:", "manual", id="empty-name"),
        pytest.param("global", "bored", id="bad-reason"),
    ],
)
def test_a_bad_entry_is_refused_before_the_store(scope: str, reason: str) -> None:
    with pytest.raises(ValueError):
        Suppression(scope, "a@example.org", reason, T0)


def test_the_recipients_database_shows_the_suppression_in_force(store: SqlStore) -> None:
    store.record_messages([record("Q1", "bob@example.net", "carol@example.net", "dave@example.net")])
    store.suppress(
        [
            Suppression("user:alice", "bob@example.net", "hard_bounce", T0, T0 + timedelta(days=1)),
            Suppression("global", "carol@example.net", "manual", T0),
            Suppression("user:somebody-else", "dave@example.net", "complaint", T0),
        ]
    )
    shown = {c.address: c.suppressed for c in store.recipients(now=T0 + timedelta(hours=1))}
    assert shown == {"bob@example.net": "hard_bounce", "carol@example.net": "manual", "dave@example.net": None}
    later = {c.address: c.suppressed for c in store.recipients(now=T0 + timedelta(days=2))}
    assert later["bob@example.net"] is None  # expired


# -- the notification outbox (issue 14) ---------------------------------------------------------


def _notices_for(outcome: Outcome) -> list[Notification]:
    """A bounce notice to IT for every bounced recipient (the shape the notifier plans)."""
    if outcome.state != "bounced":
        return []
    return [
        Notification(
            "bounce",
            "immediate",
            "it@example.com",
            f"{outcome.node}:{outcome.queue_id}:{outcome.recipient}",
            "news",
            {"user": outcome.user, "recipient": outcome.recipient, "subject": outcome.subject},
            outcome.attempt.at,
        )
    ]


def test_a_bounce_enqueues_its_notice_once_in_the_same_transaction(store: SqlStore) -> None:
    store.record_messages([record("Q1", "bob@example.net", "carol@example.net")])
    bounced = _bounce("5.1.1", "hard", 1)
    sent = Attempt("relay1", "Q1", "carol@example.net", T0 + timedelta(minutes=1), "sent", "2.0.0")
    store.record_attempts([bounced, sent], None, on_outcome=_notices_for)
    store.record_attempts([bounced, sent], None, on_outcome=_notices_for)  # replayed lines
    [claimed] = store.claim("host-a", T0 + timedelta(minutes=2), timedelta(minutes=1), 10)
    assert claimed.notification.payload == {"user": "alice", "recipient": "bob@example.net", "subject": "Hello"}
    assert claimed.notification.dedup == "relay1:Q1:bob@example.net" and claimed.tries == 1


def test_an_outcome_read_before_its_record_still_suppresses_and_notifies_once(store: SqlStore) -> None:
    # The follower can read the 550 from the log before the milter's spooled record reaches the
    # store: the attempt waits, and the record brings its rules and notices with it.
    bounced = _bounce("5.1.1", "hard", 1)
    deferred = Attempt("relay1", "Q1", "carol@example.net", T0 + timedelta(seconds=30), "deferred", "4.2.0")
    store.record_attempts([bounced, deferred], None, policy=POLICY, on_outcome=_notices_for)
    assert _entries(store) == [] and store.claim("x", T0 + timedelta(minutes=2), timedelta(minutes=1), 10) == []
    the_record = record("Q1", "bob@example.net", "carol@example.net")
    store.record_messages([the_record], POLICY, _notices_for)
    store.record_messages([the_record], POLICY, _notices_for)  # the spool replayed it
    assert _entries(store) == [("user:alice", "bob@example.net", "hard_bounce")]
    [entry] = store.suppressions()
    assert entry.created == bounced.at and entry.source_queue_id == "Q1"
    [claimed] = store.claim("host-a", T0 + timedelta(minutes=2), timedelta(minutes=1), 10)
    assert claimed.notification.dedup == "relay1:Q1:bob@example.net"  # carol is only deferred: no notice
    found = store.message("Q1")
    assert found is not None and {r.address: r.state for r in found.recipients} == {
        "bob@example.net": "bounced",
        "carol@example.net": "deferred",
    }


def test_claims_are_leased_retried_and_sent_once(two_stores: tuple[SqlStore, SqlStore]) -> None:
    store, _ = two_stores
    notices = [Notification("bounce", "immediate", "it@example.com", f"k{n}", "d", {"n": n}, T0) for n in range(3)]
    assert store.enqueue(notices) == 3
    assert store.enqueue(notices[:1]) == 0  # the same notice again: dropped
    assert store.enqueue([Notification("complaint", "daily", "it@example.com", "k9", "d", {}, T0)]) == 1
    now = T0 + timedelta(seconds=1)
    first = store.claim("host-a", now, timedelta(seconds=60), 2)
    second = store.claim("host-b", now, timedelta(seconds=60), 10)
    assert [c.notification.dedup for c in first] == ["k0", "k1"]
    assert [c.notification.dedup for c in second] == ["k2"]  # host-a's lease holds; the daily one waits
    store.sent([first[0].id], now)
    store.failed(first[1].id, "451 try later", now + timedelta(seconds=30))
    assert store.claim("host-b", now + timedelta(seconds=10), timedelta(seconds=60), 10) == []
    # host-b's lease on k2 ran out (it crashed), and k1's retry time came: both go out again.
    again = store.claim("host-c", now + timedelta(seconds=61), timedelta(seconds=60), 10)
    assert sorted((c.notification.dedup, c.tries) for c in again) == [("k1", 2), ("k2", 2)]
    assert [c.notification.dedup for c in store.claim("host-c", now, timedelta(days=9), 10, mode="daily")] == ["k9"]


def test_concurrent_claims_never_hand_one_notice_to_two_workers(two_stores: tuple[SqlStore, SqlStore]) -> None:
    store, _ = two_stores
    store.enqueue([Notification("bounce", "immediate", "it@example.com", f"k{n}", "d", {}, T0) for n in range(200)])
    url = store.url
    taken: list[list[int]] = [[], [], [], []]

    def worker(number: int) -> None:
        own = open_store(url)
        try:
            while batch := own.claim(f"w{number}", T0 + timedelta(seconds=1), timedelta(hours=1), 7):
                taken[number].extend(c.id for c in batch)
        finally:
            own.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    every = [notice for ids in taken for notice in ids]
    assert len(every) == 200 and len(set(every)) == 200


# -- asynchronous reports (issue 14) -------------------------------------------------------------


def test_a_bounce_report_after_delivery_overturns_it_once(store: SqlStore) -> None:
    store.record_messages([record("Q1")])
    store.record_attempts([attempt("sent", 1)], None, policy=POLICY)
    assert states(store) == {"bob@example.net": "delivered"}
    late = _bounce("5.1.1", "hard", 60)
    store.record_attempts([late], None, policy=POLICY)  # from the log: a final state stays final
    assert states(store) == {"bob@example.net": "delivered"}
    store.record_attempts([late], None, policy=POLICY, late=True)  # the same line again: a replay
    assert states(store) == {"bob@example.net": "delivered"}
    report = _bounce("5.1.1", "hard", 61)
    assert store.record_attempts([report], None, policy=POLICY, late=True).new == 1
    assert states(store) == {"bob@example.net": "bounced"}
    assert _entries(store) == [("user:alice", "bob@example.net", "hard_bounce")]
    [row] = store.stats()
    assert (row["delivered"], row["bounced"]) == (0, 1)


def test_a_complaint_counts_once_and_suppresses_for_the_user(store: SqlStore) -> None:
    store.record_messages([record("Q1")])
    report = Report("relay1", "Q1", "Bob@example.net", "complaint", T0 + timedelta(hours=1), "abuse via fbl.example")
    entry = Suppression("user:alice", "bob@example.net", "complaint", report.at, None, "relay1", "Q1", "ingest")
    notice = Notification("complaint", "immediate", "it@example.com", "complaint:relay1:Q1:bob", "d", {}, report.at)
    assert store.record_report(report, entry, [notice]) is True
    assert store.record_report(report, entry, [notice]) is False  # the same report again
    [row] = store.stats()
    assert row["complaints"] == 1
    assert _entries(store) == [("user:alice", "bob@example.net", "complaint")]
    assert [c.notification.kind for c in store.claim("w", report.at, timedelta(minutes=1), 10)] == ["complaint"]


def test_processes_migrating_a_fresh_database_at_once_do_not_collide(pg_server: postgres.Server) -> None:
    # The follower, ingest and a second host may all start on a new database at the same moment.
    for _ in range(5):
        url = pg_server.create_database()
        errors: list[BaseException] = []
        barrier = threading.Barrier(6)

        def migrate(url: str = url, barrier: threading.Barrier = barrier, errors: list[BaseException] = errors) -> None:
            store = open_store(url)
            try:
                barrier.wait(10)
                store.migrate()
            except BaseException as exc:
                errors.append(exc)
            finally:
                store.close()

        threads = [threading.Thread(target=migrate) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        store = open_store(url)
        try:
            assert isinstance(store, SqlStore) and store.schema_version() == 3
        finally:
            store.close()


def test_an_unsubscribe_suppresses_for_the_list_and_counts_once_on_the_latest_message(store: SqlStore) -> None:
    store.record_messages(
        [
            record("Q1", "bob@example.net", accepted_at=T0),
            record("Q2", "bob@example.net", accepted_at=T0 + timedelta(days=1)),
            record("Q3", "bob@example.net", accepted_at=T0 + timedelta(days=2), list="other"),
        ]
    )
    seen: list[Report | None] = []

    def notices(report: Report | None) -> list[Notification]:
        seen.append(report)
        return []

    at = T0 + timedelta(days=3)
    click = Unsubscribe("alice", "news", "Bob@Example.net", at, "one_click", "web")
    assert store.record_unsubscribe(click, notices) is True
    assert store.record_unsubscribe(click, notices) is False  # the receiver POSTed twice: nothing changes
    [entry] = store.suppressions()
    assert (entry.scope, entry.address, entry.reason, entry.expires) == (
        "list:news",
        "bob@example.net",
        "unsubscribe",
        None,
    )
    assert (entry.source_queue_id, entry.created_by) == ("Q2", "web")  # the latest news message, not Q3
    [report] = seen
    assert report is not None and (report.queue_id, report.kind, report.detail) == ("Q2", "unsubscribe", "one_click")
    counts = {m.record.queue_id: m.unsubscribes for m in store.messages()}
    assert counts == {"Q1": 0, "Q2": 1, "Q3": 0}
    # A token for an address the store never sent to still unsubscribes it (the token is valid).
    lone = Unsubscribe("alice", "news", "carol@example.net", at, "mailto", "ingest")
    assert store.record_unsubscribe(lone) is True
    assert {e.address for e in store.suppressions(scope="list:news")} == {"bob@example.net", "carol@example.net"}
