"""deploy/grafana/smtpplus-tracking.json: every SQL query of the dashboard runs on the tracking store's
real schema (a private PostgreSQL server, migrated by the program) and returns the columns its panel
shows.

Grafana expands its macros before PostgreSQL sees a query; :func:`expand` does the same for the ones
the dashboard uses (as Grafana's PostgreSQL data source writes them: ``$__unixEpochFilter(c)`` is
``c >= FROM AND c <= TO`` in epoch seconds, ``$__unixEpochGroupAlias(c, '1h')`` is
``floor(c/3600)*3600 AS "time"``), and the ``$node``/``$user`` variables as a multi-value selection
(quoted, comma-separated). A macro it does not know fails the test instead of reaching the server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from smtpplus_milter.infra.store import open_store
from smtpplus_milter.infra.store.base import Attempt, Position
from tests.support import postgres
from tests.support.builders import message_record

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "smtpplus-tracking.json"
SECONDS = {"m": 60, "h": 3600, "d": 86400}
# The columns of each table-format panel (time series: "time" first, then numbers).
TABLE_COLUMNS = {
    "Messages": ["messages"],
    "Recipients": ["recipients"],
    "Bounce rate": ["bounce_rate"],
    "Deferred now": ["deferred"],
    "Expired": ["expired"],
    "Suppressed": ["suppressed"],
    "Top users": ["user", "messages", "recipients", "delivered", "bounced"],
    "Top senders (From)": ["sender", "messages", "recipients", "delivered", "bounced"],
    "Top subjects": ["subject", "messages", "recipients", "delivered", "bounced"],
    "Bounces by recipient domain": ["recipient_domain", "recipients", "bounced", "deferred"],
}
SERIES_COLUMNS = {
    "Messages per hour": ["time", "metric", "messages"],
    "Recipients by state (by hour accepted)": [
        "time",
        "queued",
        "delivered",
        "deferred",
        "bounced",
        "expired",
        "suppressed",
    ],
    "Bounce rate per hour": ["time", "bounce_rate"],
}


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def sql_panels() -> list[dict[str, Any]]:
    return [panel for panel in load()["panels"] if any("rawSql" in target for target in panel["targets"])]


def expand(sql: str, start: datetime, end: datetime, variables: dict[str, list[str]]) -> str:
    """*sql* with Grafana's macros and variables replaced as Grafana would for the range [start, end]."""
    lo, hi = int(start.timestamp()), int(end.timestamp())

    def group(match: re.Match[str]) -> str:
        column, interval, alias = match.group("col").strip(), match.group("interval"), match.group("alias")
        seconds = int(interval[:-1]) * SECONDS[interval[-1]]
        return f"floor(({column})/{seconds})*{seconds}" + (' AS "time"' if alias else "")

    sql = re.sub(r"\$__unixEpochGroup(?P<alias>Alias)?\((?P<col>[^,()]+),\s*'(?P<interval>\d+[mhd])'\)", group, sql)
    sql = re.sub(r"\$__unixEpochFilter\(([^()]+)\)", lambda m: f"{m[1]} >= {lo} AND {m[1]} <= {hi}", sql)
    sql = sql.replace("$__unixEpochFrom()", str(lo)).replace("$__unixEpochTo()", str(hi))
    for name, values in variables.items():
        sql = re.sub(rf"\${name}\b", ", ".join("'" + value.replace("'", "''") + "'" for value in values), sql)
    assert "$" not in sql, f"a macro or variable this test does not expand: {sql}"
    return sql


@pytest.fixture(scope="module")
def store_url() -> Iterator[str]:
    if (why := postgres.available()) is not None:
        pytest.skip(why)
    with postgres.private_server() as server:
        url = server.create_database()
        store = open_store(url)
        try:
            store.migrate()
            now = datetime.now(UTC).replace(microsecond=0)
            store.record_messages(
                [
                    message_record(
                        "4jdfvM0wYyzGR01",
                        accepted_at=now - timedelta(hours=3),
                        recipients=("a@example.org", "b@example.net"),
                    ),
                    message_record(
                        "4jdfvM0wYyzGR02",
                        user="newsletter",
                        subject="News",
                        accepted_at=now - timedelta(hours=1),
                        recipients=("c@example.org",),
                    ),
                    message_record(
                        "4jdfvM0wYyzGR03",
                        node="relay-2",
                        accepted_at=now - timedelta(minutes=5),
                        recipients=("d@example.org",),
                    ),
                ]
            )
            store.record_attempts(
                [
                    Attempt("relay-1", "4jdfvM0wYyzGR01", "a@example.org", now - timedelta(hours=2), "sent", "2.0.0"),
                    Attempt(
                        "relay-1",
                        "4jdfvM0wYyzGR01",
                        "b@example.net",
                        now - timedelta(hours=2),
                        "bounced",
                        "5.1.1",
                        failure_class="hard",
                    ),
                    Attempt(
                        "relay-1",
                        "4jdfvM0wYyzGR02",
                        "c@example.org",
                        now - timedelta(minutes=30),
                        "deferred",
                        "4.2.0",
                        failure_class="soft",
                    ),
                ],
                Position("relay-1", "test-log", 1),
            )
        finally:
            store.close()
        yield url


def run(url: str, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql)  # type: ignore[call-overload]
        assert cur.description is not None
        return [column.name for column in cur.description], cur.fetchall()


def everything(url: str) -> dict[str, list[str]]:
    """The values of every dashboard variable, as the 'All' selection sends them."""
    now = datetime.now(UTC)
    found: dict[str, list[str]] = {}
    for variable in load()["templating"]["list"]:
        columns, rows = run(url, expand(variable["query"], now - timedelta(days=1), now, found))
        assert len(columns) == 1, variable["name"]
        found[variable["name"]] = [row[0] for row in rows]
    return found


def test_the_dashboard_declares_its_data_sources_as_inputs() -> None:
    dashboard = load()
    assert {item["name"]: item["pluginId"] for item in dashboard["__inputs"]} == {
        "DS_POSTGRES": "grafana-postgresql-datasource",
        "DS_PROMETHEUS": "prometheus",
    }
    for panel in dashboard["panels"]:
        uids = {panel["datasource"]["uid"], *(target["datasource"]["uid"] for target in panel["targets"])}
        sql = all("rawSql" in target for target in panel["targets"])
        assert uids == ({"${DS_POSTGRES}"} if sql else {"${DS_PROMETHEUS}"}), panel["title"]
    titles = [panel["title"] for panel in sql_panels()]
    assert sorted(titles) == sorted([*TABLE_COLUMNS, *SERIES_COLUMNS])
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def test_the_variables_list_the_recorded_nodes_and_users(store_url: str) -> None:
    assert everything(store_url) == {"node": ["relay-1", "relay-2"], "user": ["newsletter", "shop-frontend"]}


@pytest.mark.parametrize("panel", [pytest.param(panel, id=panel["title"]) for panel in sql_panels()])
def test_every_query_runs_and_returns_its_columns(store_url: str, panel: dict[str, Any]) -> None:
    now = datetime.now(UTC)
    variables = everything(store_url)
    for target in panel["targets"]:
        columns, rows = run(store_url, expand(target["rawSql"], now - timedelta(days=1), now, variables))
        if target["format"] == "time_series":
            assert columns == SERIES_COLUMNS[panel["title"]]
            times = [row[0] for row in rows]
            assert times == sorted(times), "Grafana needs a time series sorted by time"
            assert all(float(t) % 3600 == 0 for t in times), "hourly buckets in epoch seconds"
        else:
            assert columns == TABLE_COLUMNS[panel["title"]]
        assert rows, "every panel has something to show for the recorded messages"


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        pytest.param("Messages", [(3,)], id="messages"),
        pytest.param("Recipients", [(4,)], id="recipients"),
        pytest.param("Bounce rate", [(0.25,)], id="bounce-rate"),
        pytest.param("Deferred now", [(1,)], id="deferred-now"),
        pytest.param("Top users", [("shop-frontend", 2, 3, 1, 1), ("newsletter", 1, 1, 0, 0)], id="top-users"),
        pytest.param(
            "Bounces by recipient domain",
            [("example.net", 1, 1, 0), ("example.org", 3, 0, 1)],
            id="bounces-by-domain",
        ),
    ],
)
def test_what_the_panels_count(store_url: str, title: str, expected: list[tuple[Any, ...]]) -> None:
    (panel,) = [panel for panel in sql_panels() if panel["title"] == title]
    now = datetime.now(UTC)
    _, rows = run(store_url, expand(panel["targets"][0]["rawSql"], now - timedelta(days=1), now, everything(store_url)))
    assert [tuple(float(v) if isinstance(v, float) else v for v in row) for row in rows] == expected


def test_a_user_selection_and_an_empty_range(store_url: str) -> None:
    (panel,) = [panel for panel in sql_panels() if panel["title"] == "Messages"]
    now = datetime.now(UTC)
    sql = panel["targets"][0]["rawSql"]
    chosen = {**everything(store_url), "user": ["newsletter"]}
    assert run(store_url, expand(sql, now - timedelta(days=1), now, chosen))[1] == [(1,)]
    long_ago = now - timedelta(days=30)
    assert run(store_url, expand(sql, long_ago, long_ago + timedelta(hours=1), everything(store_url)))[1] == [(0,)]
