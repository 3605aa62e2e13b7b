"""The adapter submits alerts (TestCtx, a real dispatcher and webhook on loopback)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import Milter
import pytest

from smtpplus_milter.alerts import AlertDispatcher
from smtpplus_milter.milter import ConfigHolder
from tests.helpers import config_with
from tests.milter.test_milter import Session
from tests.webhook import WebhookReceiver


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as running:
        yield running


def _holder(tmp_path: Path, receiver: WebhookReceiver, mode: str) -> ConfigHolder:
    config = config_with(
        tmp_path,
        settings={"authorization": {"mode": mode}, "alerts": {"webhook": {"url": receiver.url, "timeout": 2}}},
    )
    return ConfigHolder(config, AlertDispatcher.from_config(config.settings))


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
