"""The reporter (outcome -> log events, metrics, alerts) and the background log writer."""

from __future__ import annotations

import io
import json
import threading
import time
from typing import Any

from smtpplus_milter.core.session import MessageSession
from smtpplus_milter.observe.alerts import Alert, AlertDispatcher
from smtpplus_milter.observe.log import EventWriter
from smtpplus_milter.observe.metrics import Metrics
from smtpplus_milter.observe.report import Reporter
from tests.support import builders


class Collect:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, level: str, event: str, fields: dict[str, Any]) -> None:
        self.events.append((level, event, fields))


class Sink:
    name = "test"

    def __init__(self) -> None:
        self.sent: list[Alert] = []
        self.got = threading.Event()

    def send(self, alert: Alert) -> None:
        self.sent.append(alert)
        self.got.set()


def test_an_alert_mode_outcome_is_counted_logged_and_alerted() -> None:
    shop = builders.user("shop", domains=["shop.example"])
    session = MessageSession(builders.rules(builders.directory(shop, mode="alert")))
    session.mail_from("shop", "<x@evil.example>", queue_id="Q9")
    session.header("From", "x@evil.example")
    session.end_of_headers()
    session.end_of_message()
    session.accept()
    outcome = session.outcome()
    assert outcome is not None
    metrics, collect, sink = Metrics(), Collect(), Sink()
    alerts = AlertDispatcher([sink], metrics=metrics)
    try:
        Reporter(metrics, alerts, collect).report(outcome, 0.002)
        assert sink.got.wait(5)
    finally:
        alerts.stop(1)
    sample = metrics.registry.get_sample_value
    assert sample("smtpplus_messages_total", {"user": "shop", "result": "accepted"}) == 1
    assert sample("smtpplus_unauthorized_total", {"user": "shop", "mode": "alert"}) == 1
    assert sample("smtpplus_queue_total", {"queue": "normal"}) == 1
    assert [(level, event) for level, event, _ in collect.events] == [
        ("warning", "unauthorized_sender"),
        ("warning", "unauthorized_sender"),
        ("info", "message"),
    ]
    built = collect.events[-1][2]
    fields = built() if callable(built) else built
    assert fields["queue_id"] == "Q9" and fields["ms"] == 2.0
    [alert] = sink.sent
    assert (alert.kind, alert.user, alert.sender, alert.field, alert.queue_id) == (
        "unauthorized_sender",
        "shop",
        "x@evil.example",
        "envelope_from,header_from",
        "Q9",
    )


def test_event_writer_writes_json_lines_in_order_and_loses_nothing_at_stop() -> None:
    stream = io.StringIO()
    writer = EventWriter(stream, json=True)
    for number in range(2000):
        writer.emit("info", "message", {"n": number, "senders": {"envelope_from": "a@b"}})
    writer.stop()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["n"] for line in lines] == list(range(2000))
    assert {line["event"] for line in lines} == {"message"} and {line["level"] for line in lines} == {"info"}
    assert all(line["timestamp"].endswith("Z") for line in lines)


def test_event_writer_writes_within_its_interval_and_renders_odd_values() -> None:
    stream = io.StringIO()
    writer = EventWriter(stream, json=True)
    try:
        writer.emit("warning", "unauthorized_sender", {"sender": "x@evil.example", "odd": object()})
        deadline = time.monotonic() + 5
        while not stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        [line] = [json.loads(text) for text in stream.getvalue().splitlines()]
        assert line["event"] == "unauthorized_sender" and line["odd"].startswith("<object")
    finally:
        writer.stop()


def test_event_writer_writes_a_backlog_itself() -> None:
    stream = io.StringIO()
    writer = EventWriter(stream, json=True, interval=3600.0)  # the thread sleeps: emit must write the backlog
    try:
        for number in range(EventWriter.MAX_PENDING + 1):
            writer.emit("info", "message", {"n": number})
        assert len(stream.getvalue().splitlines()) == EventWriter.MAX_PENDING + 1
    finally:
        writer.stop()
