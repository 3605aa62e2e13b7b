"""The adapter submits alerts (TestCtx, a real dispatcher and webhook on loopback)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import Milter
import pytest

from smtpplus_milter.observe.alerts import AlertDispatcher
from smtpplus_milter.observe.metrics import Metrics
from smtpplus_milter.services.runtime import Runtime
from tests.support.builders import config_with
from tests.support.milterctx import Session
from tests.support.webhook import WebhookReceiver


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as running:
        yield running


def _holder(tmp_path: Path, receiver: WebhookReceiver, mode: str, spoofing: str = "alert") -> Runtime:
    config = config_with(
        tmp_path,
        settings={
            "authorization": {"mode": mode, "display_name_spoofing": spoofing},
            "alerts": {"webhook": {"url": receiver.url, "timeout": 2}},
        },
    )
    metrics = Metrics()
    return Runtime(config, metrics=metrics, alerts=AlertDispatcher.from_config(config.settings.alerts, metrics))


def test_alert_mode_one_alert_per_sender(tmp_path: Path, receiver: WebhookReceiver) -> None:
    holder = _holder(tmp_path, receiver, "alert")
    try:
        session = Session(holder, "Shop-Frontend")
        assert session.message("x@evil.net", [("From", "x@evil.net"), ("Sender", "y@evil.net")])[1] == Milter.CONTINUE
        bodies = receiver.wait_for(2)
        time.sleep(0.2)
        assert len(receiver.requests) == 2  # envelope and From are one address: one alert
        by_sender = {body["sender"]: body for body in bodies}
        assert by_sender["x@evil.net"]["field"] == "envelope_from,header_from"
        assert by_sender["y@evil.net"]["field"] == "header_sender"
        for body in bodies:
            assert (body["user"], body["mode"], body["action"], body["reply"]) == (
                "shop-frontend",
                "alert",
                "delivered",
                "",
            )
            assert body["queue_id"] == "4XyZ1abc"
    finally:
        assert holder.alerts is not None
        holder.alerts.stop(1)


def test_block_mode_and_disabled_user(tmp_path: Path, receiver: WebhookReceiver) -> None:
    holder = _holder(tmp_path, receiver, "block")
    try:
        assert Session(holder, "shop-frontend").message("x@evil.net", [])[1] == Milter.REJECT
        assert Session(holder, "disabled-user").message("crm@yourcompany.com", [])[1] == Milter.REJECT
        assert Session(holder, "shop-frontend").message("info@yourcompany.com", [("From", "info@yourcompany.com")])[
            1
        ] == (Milter.CONTINUE)
        assert Session(holder, "somebody-unknown").message("x@evil.net", [])[1] == Milter.REJECT
        unauthorized, disabled = receiver.wait_for(2)
        time.sleep(0.2)
        assert len(receiver.requests) == 2  # an authorized message and an unknown login alert nobody
        assert unauthorized["alertname"] == "SMTPPlusUnauthorizedSender"
        assert unauthorized["reply"] == "550 5.7.1 <x@evil.net>: sender not authorized for SMTP+ user shop-frontend"
        assert (disabled["alertname"], disabled["user"], disabled["sender"]) == (
            "SMTPPlusDisabledUserAttempt",
            "disabled-user",
            "crm@yourcompany.com",
        )
        assert "disabled" in disabled["reply"]
    finally:
        assert holder.alerts is not None
        holder.alerts.stop(1)


@pytest.mark.parametrize("spoofing", ["alert", "log"])
def test_display_name_spoofing_alert(tmp_path: Path, receiver: WebhookReceiver, spoofing: str) -> None:
    holder = _holder(tmp_path, receiver, "block", spoofing)
    try:
        session = Session(holder, "shop-frontend")
        headers = [("From", '"ceo@bank.example" <info@yourcompany.com>'), ("Sender", "ceo@bank.example")]
        assert session.message("info@yourcompany.com", headers)[1] == Milter.REJECT  # the Sender: is foreign
        session.ctx._abort = lambda: None
        headers = [("From", '"ceo@bank.example" <info@yourcompany.com>')]
        assert session.message("info@yourcompany.com", headers)[1] == Milter.CONTINUE
        expected = 2 if spoofing == "alert" else 1  # the unauthorized Sender:, and one spoofing alert (dedup)
        bodies = receiver.wait_for(expected)
        time.sleep(0.2)
        assert len(receiver.requests) == expected
        kinds = sorted(body["kind"] for body in bodies)
        if spoofing == "log":
            assert kinds == ["unauthorized_sender"]
            return
        assert kinds == ["display_name_spoofing", "unauthorized_sender"]
        [spoofed] = [body for body in bodies if body["kind"] == "display_name_spoofing"]
        assert (spoofed["alertname"], spoofed["user"], spoofed["sender"], spoofed["shown"], spoofed["action"]) == (
            "SMTPPlusDisplayNameSpoofing",
            "shop-frontend",
            "info@yourcompany.com",
            "ceo@bank.example",
            "rejected",
        )
    finally:
        assert holder.alerts is not None
        holder.alerts.stop(1)
