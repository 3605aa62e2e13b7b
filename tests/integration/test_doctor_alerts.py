"""``doctor --alert``: each failed check becomes one SMTPPlusDoctorFail alert through the configured
sinks (a real webhook receiver on loopback), once per check and subject in a run; OK and WARN send
nothing, and the process waits until the alerts are out."""

from __future__ import annotations

from pathlib import Path

from smtpplus_milter.cli.doctor import send_alerts
from smtpplus_milter.config import load_config
from smtpplus_milter.core.doctor import Check, Report, Status
from smtpplus_milter.observe.alerts import DOCTOR_FAIL, Alert, Alertmanager
from tests.support.builders import write_config
from tests.support.webhook import WebhookReceiver

REPORT = Report.of(
    [
        Check("spf", "yourcompany.com", Status.FAIL, "softfail for 192.0.2.10", "v=spf1 ip4:192.0.2.10 ~all"),
        Check("spf", "yourcompany.com", Status.FAIL, "softfail for 192.0.2.11", "v=spf1 ip4:192.0.2.11 ~all"),
        Check("ptr", "192.0.2.10", Status.FAIL, "no PTR record", "PTR relay.yourcompany.com"),
        Check("dmarc", "yourcompany.com", Status.WARN, "p=none", "publish p=quarantine"),
        Check("postfix_long_queue_ids", "enable_long_queue_ids", Status.OK, "yes"),
    ]
)


def test_each_failed_check_alerts_once(tmp_path: Path) -> None:
    with WebhookReceiver() as receiver:
        config = load_config(write_config(tmp_path, settings={"alerts": {"webhook": {"url": receiver.url}}}))
        assert send_alerts(config, REPORT) == 3  # submitted; the dispatcher de-duplicates the same key
        bodies = receiver.wait_for(2)
    # The two SPF failures of one domain are one alert (check + subject); the PTR failure another.
    assert sorted((body["alertname"], body["sender"]) for body in bodies) == [
        ("SMTPPlusDoctorFail", "ptr 192.0.2.10"),
        ("SMTPPlusDoctorFail", "spf yourcompany.com"),
    ]
    spf = next(body for body in bodies if body["sender"].startswith("spf"))
    assert spf["summary"] == "doctor: spf yourcompany.com fails: softfail for 192.0.2.10"
    assert spf["shown"] == "v=spf1 ip4:192.0.2.10 ~all"


def test_alertmanager_labels_name_the_check_and_subject() -> None:
    from smtpplus_milter.config.schema import AlertmanagerSink

    alert = Alert(DOCTOR_FAIL, "", "ptr 192.0.2.10", "ptr", "", "failed", "no PTR record", None, shown="PTR relay.test")
    [payload] = Alertmanager(AlertmanagerSink(url="http://127.0.0.1:9")).payload(alert)
    assert payload["labels"] == {"alertname": "SMTPPlusDoctorFail", "check": "ptr", "subject": "192.0.2.10"}
    assert payload["annotations"]["description"] == "no PTR record; fix: PTR relay.test"  # type: ignore[index]
