"""The message core (core/session.py) driven step by step with values: no milter, no files."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import UTC, datetime
from types import MappingProxyType

import pytest

from smtpplus_milter.core.decision import Verdict
from smtpplus_milter.core.session import (
    ALL_USERS,
    DISABLED_USER,
    DISPLAY_NAME_SPOOFING,
    INTERNAL_ERROR_REPLY,
    MACROS_MISSING_REPLY,
    UNAUTHENTICATED,
    UNAUTHORIZED_SENDER,
    UNKNOWN,
    Action,
    EndOfMessage,
    MessageSession,
    ReturnPath,
    Rules,
    size_reply,
)
from smtpplus_milter.core.suppression import Entry
from smtpplus_milter.core.tokens import read_bounce_token
from smtpplus_milter.mime.footer import Banner
from tests.support import builders

SHOP = builders.user("shop", domains=["shop.example"], list="news")
OFF = builders.user("off", active=False, domains=["shop.example"])


def rules(mode: str = "block", **changes: object) -> Rules:
    base = builders.rules(
        builders.directory(SHOP, OFF, mode=mode),
        max_message_bytes=10_000,
        banners={"news": Banner(footer_text="Unsubscribe")},
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def run(session: MessageSession, login: str | None, sender: str, headers: list[tuple[str, str]], body: bytes = b""):
    """Drive a whole message the way the milter does; return the last step's action."""
    step = session.mail_from(login, f"<{sender}>", queue_id="Q1")
    if step.action is not Action.CONTINUE:
        return step.action
    for name, value in headers:
        session.header(name, value)
    step = session.end_of_headers()
    if step.action is not Action.CONTINUE:
        return step.action
    session.body(len(body))
    end = session.end_of_message()
    if end.step.refused:
        return end.step.action
    if end.banner is not None:
        session.add_banner(io.BytesIO(body))
    session.accept()
    return Action.CONTINUE


def test_authorized_message_plan_and_outcome() -> None:
    session = MessageSession(rules())
    assert run(session, "shop", "info@shop.example", [("From", "info@shop.example"), ("X-Priority", "1")]) == (
        Action.CONTINUE
    )
    outcome = session.outcome()
    assert outcome is not None
    assert outcome.verdict is Verdict.ACCEPT and outcome.stage == "end_of_message"
    assert outcome.priority is not None and (outcome.priority.effective, outcome.priority.queue) == (1, "high")
    assert outcome.user_label == "shop" and outcome.notices == ()
    assert outcome.footer is not None and outcome.footer.status == "added"
    fields = outcome.log_fields(0.0123)
    assert fields["decision"] == "accepted" and fields["queue"] == "high" and fields["ms"] == 12.3
    assert fields["footer"] == {"result": "added", "reason": outcome.footer.reason}


def test_unauthorized_envelope_is_refused_at_mail_from_with_a_notice() -> None:
    session = MessageSession(rules())
    assert run(session, "shop", "ceo@bank.example", []) is Action.REJECT
    outcome = session.outcome()
    assert outcome is not None and outcome.stage == "mail_from" and outcome.decision.reply is not None
    assert outcome.decision.reply.code == "550"
    [notice] = outcome.notices
    assert (notice.kind, notice.sender, notice.field, notice.action) == (
        UNAUTHORIZED_SENDER,
        "ceo@bank.example",
        "envelope_from",
        "rejected",
    )


def test_alert_mode_delivers_and_merges_fields_of_one_address() -> None:
    session = MessageSession(rules("alert"))
    assert run(session, "shop", "x@evil.example", [("From", "x@evil.example")]) is Action.CONTINUE
    outcome = session.outcome()
    assert outcome is not None and outcome.verdict is Verdict.ACCEPT
    [notice] = outcome.notices
    assert (notice.field, notice.action, notice.reply) == ("envelope_from,header_from", "delivered", "")


def test_size_refused_at_mail_from_and_at_end_of_message() -> None:
    announced = MessageSession(rules())
    step = announced.mail_from("shop", "<info@shop.example>", ("SIZE=20000",))
    assert (step.action, step.reply) == (Action.REJECT, size_reply(10_000))
    received = MessageSession(rules())
    assert run(received, "shop", "info@shop.example", [("From", "info@shop.example")], b"x" * 20_000) is Action.REJECT
    outcome = received.outcome()
    assert outcome is not None and outcome.stage == "end_of_message"
    assert not received.wants_body  # over the limit: the adapter stops keeping the body


@pytest.mark.parametrize(
    ("login", "label", "action"),
    [
        pytest.param(None, UNAUTHENTICATED, Action.ACCEPT, id="unauthenticated-bypass"),
        pytest.param("stranger", UNKNOWN, Action.REJECT, id="unknown-user"),
        pytest.param("off", "off", Action.REJECT, id="disabled-user"),
    ],
)
def test_metric_label_rules(login: str | None, label: str, action: Action) -> None:
    session = MessageSession(rules())
    assert run(session, login, "info@shop.example", []) is action
    outcome = session.outcome()
    assert outcome is not None and outcome.user_label == label
    kinds = [notice.kind for notice in outcome.notices]
    assert kinds == ([DISABLED_USER] if login == "off" else [])


def test_per_user_labels_off_gives_one_label() -> None:
    session = MessageSession(rules(per_user_labels=False))
    run(session, "shop", "info@shop.example", [])
    outcome = session.outcome()
    assert outcome is not None and outcome.user_label == ALL_USERS


def test_no_macros_means_no_verdict_on_missing_login() -> None:
    session = MessageSession(rules(), macros_requested=False)
    step = session.mail_from(None, "<a@b.example>")
    assert (step.action, step.reply) == (Action.TEMPFAIL, MACROS_MISSING_REPLY)


@pytest.mark.parametrize("setting", ["alert", "log", "off"])
def test_display_name_spoofing_setting(setting: str) -> None:
    session = MessageSession(rules(display_name_spoofing=setting))
    run(session, "shop", "info@shop.example", [("From", '"ceo@bank.example" <info@shop.example>')])
    outcome = session.outcome()
    assert outcome is not None and outcome.verdict is Verdict.ACCEPT
    assert bool(outcome.spoofing) == (setting != "off")
    assert [n.kind for n in outcome.notices] == ([DISPLAY_NAME_SPOOFING] if setting == "alert" else [])


@pytest.mark.parametrize("policy", ["tempfail", "accept"])
def test_failure_before_a_decision_follows_on_internal_error(policy: str) -> None:
    session = MessageSession(rules(on_internal_error=policy))
    session.mail_from("shop", "<info@shop.example>")
    step = session.fail("RuntimeError('bug')")
    outcome = session.outcome()
    assert outcome is not None
    if policy == "tempfail":
        assert (step.action, step.reply) == (Action.TEMPFAIL, INTERNAL_ERROR_REPLY)
        assert outcome.verdict is Verdict.TEMPFAIL and "internal error: RuntimeError('bug')" in outcome.decision.reasons
    else:
        assert step.action is Action.ACCEPT and outcome.verdict is Verdict.ACCEPT


def test_failure_after_a_refusal_keeps_the_refusal() -> None:
    session = MessageSession(rules(on_internal_error="accept"))
    refused = session.mail_from("shop", "<ceo@bank.example>")
    assert refused.action is Action.REJECT
    assert session.fail("RuntimeError('late')") == refused


def test_outcome_is_decided_once() -> None:
    session = MessageSession(rules())
    run(session, "shop", "info@shop.example", [("From", "info@shop.example")])
    first = session.outcome()
    session.accept()
    session.fail("again")
    assert session.outcome() is first


# -- the suppression list at RCPT (issue 14) -----------------------------------------------------

SINCE = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
SUPPRESSIONS = MappingProxyType(
    {
        "gone@example.net": (Entry("user:shop", "hard_bounce", SINCE),),
        "nolist@example.net": (Entry("list:news", "unsubscribe", SINCE),),
        "other@example.net": (Entry("user:someone-else", "complaint", SINCE),),
    }
)


def _to_headers(session: MessageSession) -> EndOfMessage:
    session.header("From", "info@shop.example")
    assert session.end_of_headers().action is Action.CONTINUE
    return session.end_of_message()


def test_a_suppressed_recipient_is_refused_and_the_others_go_on() -> None:
    session = MessageSession(rules())
    assert session.mail_from("shop", "<info@shop.example>", queue_id="Q1").action is Action.CONTINUE
    refused = session.recipient("<Gone@Example.net>", SUPPRESSIONS)
    assert refused.action is Action.REJECT and refused.reply is not None
    assert str(refused.reply) == "550 5.7.1 <Gone@Example.net>: recipient suppressed (hard_bounce since 2026-11-01)"
    assert str(session.recipient("<nolist@example.net>", SUPPRESSIONS).reply).endswith("(unsubscribe since 2026-11-01)")
    assert session.recipient("<other@example.net>", SUPPRESSIONS).action is Action.CONTINUE  # another user's entry
    assert session.recipient("<fine@example.net>", SUPPRESSIONS).action is Action.CONTINUE
    end = _to_headers(session)
    assert end.step.action is Action.CONTINUE and end.drop == ()
    session.accept()
    outcome = session.outcome()
    assert outcome is not None
    record = outcome.record("relay-1", SINCE)
    assert record is not None
    assert record.recipients == ("other@example.net", "fine@example.net")
    assert record.suppressed == ("Gone@Example.net", "nolist@example.net")
    logged = outcome.log_fields(0.0)["suppressed"]
    assert logged == [
        {"recipient": "Gone@Example.net", "scope": "user:shop", "reason": "hard_bounce", "dropped": False},
        {"recipient": "nolist@example.net", "scope": "list:news", "reason": "unsubscribe", "dropped": False},
    ]


def test_drop_accepts_and_removes_and_all_dropped_is_discarded() -> None:
    session = MessageSession(rules())
    session.mail_from("shop", "<info@shop.example>", queue_id="Q1")
    assert session.recipient("<gone@example.net>", SUPPRESSIONS, drop=True).action is Action.CONTINUE
    assert session.recipient("<fine@example.net>", SUPPRESSIONS, drop=True).action is Action.CONTINUE
    end = _to_headers(session)
    assert end.step.action is Action.CONTINUE and end.drop == ("<gone@example.net>",)

    alone = MessageSession(rules())
    alone.mail_from("shop", "<info@shop.example>", queue_id="Q2")
    alone.recipient("<gone@example.net>", SUPPRESSIONS, drop=True)
    end = _to_headers(alone)
    assert end.step.action is Action.DISCARD and end.drop == ("<gone@example.net>",)


def test_unauthenticated_mail_is_never_checked() -> None:
    session = MessageSession(rules())
    session.mail_from(None, "<a@elsewhere.example>", queue_id="Q1")
    assert session.recipient("<gone@example.net>", SUPPRESSIONS).action is Action.CONTINUE


def test_a_return_path_gives_the_message_its_signed_envelope_sender() -> None:
    key = bytes(range(32))
    session = MessageSession(rules(return_path=ReturnPath("bounce.relay.example", "relay-1", key)))
    session.mail_from("shop", "<info@shop.example>", queue_id="4jdfvM0wYyzJVF1")
    session.recipient("<fine@example.net>")
    end = _to_headers(session)
    assert end.sender is not None and end.sender.endswith("@bounce.relay.example")
    token = read_bounce_token(end.sender.removeprefix("b+").split("@")[0], key)
    assert token is not None and token.queue_id == "4jdfvM0wYyzJVF1" and token.is_from("relay-1")
    plain = MessageSession(rules())
    plain.mail_from("shop", "<info@shop.example>", queue_id="Q2")
    assert _to_headers(plain).sender is None
