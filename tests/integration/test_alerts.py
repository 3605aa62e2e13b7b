"""The alert dispatcher: de-duplication, retry with back-off, bounded queues, isolation of sinks.

Dispatcher logic is driven with in-process fake sinks (and a fake clock for de-duplication);
the three real sinks are checked for what they put on the wire against real loopback servers.
"""

from __future__ import annotations

import email
import email.policy
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from lab.harness import Sink
from smtpplus_milter.config import AlertmanagerSink, AlertsSection, EmailSink, Settings, WebhookSink
from smtpplus_milter.observe.alerts import (
    DISABLED_USER,
    DISPLAY_NAME_SPOOFING,
    UNAUTHORIZED_SENDER,
    Alert,
    AlertDispatcher,
    Alertmanager,
    Email,
    SinkWorker,
    Webhook,
)
from tests.support.webhook import WebhookReceiver


def _alert(sender: str = "x@evil.example", user: str = "shop-frontend", kind: str = UNAUTHORIZED_SENDER) -> Alert:
    return Alert(
        kind,
        user,
        sender,
        "header_from",
        "block",
        "rejected",
        f"550 5.7.1 <{sender}>: sender not authorized for SMTP+ user {user}",
        "4XyZ1abc",
    )


class FakeSink:
    """Records alerts; fails the first *failures* tries; can be made to block until released."""

    def __init__(self, failures: int = 0, block: bool = False) -> None:
        self.name = f"fake-{uuid.uuid4().hex[:8]}"
        self.failures = failures
        self.tries: list[float] = []
        self.sent: list[Alert] = []
        self.release = threading.Event()
        if not block:
            self.release.set()
        self.entered = threading.Event()

    def send(self, alert: Alert) -> None:
        self.entered.set()
        self.release.wait(30)
        self.tries.append(time.monotonic())
        if len(self.tries) <= self.failures:
            raise ConnectionRefusedError("fake sink down")
        self.sent.append(alert)


def _count(dispatcher: AlertDispatcher, sink: str, result: str) -> float:
    labels = {"sink": sink, "result": result}
    return dispatcher.metrics.registry.get_sample_value("smtpplus_alerts_total", labels) or 0.0


def _eventually(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


@pytest.fixture
def dispatchers() -> Iterator[list[AlertDispatcher]]:
    made: list[AlertDispatcher] = []
    yield made
    for dispatcher in made:
        dispatcher.stop(1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_dedup_per_user_and_sender_within_window(dispatchers: list[AlertDispatcher]) -> None:
    sink, clock = FakeSink(), FakeClock()
    dispatcher = AlertDispatcher([sink], dedup_seconds=300, clock=clock)
    dispatchers.append(dispatcher)
    for _ in range(5):
        dispatcher.submit(_alert())
    dispatcher.submit(_alert(user="SHOP-FRONTEND", sender="X@Evil.Example"))  # same key, other case
    dispatcher.submit(_alert(sender="y@evil.example"))
    dispatcher.submit(_alert(user="crm"))
    dispatcher.submit(_alert(kind=DISABLED_USER))
    clock.now += 299
    dispatcher.submit(_alert())
    _eventually(lambda: len(sink.sent) == 4)
    assert _count(dispatcher, sink.name, "suppressed") == 6
    clock.now += 1  # the window has passed: the next one goes out again
    dispatcher.submit(_alert())
    _eventually(lambda: len(sink.sent) == 5)
    assert _count(dispatcher, sink.name, "sent") == 5


def test_dedup_zero_sends_everything(dispatchers: list[AlertDispatcher]) -> None:
    sink = FakeSink()
    dispatcher = AlertDispatcher([sink], dedup_seconds=0)
    dispatchers.append(dispatcher)
    for _ in range(3):
        dispatcher.submit(_alert())
    _eventually(lambda: len(sink.sent) == 3)
    assert _count(dispatcher, sink.name, "suppressed") == 0


def test_retry_with_exponential_backoff_then_sent(dispatchers: list[AlertDispatcher]) -> None:
    sink = FakeSink(failures=3)
    dispatcher = AlertDispatcher([sink], attempts=5, backoff=0.05)
    dispatchers.append(dispatcher)
    dispatcher.submit(_alert())
    _eventually(lambda: len(sink.sent) == 1)
    gaps = [later - earlier for earlier, later in zip(sink.tries, sink.tries[1:], strict=False)]
    assert len(sink.tries) == 4
    # 0.05, 0.1, 0.2 s: each wait at least its back-off and longer than the one before.
    for gap, expected in zip(gaps, (0.05, 0.1, 0.2), strict=True):
        assert gap >= expected * 0.9, gaps
    assert gaps[0] < gaps[1] < gaps[2]
    assert (_count(dispatcher, sink.name, "sent"), _count(dispatcher, sink.name, "failed")) == (1, 0)


def test_gives_up_after_bounded_attempts(dispatchers: list[AlertDispatcher]) -> None:
    sink = FakeSink(failures=100)
    dispatcher = AlertDispatcher([sink], attempts=3, backoff=0.01)
    dispatchers.append(dispatcher)
    dispatcher.submit(_alert())
    _eventually(lambda: _count(dispatcher, sink.name, "failed") == 1)
    time.sleep(0.1)
    assert len(sink.tries) == 3 and not sink.sent


def test_backoff_is_capped() -> None:
    worker = SinkWorker(FakeSink(), attempts=20, backoff=2.0)
    try:
        assert [worker.backoff_for(n) for n in (1, 2, 3, 4)] == [2, 4, 8, 16]
        assert worker.backoff_for(19) == 300
    finally:
        worker.stop(0)


def test_full_queue_drops_and_counts_without_blocking(dispatchers: list[AlertDispatcher]) -> None:
    sink = FakeSink(block=True)
    dispatcher = AlertDispatcher([sink], dedup_seconds=0, queue_size=3)
    dispatchers.append(dispatcher)
    dispatcher.submit(_alert("first@evil.example"))
    assert sink.entered.wait(5)  # the worker holds the first one, stuck in send()
    started = time.monotonic()
    for number in range(10):
        dispatcher.submit(_alert(f"a{number}@evil.example"))
    assert time.monotonic() - started < 0.05  # submit never waits for a sink
    assert _count(dispatcher, sink.name, "dropped") == 7  # 3 fit in the queue
    sink.release.set()
    _eventually(lambda: len(sink.sent) == 4)


def test_a_stuck_sink_does_not_delay_another(dispatchers: list[AlertDispatcher]) -> None:
    stuck, healthy = FakeSink(block=True), FakeSink()
    dispatcher = AlertDispatcher([stuck, healthy])
    dispatchers.append(dispatcher)
    dispatcher.submit(_alert())
    dispatcher.submit(_alert("other@evil.example"))
    _eventually(lambda: len(healthy.sent) == 2, timeout=1)
    assert not stuck.sent
    stuck.release.set()


def test_retries_wait_while_newer_alerts_go_out(dispatchers: list[AlertDispatcher]) -> None:
    sink = FakeSink(failures=1)
    dispatcher = AlertDispatcher([sink], backoff=0.5)
    dispatchers.append(dispatcher)
    dispatcher.submit(_alert("first@evil.example"))
    _eventually(lambda: len(sink.tries) == 1)
    dispatcher.submit(_alert("second@evil.example"))
    _eventually(lambda: len(sink.sent) == 1, timeout=0.4)  # not behind first's back-off
    assert sink.sent[0].sender == "second@evil.example"
    _eventually(lambda: len(sink.sent) == 2)


def test_stop_sends_what_is_queued_and_is_bounded() -> None:
    sink = FakeSink(block=True)
    dispatcher = AlertDispatcher([sink], dedup_seconds=0)
    for number in range(3):
        dispatcher.submit(_alert(f"a{number}@evil.example"))
    assert sink.entered.wait(5)
    threading.Timer(0.1, sink.release.set).start()
    dispatcher.stop(timeout=2)
    assert len(sink.sent) == 3
    dispatcher.submit(_alert("late@evil.example"))  # after stop: ignored, no error
    hanging = FakeSink(block=True)
    stuck = AlertDispatcher([hanging], dedup_seconds=0)
    for number in range(3):
        stuck.submit(_alert(f"b{number}@evil.example"))
    started = time.monotonic()
    stuck.stop(timeout=0.2)
    assert time.monotonic() - started < 2.0
    hanging.release.set()
    _eventually(lambda: _count(stuck, hanging.name, "failed") == 2)  # the two still queued are given up


def test_submit_never_raises() -> None:
    class Broken:
        name = "broken"

        def offer(self, alert: Alert) -> None:
            raise RuntimeError("bug")

    dispatcher = AlertDispatcher([])
    dispatcher.workers = [Broken()]  # type: ignore[list-item]
    dispatcher.submit(_alert())


def _section(**alerts: object) -> AlertsSection:
    return Settings.model_validate({"alerts": alerts}).alerts


def test_from_config_and_reconfigure() -> None:
    with WebhookReceiver() as one, WebhookReceiver() as two:
        dispatcher = AlertDispatcher.from_config(_section(webhook={"url": one.url}))
        try:
            assert dispatcher.sink_names == ["webhook"]
            worker = dispatcher.workers[0]
            dispatcher.reconfigure(_section(webhook={"url": one.url}, dedup_seconds=10))
            assert dispatcher.workers[0] is worker and dispatcher.dedup_seconds == 10  # unchanged sink kept
            dispatcher.reconfigure(
                _section(webhook={"url": two.url}, alertmanager={"url": "http://127.0.0.1:9"}, dedup_seconds=10)
            )
            assert dispatcher.sink_names == ["webhook", "alertmanager"]
            dispatcher.submit(_alert())
            [body] = two.wait_for(1)
            assert body["sender"] == "x@evil.example" and not one.requests
        finally:
            dispatcher.stop(0.5)


# --- the real sinks, against real loopback servers ------------------------------------------


def test_webhook_posts_one_json_object() -> None:
    with WebhookReceiver() as receiver:
        Webhook(WebhookSink(url=receiver.url, timeout=2)).send(_alert())
        [(path, body)] = receiver.requests
    assert path == "/hook"
    assert body["alertname"] == "SMTPPlusUnauthorizedSender"
    assert (body["user"], body["sender"], body["field"], body["mode"], body["action"], body["queue_id"]) == (
        "shop-frontend",
        "x@evil.example",
        "header_from",
        "block",
        "rejected",
        "4XyZ1abc",
    )
    assert body["reply"].startswith("550 5.7.1 <x@evil.example>")
    datetime.fromisoformat(body["time"])


@pytest.mark.parametrize(
    ("status", "hang", "error"),
    [
        pytest.param(500, 0.0, "HTTP 500", id="http-500"),
        pytest.param(200, 5.0, "timed out", id="hang-beyond-timeout"),
    ],
)
def test_webhook_failures_raise_within_timeout(status: int, hang: float, error: str) -> None:
    with WebhookReceiver(status=status, hang_seconds=hang) as receiver:
        started = time.monotonic()
        with pytest.raises(Exception, match=error):
            Webhook(WebhookSink(url=receiver.url, timeout=0.3)).send(_alert())
        assert time.monotonic() - started < 2


def test_alertmanager_payload() -> None:
    sink = Alertmanager(AlertmanagerSink(url="http://127.0.0.1:9093/"), lifetime=timedelta(minutes=5))
    assert sink.url == "http://127.0.0.1:9093/api/v2/alerts"
    [item] = sink.payload(_alert())
    assert item["labels"] == {
        "alertname": "SMTPPlusUnauthorizedSender",
        "user": "shop-frontend",
        "sender": "x@evil.example",
        "mode": "block",
    }
    annotations = item["annotations"]
    assert isinstance(annotations, dict)
    assert annotations["queue_id"] == "4XyZ1abc" and annotations["description"].startswith("550 5.7.1")
    starts = datetime.fromisoformat(str(item["startsAt"]))
    assert datetime.fromisoformat(str(item["endsAt"])) - starts == timedelta(minutes=5)
    [disabled] = sink.payload(_alert(kind=DISABLED_USER))
    assert disabled["labels"] == {
        "alertname": "SMTPPlusDisabledUserAttempt",
        "user": "shop-frontend",
        "sender": "x@evil.example",
    }


def test_email_reaches_an_smtp_server() -> None:
    with Sink() as server:
        config = EmailSink.model_validate(
            {
                "to": ["it@example.com", "ops@example.com"],
                "smtp": f"127.0.0.1:{server.port}",
                "from": "smtpplus@relay.test",
            }
        )
        Email(config).send(_alert())
        [message] = server.wait_for(1)
    assert message.mail_from == "smtpplus@relay.test"
    assert message.rcpt_tos == ["it@example.com", "ops@example.com"]
    parsed = email.message_from_bytes(message.data, policy=email.policy.default)
    assert str(parsed["Subject"]).startswith("[SMTP+] SMTP+ user shop-frontend used unauthorized sender x@evil.example")
    assert parsed["Auto-Submitted"] == "auto-generated"
    body = parsed.get_content()
    assert "queue id: 4XyZ1abc" in body and "reply:    550 5.7.1 <x@evil.example>" in body


def _spoofing_alert() -> Alert:
    return Alert(
        DISPLAY_NAME_SPOOFING,
        "shop-frontend",
        "info@yourcompany.com",
        "header_from",
        "block",
        "delivered",
        "",
        "4XyZ1abc",
        shown="ceo@bank.example",
    )


def test_display_name_spoofing_alert_on_every_sink(dispatchers: list[AlertDispatcher]) -> None:
    alert = _spoofing_alert()
    assert alert.alertname == "SMTPPlusDisplayNameSpoofing"
    assert "ceo@bank.example" in alert.summary and "info@yourcompany.com" in alert.summary
    with WebhookReceiver() as receiver:
        Webhook(WebhookSink(url=receiver.url, timeout=2)).send(alert)
        [(_, body)] = receiver.requests
    assert (body["kind"], body["alertname"], body["sender"], body["shown"]) == (
        "display_name_spoofing",
        "SMTPPlusDisplayNameSpoofing",
        "info@yourcompany.com",
        "ceo@bank.example",
    )
    [item] = Alertmanager(AlertmanagerSink(url="http://127.0.0.1:9093")).payload(alert)
    assert item["labels"] == {
        "alertname": "SMTPPlusDisplayNameSpoofing",
        "user": "shop-frontend",
        "sender": "info@yourcompany.com",
    }
    annotations = item["annotations"]
    assert isinstance(annotations, dict)
    assert annotations["shown"] == "ceo@bank.example" and "ceo@bank.example" in annotations["description"]
    config = EmailSink.model_validate({"to": ["it@example.com"], "from": "smtpplus@relay.test"})
    message = Email(config).message(alert)
    assert "SMTPPlusDisplayNameSpoofing" in message.get_content()
    assert "shown:    ceo@bank.example" in message.get_content()
    # De-duplicated per (kind, user, sender), apart from an unauthorized-sender alert for the same pair.
    sink, clock = FakeSink(), FakeClock()
    dispatcher = AlertDispatcher([sink], dedup_seconds=300, clock=clock)
    dispatchers.append(dispatcher)
    dispatcher.submit(alert)
    dispatcher.submit(_spoofing_alert())
    dispatcher.submit(_alert(sender="info@yourcompany.com"))
    _eventually(lambda: len(sink.sent) == 2)
    assert _count(dispatcher, sink.name, "suppressed") == 1
