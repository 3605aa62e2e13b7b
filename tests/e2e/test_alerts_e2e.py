"""Alerts end to end: real Postfix + Dovecot + milter -> a real Alertmanager, webhook and SMTP sink.

Also the faults: Alertmanager down, a webhook that answers 500, a webhook that hangs. Mail must
keep flowing at full speed while the alerts are retried and finally counted as failed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from email import message_from_bytes
from email import policy as email_policy

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lab.harness import Alertmanager, Sink, free_port, make_workdir, remove_workdir
from lab.stack import Stack, make_message
from tests.support.webhook import WebhookReceiver

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="private Postfix instances need root"),
]

needs_alertmanager = pytest.mark.skipif(
    shutil.which(Alertmanager.BINARY) is None,
    reason="prometheus-alertmanager not installed (apt-get install prometheus-alertmanager)",
)


def scrape(stack: Stack) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=5) as response:
        text: str = response.read().decode("utf-8")
        return text


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for item in family.samples:
            if item.name == name and all(item.labels.get(key) == value for key, value in labels.items()):
                return float(item.value)
    return 0.0


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


def timed_send(stack: Stack, *, sender: str, envelope: str = "info@yourcompany.com", subject: str = "t") -> float:
    started = time.monotonic()
    result = stack.send(make_message(from_=sender, subject=subject), login="shop-frontend", mail_from=envelope)
    elapsed = time.monotonic() - started
    assert result.accepted or result.code == 550, result
    return elapsed


# --- the happy path: every sink receives the alert --------------------------------------------


@pytest.fixture(scope="module")
def receivers() -> Iterator[tuple[Alertmanager, WebhookReceiver, Sink]]:
    if shutil.which(Alertmanager.BINARY) is None:
        pytest.skip("prometheus-alertmanager not installed (apt-get install prometheus-alertmanager)")
    workdir = make_workdir("alertmanager")
    try:
        with Alertmanager(workdir) as alertmanager, WebhookReceiver() as webhook, Sink() as mailbox:
            yield alertmanager, webhook, mailbox
    finally:
        remove_workdir(workdir)


@pytest.fixture(scope="module")
def stack(receivers: tuple[Alertmanager, WebhookReceiver, Sink]) -> Iterator[Stack]:
    alertmanager, webhook, mailbox = receivers
    alerts = {
        "dedup_seconds": 300,
        "webhook": {"url": webhook.url, "timeout": 5},
        "alertmanager": {"url": alertmanager.url},
        "email": {"to": ["it@example.com"], "smtp": f"127.0.0.1:{mailbox.port}", "from": "smtpplus@relay.test"},
    }
    with Stack(settings={"alerts": alerts}) as running:
        yield running


@needs_alertmanager
def test_unauthorized_sender_reaches_every_sink_once(
    stack: Stack, receivers: tuple[Alertmanager, WebhookReceiver, Sink]
) -> None:
    alertmanager, webhook, mailbox = receivers
    assert stack.milter is not None
    before = scrape(stack)
    # Five identical attempts inside the dedup window: refused five times, alerted once. A From:
    # spoof is refused after DATA, when Postfix has given the message a queue id.
    for number in range(5):
        result = stack.send(
            make_message(from_="Shop <bounce@evil.example>", subject=f"spoof {number}"),
            login="shop-frontend",
            mail_from="info@yourcompany.com",
        )
        assert (result.stage, result.code) == ("data", 550), result

    [hook] = [body for body in webhook.wait_for(1) if body["sender"] == "bounce@evil.example"]
    assert (hook["alertname"], hook["user"], hook["field"], hook["mode"], hook["action"]) == (
        "SMTPPlusUnauthorizedSender",
        "shop-frontend",
        "header_from",
        "block",
        "rejected",
    )
    assert hook["reply"].startswith("550 5.7.1 <bounce@evil.example>: sender not authorized")

    def in_alertmanager() -> list[dict[str, object]]:
        return [a for a in alertmanager.alerts() if a["labels"].get("sender") == "bounce@evil.example"]

    wait_for(lambda: bool(in_alertmanager()), 10, "the alert in Alertmanager")
    [held] = in_alertmanager()
    assert held["labels"] == {
        "alertname": "SMTPPlusUnauthorizedSender",
        "user": "shop-frontend",
        "sender": "bounce@evil.example",
        "mode": "block",
    }
    annotations = held["annotations"]
    assert isinstance(annotations, dict)
    assert annotations["description"] == hook["reply"]
    first = stack.milter.wait_for_event("unauthorized_sender", lambda e: e["sender"] == "bounce@evil.example")
    assert annotations["queue_id"] == first["queue_id"] and first["queue_id"]
    assert held["status"] == {"inhibitedBy": [], "silencedBy": [], "state": "active"}

    [mail] = mailbox.wait_for(1, timeout=10)
    parsed = message_from_bytes(mail.data, policy=email_policy.default)
    assert mail.rcpt_tos == ["it@example.com"] and mail.mail_from == "smtpplus@relay.test"
    assert "bounce@evil.example" in str(parsed["Subject"]) and "shop-frontend" in str(parsed["Subject"])

    time.sleep(0.5)  # anything else would have arrived by now
    assert [b["sender"] for b in webhook.bodies()].count("bounce@evil.example") == 1
    assert len(mailbox.messages) == 1
    after = scrape(stack)
    for sink in ("webhook", "alertmanager", "email"):
        assert (
            sample(after, "smtpplus_alerts_total", sink=sink, result="sent")
            - sample(before, "smtpplus_alerts_total", sink=sink, result="sent")
            == 1
        )
        assert (
            sample(after, "smtpplus_alerts_total", sink=sink, result="suppressed")
            - sample(before, "smtpplus_alerts_total", sink=sink, result="suppressed")
            == 4
        )


@needs_alertmanager
def test_disabled_user_attempt_alerts(stack: Stack, receivers: tuple[Alertmanager, WebhookReceiver, Sink]) -> None:
    alertmanager, _webhook, _mailbox = receivers
    result = stack.send(make_message(from_="crm@yourcompany.com"), login="old-crm", mail_from="crm@yourcompany.com")
    assert (result.stage, result.code) == ("mail", 550)

    def held() -> list[dict[str, object]]:
        return [a for a in alertmanager.alerts() if a["labels"].get("alertname") == "SMTPPlusDisabledUserAttempt"]

    wait_for(lambda: bool(held()), 10, "SMTPPlusDisabledUserAttempt in Alertmanager")
    assert held()[0]["labels"] == {
        "alertname": "SMTPPlusDisabledUserAttempt",
        "user": "old-crm",
        "sender": "crm@yourcompany.com",
    }


# --- metrics of a running milter ---------------------------------------------------------------


@needs_alertmanager
def test_metrics_move_and_pass_promtool(stack: Stack) -> None:
    before = scrape(stack)
    assert stack.send(
        make_message(from_="info@yourcompany.com", subject="urgent", extra=[("X-Priority", "1 (Highest)")]),
        login="shop-frontend",
        mail_from="info@yourcompany.com",
    ).accepted
    assert (
        stack.send(
            make_message(from_="visitor@gmail.example"), login="shop-frontend", mail_from="info@yourcompany.com"
        ).code
        == 550
    )
    stack.sink.wait_for(1, timeout=30)
    after = scrape(stack)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("smtpplus_messages_total", user="shop-frontend", result="accepted") == 1
    assert moved("smtpplus_messages_total", user="shop-frontend", result="rejected") == 1
    assert moved("smtpplus_unauthorized_total", user="shop-frontend", mode="block") == 1
    assert moved("smtpplus_priority_total", effective="1") == 1
    assert moved("smtpplus_queue_total", queue="high") == 1
    assert moved("smtpplus_processing_seconds_count") == 2
    assert moved("smtpplus_message_bytes_count") == 2  # both announced SIZE= at MAIL FROM
    assert sample(after, "smtpplus_build_info") == 1
    # tempfailed only comes from an internal error; tests/milter covers that answer.

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=after, capture_output=True, text=True, timeout=30, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


# --- faults: alerts fail, mail does not wait -----------------------------------------------------


MAX_CLIENT_SECONDS = 1.5  # a whole SMTP session (TLS, AUTH, one message); the webhook timeout is 2 s


def test_failing_sinks_never_slow_mail() -> None:
    dead_port = free_port()  # nothing listens here: Alertmanager is down
    with WebhookReceiver(hang_seconds=30) as hanging, WebhookReceiver(status=500) as broken:
        alerts = {
            "dedup_seconds": 300,
            "attempts": 2,
            "backoff_seconds": 0.2,
            "webhook": {"url": hanging.url, "timeout": 2},
            "alertmanager": {"url": f"http://127.0.0.1:{dead_port}", "timeout": 2},
        }
        with Stack(settings={"alerts": alerts, "authorization": {"mode": "alert"}}) as stack:
            milter = stack.milter
            assert milter is not None
            # Alert mode: every one of these is delivered, and each raises an alert that fails.
            times = [timed_send(stack, sender=f"visitor{n}@gmail.example", subject=f"hang {n}") for n in range(3)]
            assert max(times) < MAX_CLIENT_SECONDS, times
            stack.sink.wait_for(3, timeout=30)
            assert max(e["ms"] for e in milter.events("message")) < 500

            def failed(sink: str) -> float:
                return sample(scrape(stack), "smtpplus_alerts_total", sink=sink, result="failed")

            # 3 alerts x 2 tries: the hanging webhook costs 2 s a try, one sink thread.
            wait_for(lambda: failed("alertmanager") == 3, 10, "3 failed Alertmanager alerts")
            wait_for(lambda: failed("webhook") == 3, 20, "3 failed webhook alerts")
            assert len(hanging.requests) == 6  # each alert was tried twice
            assert sample(scrape(stack), "smtpplus_alerts_total", sink="webhook", result="sent") == 0

            # Reload onto a webhook that answers 500: retried, failed, and mail still flows.
            stack.settings["alerts"]["webhook"] = {"url": broken.url, "timeout": 2}
            stack.write_settings(stack.settings)
            reloads = len(milter.events("alerts_reconfigured"))
            milter.reload()
            wait_for(lambda: len(milter.events("alerts_reconfigured")) > reloads, 10, "the reload")
            stack.sink.clear()
            times = [timed_send(stack, sender=f"other{n}@gmail.example", subject=f"500 {n}") for n in range(2)]
            assert max(times) < MAX_CLIENT_SECONDS, times
            stack.sink.wait_for(2, timeout=30)
            wait_for(lambda: failed("webhook") == 5, 10, "2 more failed webhook alerts")
            assert len(broken.requests) == 4
            retries = [e for e in milter.events("alert_send_failed") if e["sink"] == "webhook"]
            assert any("HTTP 500" in e["error"] for e in retries)
            assert any("timed out" in e["error"] for e in retries)
            # Stopping does not wait for the hanging webhook beyond the drain time.
            started = time.monotonic()
            milter.stop()
            assert time.monotonic() - started < 10
