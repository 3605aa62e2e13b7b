"""``tracking migrate``, ``stats``, ``messages``, ``messages show`` and ``recipients`` against a real SQLite
tracking store (and one ``messages`` run on a private PostgreSQL server)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from smtpplus_milter.cli import main
from smtpplus_milter.cli.tracking import DEFAULT_LIMIT, MESSAGE_CSV, MESSAGE_KEYS, SHOW_CSV
from smtpplus_milter.core.tracking import MessageRecord
from smtpplus_milter.infra.store import open_store
from smtpplus_milter.infra.store.base import STATS_COUNTERS, Attempt, Position, StoredLink
from tests.support import postgres
from tests.support.builders import message_record, write_config

# The three messages of fill_views(), newest first, and the id the third continued as after a
# content filter.
NEWEST_FIRST = ("4jdfvM0wYyzJVF3", "4jdfvM0wYyzJVF2", "4jdfvM0wYyzJVF1")
CONTINUED_AS = "4jdfvN1xZzzKWG9"


def record(queue_id: str, day: int, subject: str, *recipients: str) -> MessageRecord:
    at = datetime(2026, 11, day, 10, 0, tzinfo=UTC)
    return message_record(queue_id, subject=subject, message_id=None, accepted_at=at, recipients=recipients)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path, settings={"tracking": {"store": f"sqlite:///{tmp_path}/t.db", "node": "relay-1"}})


def fill(config: Path) -> None:
    store = open_store(f"sqlite:///{config.parent}/t.db")
    try:
        store.migrate()
        store.record_messages(
            [
                record("4jdfvM0wYyzJVF1", 1, "Order 1", "a@example.org", "b@example.net"),
                record("4jdfvM0wYyzJVF2", 1, "Order 2", "c@example.org"),
                record("4jdfvM0wYyzJVF3", 2, "Order 1", "d@example.org"),
            ]
        )
        at = datetime(2026, 11, 1, 10, 1, tzinfo=UTC)
        store.record_attempts(
            [
                Attempt("relay-1", "4jdfvM0wYyzJVF1", "a@example.org", at, "sent", "2.0.0"),
                Attempt("relay-1", "4jdfvM0wYyzJVF1", "b@example.net", at, "bounced", "5.1.1"),
            ],
            Position("relay-1", "test-log", 100),
        )
    finally:
        store.close()


def test_migrate_then_again(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tracking", "migrate", "-c", str(config)]) == 0
    assert capsys.readouterr().out.startswith("applied schema version(s) 1")
    assert main(["tracking", "migrate", "-c", str(config)]) == 0
    assert capsys.readouterr().out == "schema is current\n"


def test_stats_by_date_as_json(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fill(config)
    assert main(["stats", "-c", str(config), "--format", "json"]) == 0
    rows = {row["date"]: row for row in json.loads(capsys.readouterr().out)}
    assert list(next(iter(rows.values()))) == ["date", *STATS_COUNTERS]
    first = rows["2026-11-01"]
    assert (first["messages"], first["recipients"], first["delivered"], first["bounced"]) == (2, 3, 1, 1)
    assert rows["2026-11-02"]["messages"] == 1


def test_stats_by_subject_as_csv_with_a_window(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fill(config)
    args = ["stats", "-c", str(config), "--by", "subject", "--until", "2026-11-02", "--format", "csv"]
    assert main(args) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {row["subject"]: row["messages"] for row in rows} == {"Order 1": "1", "Order 2": "1"}


def test_stats_table_and_an_empty_store(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "-c", str(config)]) == 0
    assert capsys.readouterr().out == "(no messages)\n"
    fill(config)
    assert main(["stats", "-c", str(config), "--by", "recipient_domain"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["recipient_domain", "messages", "recipients"]
    assert any(line.startswith("example.net") for line in lines[1:])


def test_without_tracking_or_with_a_bad_date(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    off = write_config(tmp_path)
    assert main(["stats", "-c", str(off)]) == 1
    assert "tracking is off" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["stats", "-c", str(off), "--since", "yesterday"])
    assert usage.value.code == 2


# -- messages, messages show, recipients -----------------------------------------------------------


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


def fill_views(url: str) -> None:
    """Three messages: one with a deferral, a delivery and a bounce, a newsletter with no attempt yet,
    and one whose delivery was logged under the queue id a content filter gave it."""
    store = open_store(url)
    try:
        store.migrate()
        q1, q2, q3 = reversed(NEWEST_FIRST)
        store.record_messages(
            [
                message_record(
                    q1, subject="Order 1", accepted_at=at(1, 10), recipients=("a@example.org", "b@example.net")
                ),
                message_record(
                    q2,
                    user="newsletter",
                    list=None,
                    subject="News",
                    message_id="<news-1@yourcompany.com>",
                    accepted_at=at(1, 11),
                    recipients=("c@example.org",),
                ),
                message_record(q3, subject="Order 2", accepted_at=at(2, 10), recipients=("a@example.org",)),
            ]
        )
        mx = "mx.example.org[192.0.2.1]:25"
        store.record_attempts(
            [
                # Logged out of order: the view sorts by time.
                Attempt("relay-1", q1, "a@example.org", at(1, 10, 5), "sent", "2.0.0", mx, 300.0, "250 2.0.0 Ok"),
                Attempt(
                    "relay-1",
                    q1,
                    "a@example.org",
                    at(1, 10, 1),
                    "deferred",
                    "4.2.0",
                    mx,
                    60.0,
                    "450 4.2.0 busy",
                    "soft",
                ),
                Attempt(
                    "relay-1",
                    q1,
                    "b@example.net",
                    at(1, 10, 2),
                    "bounced",
                    "5.1.1",
                    None,
                    1.0,
                    "550 5.1.1 no such user",
                    "hard",
                ),
            ],
            Position("relay-1", "test-log", 100),
            [StoredLink("relay-1", q3, CONTINUED_AS, "queued_as")],
        )
        store.record_attempts(
            [
                Attempt(
                    "relay-1", CONTINUED_AS, "a@example.org", at(2, 10, 1), "sent", "2.0.0", mx, 60.0, "250 2.0.0 Ok"
                )
            ],
            Position("relay-1", "test-log", 200),
        )
    finally:
        store.close()


@pytest.fixture
def views(config: Path) -> Path:
    fill_views(f"sqlite:///{config.parent}/t.db")
    return config


def run(capsys: pytest.CaptureFixture[str], *argv: str, code: int = 0) -> str:
    assert main(list(argv)) == code, capsys.readouterr()
    return capsys.readouterr().out


def test_messages_as_json_newest_first_with_every_key(views: Path, capsys: pytest.CaptureFixture[str]) -> None:
    found = json.loads(run(capsys, "messages", "-c", str(views), "--format", "json"))
    assert tuple(item["queue_id"] for item in found) == NEWEST_FIRST
    for item in found:
        assert list(item) == [*MESSAGE_KEYS, "recipients"]
    first = found[2]
    assert (first["node"], first["user"], first["list"], first["from"]) == (
        "relay-1",
        "shop-frontend",
        "shop",
        "info@yourcompany.com",
    )
    assert (first["size"], first["priority"], first["queue"], first["accepted_at"]) == (
        1234,
        3,
        "normal",
        "2026-11-01T10:00:00Z",
    )
    assert found[1]["list"] is None
    a, b = first["recipients"]
    assert (a["address"], a["state"], b["address"], b["state"]) == (
        "a@example.org",
        "delivered",
        "b@example.net",
        "bounced",
    )
    assert [list(attempt) for attempt in a["attempts"]] == [["at", "status", "dsn", "class", "relay", "reply"]] * 2
    assert [(x["at"], x["status"], x["class"]) for x in a["attempts"]] == [
        ("2026-11-01T10:01:00Z", "deferred", "soft"),
        ("2026-11-01T10:05:00Z", "sent", None),
    ]
    assert b["attempts"][0]["reply"] == "550 5.1.1 no such user"
    assert b["attempts"][0]["relay"] is None
    assert found[1]["recipients"] == [{"address": "c@example.org", "state": "queued", "attempts": []}]
    # The attempt logged under the id the content filter gave counts for the original recipient.
    assert found[0]["recipients"][0]["state"] == "delivered"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param([], NEWEST_FIRST, id="all"),
        pytest.param(["--user", "shop-frontend"], (NEWEST_FIRST[0], NEWEST_FIRST[2]), id="user"),
        pytest.param(["--user", "nobody"], (), id="unknown-user"),
        pytest.param(["--to", "A@Example.org"], (NEWEST_FIRST[0], NEWEST_FIRST[2]), id="to-any-case"),
        pytest.param(["--to", "b@example.net"], (NEWEST_FIRST[2],), id="to"),
        pytest.param(["--message-id", "<news-1@yourcompany.com>"], (NEWEST_FIRST[1],), id="message-id"),
        pytest.param(["--queue-id", NEWEST_FIRST[2]], (NEWEST_FIRST[2],), id="queue-id"),
        pytest.param(["--since", "2026-11-01T11:00"], NEWEST_FIRST[:2], id="since-inclusive"),
        pytest.param(["--until", "2026-11-01T11:00:00+00:00"], NEWEST_FIRST[2:], id="until-exclusive"),
        pytest.param(["--since", "2026-11-01", "--until", "2026-11-02"], NEWEST_FIRST[1:], id="one-day"),
        pytest.param(["--limit", "1"], NEWEST_FIRST[:1], id="limit"),
        pytest.param(["--limit", "0"], NEWEST_FIRST, id="no-limit"),
        pytest.param(
            ["--user", "shop-frontend", "--to", "a@example.org", "--limit", "1"], NEWEST_FIRST[:1], id="combined"
        ),
    ],
)
def test_messages_filters(
    views: Path, capsys: pytest.CaptureFixture[str], options: list[str], expected: tuple[str, ...]
) -> None:
    found = json.loads(run(capsys, "messages", "-c", str(views), "--format", "json", *options))
    assert tuple(item["queue_id"] for item in found) == expected


def test_messages_default_limit(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = open_store(f"sqlite:///{config.parent}/t.db")
    try:
        store.migrate()
        start = at(1, 0)
        store.record_messages(
            message_record(f"4jdfvM0wYyzQ{n:03d}", accepted_at=start + timedelta(minutes=n))
            for n in range(DEFAULT_LIMIT + 2)
        )
    finally:
        store.close()
    shown = json.loads(run(capsys, "messages", "-c", str(config), "--format", "json"))
    assert len(shown) == DEFAULT_LIMIT
    assert shown[0]["queue_id"] == f"4jdfvM0wYyzQ{DEFAULT_LIMIT + 1:03d}"
    assert (
        len(json.loads(run(capsys, "messages", "-c", str(config), "--format", "json", "--limit", "0")))
        == DEFAULT_LIMIT + 2
    )


def test_messages_as_csv_one_row_per_recipient(views: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, "messages", "-c", str(views), "--format", "csv")
    assert out.splitlines()[0] == ",".join(MESSAGE_CSV)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(row["queue_id"], row["recipient"], row["state"]) for row in rows] == [
        (NEWEST_FIRST[0], "a@example.org", "delivered"),
        (NEWEST_FIRST[1], "c@example.org", "queued"),
        (NEWEST_FIRST[2], "a@example.org", "delivered"),
        (NEWEST_FIRST[2], "b@example.net", "bounced"),
    ]
    a = rows[2]
    assert (a["attempts"], a["last_at"], a["last_status"], a["last_dsn"]) == (
        "2",
        "2026-11-01T10:05:00Z",
        "sent",
        "2.0.0",
    )
    assert (rows[1]["attempts"], rows[1]["last_status"], rows[1]["list"]) == ("0", "", "")


def test_messages_as_a_table(views: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = run(capsys, "messages", "-c", str(views)).splitlines()
    assert lines[0].split()[:4] == ["ACCEPTED", "(UTC)", "QUEUE", "ID"]
    assert [line.split()[1] for line in lines[1:]] == list(NEWEST_FIRST)
    assert lines[3].split()[4:] == ["2", "1", "delivered,", "1", "bounced", "Order", "1"]
    assert run(capsys, "messages", "-c", str(views), "--user", "nobody") == "(no messages)\n"


def test_show_lists_each_recipients_attempts_in_time_order(views: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, "messages", "show", NEWEST_FIRST[2], "-c", str(views))
    assert "queue_id:      4jdfvM0wYyzJVF1\n" in out
    assert "subject:       Order 1\n" in out
    tail = out[out.index("recipients:\n") :].splitlines()
    assert tail[1:] == [
        "  a@example.org  delivered",
        "    2026-11-01T10:01:00Z deferred 4.2.0 soft mx.example.org[192.0.2.1]:25 (450 4.2.0 busy)",
        "    2026-11-01T10:05:00Z sent 2.0.0 - mx.example.org[192.0.2.1]:25 (250 2.0.0 Ok)",
        "  b@example.net  bounced",
        "    2026-11-01T10:02:00Z bounced 5.1.1 hard - (550 5.1.1 no such user)",
    ]


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["messages", "show", CONTINUED_AS, "-c", "{config}"], id="by-continued-id"),
        pytest.param(["messages", "-c", "{config}", "show", NEWEST_FIRST[0]], id="config-before-show"),
    ],
)
def test_show_as_json_is_a_list_of_one(views: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    out = run(capsys, *[arg.format(config=views) for arg in argv], "--format", "json")
    (found,) = json.loads(out)
    assert list(found) == [*MESSAGE_KEYS, "recipients"]
    assert found["queue_id"] == NEWEST_FIRST[0]
    assert found["recipients"][0]["attempts"][0]["at"] == "2026-11-02T10:01:00Z"


def test_show_as_csv_one_row_per_attempt(views: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, "messages", "show", NEWEST_FIRST[0], "-c", str(views), "--format", "csv")
    assert out.splitlines()[0] == ",".join(SHOW_CSV)
    (row,) = csv.DictReader(io.StringIO(out))
    assert (row["queue_id"], row["attempt_queue_id"], row["status"]) == (NEWEST_FIRST[0], CONTINUED_AS, "sent")
    out = run(capsys, "messages", "show", NEWEST_FIRST[1], "-c", str(views), "--format", "csv")
    (row,) = csv.DictReader(io.StringIO(out))
    assert (row["recipient"], row["state"], row["at"], row["status"]) == ("c@example.org", "queued", "", "")


def test_show_table_names_the_continued_id(views: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, "messages", "show", CONTINUED_AS, "-c", str(views))
    assert f"sent 2.0.0 - mx.example.org[192.0.2.1]:25 (250 2.0.0 Ok) [as {CONTINUED_AS}]" in out
    out = run(capsys, "messages", "show", NEWEST_FIRST[1], "-c", str(views))
    assert out.endswith("  c@example.org  queued\n    (no delivery attempt logged)\n")


def test_show_an_unknown_queue_id_or_with_a_filter(views: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["messages", "show", "4jdfvNOTHERE", "-c", str(views)]) == 1
    captured = capsys.readouterr()
    assert (captured.out, "no message with queue id 4jdfvNOTHERE" in captured.err) == ("", True)
    assert main(["messages", "-c", str(views), "--user", "x", "show", NEWEST_FIRST[0]]) == 2
    assert "takes no filter (--user)" in capsys.readouterr().err


def test_recipients_as_json_with_every_key(views: Path, capsys: pytest.CaptureFixture[str]) -> None:
    found = json.loads(run(capsys, "recipients", "-c", str(views), "--format", "json"))
    assert [list(item) for item in found] == [
        ["user", "address", "first_sent", "last_sent", "messages", "state", "suppressed"]
    ] * 3
    # Most recently sent first.
    assert [(c["user"], c["address"], c["messages"], c["state"]) for c in found] == [
        ("shop-frontend", "a@example.org", 2, "delivered"),
        ("newsletter", "c@example.org", 1, "queued"),
        ("shop-frontend", "b@example.net", 1, "bounced"),
    ]
    assert (found[0]["first_sent"], found[0]["last_sent"]) == ("2026-11-01T10:00:00Z", "2026-11-02T10:00:00Z")
    assert all(c["suppressed"] is None for c in found)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param(["--user", "shop-frontend"], ["a@example.org", "b@example.net"], id="user"),
        pytest.param(["--state", "bounced"], ["b@example.net"], id="state"),
        pytest.param(["--state", "suppressed"], [], id="state-none"),
        pytest.param(["--user", "newsletter", "--state", "queued"], ["c@example.org"], id="user-and-state"),
        pytest.param(["--limit", "1"], ["a@example.org"], id="limit"),
    ],
)
def test_recipients_filters_as_csv(
    views: Path, capsys: pytest.CaptureFixture[str], options: list[str], expected: list[str]
) -> None:
    out = run(capsys, "recipients", "-c", str(views), "--format", "csv", *options)
    assert out.splitlines()[0] == "user,address,first_sent,last_sent,messages,state,suppressed"
    assert [row["address"] for row in csv.DictReader(io.StringIO(out))] == expected


def test_recipients_as_a_table(views: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = run(capsys, "recipients", "-c", str(views)).splitlines()
    assert lines[0].split()[:2] == ["USER", "ADDRESS"]
    assert lines[3].split() == [
        "shop-frontend",
        "b@example.net",
        "2026-11-01T10:00:00Z",
        "2026-11-01T10:00:00Z",
        "1",
        "bounced",
        "-",
    ]
    assert run(capsys, "recipients", "-c", str(views), "--state", "expired") == "(no recipients)\n"


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["recipients", "--state", "lost"], id="unknown-state"),
        pytest.param(["messages", "--limit", "-1"], id="negative-limit"),
        pytest.param(["recipients", "--limit", "many"], id="limit-not-a-number"),
        pytest.param(["messages", "show"], id="show-without-qid"),
        pytest.param(["messages", "--format", "xml"], id="unknown-format"),
    ],
)
def test_usage_errors(config: Path, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as usage:
        main([*argv, "-c", str(config)])
    assert usage.value.code == 2


@pytest.fixture(scope="module")
def pg_server() -> Iterator[postgres.Server]:
    if (why := postgres.available()) is not None:
        pytest.skip(why)
    with postgres.private_server() as server:
        yield server


def test_messages_and_show_on_postgres(
    pg_server: postgres.Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = pg_server.create_database()
    fill_views(url)
    config = write_config(tmp_path, settings={"tracking": {"store": url, "node": "relay-1"}})
    found = json.loads(run(capsys, "messages", "-c", str(config), "--format", "json", "--to", "a@example.org"))
    assert [item["queue_id"] for item in found] == [NEWEST_FIRST[0], NEWEST_FIRST[2]]
    assert list(found[1]) == [*MESSAGE_KEYS, "recipients"]
    assert [x["status"] for x in found[1]["recipients"][0]["attempts"]] == ["deferred", "sent"]
    (shown,) = json.loads(run(capsys, "messages", "show", CONTINUED_AS, "-c", str(config), "--format", "json"))
    assert shown["queue_id"] == NEWEST_FIRST[0]
    contacts = json.loads(run(capsys, "recipients", "-c", str(config), "--format", "json", "--state", "bounced"))
    assert [(c["address"], c["suppressed"]) for c in contacts] == [("b@example.net", None)]
