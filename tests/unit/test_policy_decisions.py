"""The policy daemon's decisions (core/policy.py): at RCPT the milter's refusals, the suppression
list and recipients_per_message; at END-OF-MESSAGE what to count; everything else DUNNO."""

from __future__ import annotations

from datetime import UTC, datetime
from types import MappingProxyType

import pytest

from smtpplus_milter.core.limits import Limits, Message, Verdict
from smtpplus_milter.core.policy import (
    DUNNO,
    STORE_UNAVAILABLE,
    Admission,
    Answer,
    Conversation,
    limited,
    store_failed,
)
from smtpplus_milter.core.policy_protocol import PolicyRequest
from smtpplus_milter.core.suppression import Entry
from tests.support.builders import rules, shop_directory

LIMITS = Limits(messages_per_hour=10, recipients_per_message=3)
SUPPRESSED = MappingProxyType(
    {"gone@example.org": (Entry("global", "hard_bounce", datetime(2026, 11, 1, tzinfo=UTC)),)}
)


def limits_for(_login: str) -> Limits:
    return LIMITS


def request(
    state: str, *, login: str = "shop-frontend", sender: str = "orders@yourcompany.com", **more: str
) -> PolicyRequest:
    attributes = {
        "request": "smtpd_access_policy",
        "protocol_state": state,
        "sasl_username": login,
        "sender": sender,
        "instance": more.pop("instance", "a1.b2.c3"),
        **more,
    }
    return PolicyRequest(MappingProxyType(attributes))


RULES = rules()


def rcpt(conversation: Conversation, rcpt_to: str = "x@example.org", **kw: str) -> Answer:
    return conversation.recipient(
        RULES, request("RCPT", recipient=rcpt_to, **kw), limits_for, SUPPRESSED, drop_suppressed=False
    )


@pytest.mark.parametrize(
    ("login", "sender", "reply_start", "result"),
    [
        pytest.param("shop-frontend", "orders@yourcompany.com", DUNNO, "accepted", id="authorized"),
        pytest.param("shop-frontend", "ceo@bank.example", "550 5.7.1", "refused", id="unauthorized-sender"),
        pytest.param("disabled-user", "a@yourcompany.com", "550 5.7.1", "refused", id="disabled-user"),
        pytest.param("stranger", "a@yourcompany.com", "550 5.7.1", "refused", id="unknown-user"),
        pytest.param("", "a@yourcompany.com", DUNNO, "dunno", id="no-login"),
    ],
)
def test_rcpt_judges_the_session_like_the_milter(login: str, sender: str, reply_start: str, result: str) -> None:
    answer = rcpt(Conversation(), login=login, sender=sender)
    assert answer.action.startswith(reply_start)
    assert (answer.stage, answer.result) == ("rcpt", result)


def test_the_refusal_is_the_milters_own_reply_and_reported_once_per_message() -> None:
    conversation = Conversation()
    first = rcpt(conversation, sender="ceo@bank.example")
    second = rcpt(conversation, "y@example.org", sender="ceo@bank.example")
    assert first.action == second.action
    assert "not authorized" in first.action or "ceo@bank.example" in first.action
    assert first.outcome is not None and first.outcome.decision.rejected
    assert second.outcome is None  # the reporter counts the message once


def test_recipients_past_the_limit_get_452_per_message() -> None:
    conversation = Conversation()
    answers = [rcpt(conversation, f"r{n}@example.org").action for n in range(5)]
    assert answers == [DUNNO, DUNNO, DUNNO, "452 4.5.3 Too many recipients", "452 4.5.3 Too many recipients"]
    # The next message on the same connection (another instance) starts again at zero.
    assert rcpt(conversation, "r@example.org", instance="next").action == DUNNO


def test_a_suppressed_recipient_is_refused_and_not_counted() -> None:
    conversation = Conversation()
    answer = rcpt(conversation, "Gone@Example.org")
    assert answer.action.startswith("550 5.7.1") and answer.result == "suppressed"
    assert answer.suppressed is not None and answer.suppressed.reason == "hard_bounce"
    assert [rcpt(conversation, f"r{n}@example.org").action for n in range(3)] == [DUNNO] * 3


def test_suppression_action_drop_leaves_the_recipient_to_the_milter() -> None:
    answer = Conversation().recipient(
        rules(), request("RCPT", recipient="gone@example.org"), limits_for, SUPPRESSED, drop_suppressed=True
    )
    assert answer.action == DUNNO


def test_end_of_message_asks_to_count_the_final_size_and_recipients() -> None:
    conversation = Conversation()
    rcpt(conversation)
    result = conversation.end_of_message(
        rules(), request("END-OF-MESSAGE", queue_id="4jdfvM0wYyzJVF1", size="2048", recipient_count="2"), limits_for
    )
    assert result == Admission("shop-frontend", "shop-frontend", LIMITS, Message(2, 2048), "4jdfvM0wYyzJVF1")


def test_end_of_message_without_an_earlier_rcpt_still_judges() -> None:
    # A new connection (Postfix reconnected) sees END-OF-MESSAGE first.
    result = Conversation().end_of_message(
        rules(),
        request("END-OF-MESSAGE", login="SHOP-FRONTEND", queue_id="Q", size="1", recipient_count="1"),
        limits_for,
    )
    assert isinstance(result, Admission) and result.key == "shop-frontend"


@pytest.mark.parametrize(
    ("login", "sender"),
    [
        pytest.param("", "a@yourcompany.com", id="no-login"),
        pytest.param("stranger", "a@yourcompany.com", id="unknown-user-passed"),
    ],
)
def test_end_of_message_counts_only_smtp_plus_users(login: str, sender: str) -> None:
    relaxed = rules(shop_directory(unknown_user="pass"))
    result = Conversation().end_of_message(
        relaxed, request("END-OF-MESSAGE", login=login, sender=sender, queue_id="Q"), limits_for
    )
    assert result == Answer(DUNNO, "end_of_message", "dunno")


def test_a_refused_session_is_never_counted() -> None:
    result = Conversation().end_of_message(
        rules(), request("END-OF-MESSAGE", sender="ceo@bank.example", queue_id="Q"), limits_for
    )
    assert isinstance(result, Answer) and result.action.startswith("550 5.7.1")


ADMISSION = Admission("shop-frontend", "shop-frontend", LIMITS, Message(1, 10), "Q")


def test_the_limit_reply_names_limit_user_and_wait() -> None:
    answer = limited(ADMISSION, Verdict("messages_per_hour", 360))
    assert (
        answer.action
        == "450 4.7.1 sending limit messages_per_hour reached for SMTP+ user shop-frontend, retry after 360 s"
    )
    assert (answer.result, answer.limit) == ("limited", "messages_per_hour")
    assert limited(ADMISSION, Verdict()).action == DUNNO


@pytest.mark.parametrize(
    ("setting", "action"),
    [pytest.param("tempfail", STORE_UNAVAILABLE, id="tempfail"), pytest.param("allow", DUNNO, id="allow")],
)
def test_store_errors_follow_on_store_error(setting: str, action: str) -> None:
    answer = store_failed(ADMISSION, setting)
    assert (answer.action, answer.result) == (action, "store_error")
    assert not action.startswith("5")  # an outage never refuses for good


def test_judgements_remember_what_goes_on_and_never_a_refusal() -> None:
    from smtpplus_milter.core.policy import Judgements

    judgements, current = Judgements(size=3), RULES
    first = Conversation(judgements)
    assert rcpt(first).result == "accepted"
    known, user = judgements.get(current, "shop-frontend", "orders@yourcompany.com")
    assert known and user is not None and user.login == "shop-frontend"
    refused = rcpt(first, sender="ceo@bank.example", instance="two")
    assert refused.result == "refused" and refused.outcome is not None
    assert judgements.get(current, "shop-frontend", "ceo@bank.example") == (False, None)
    # Judged again on another connection: a refusal is reported again, for that message.
    assert rcpt(Conversation(judgements), sender="ceo@bank.example").outcome is not None
    # Another set of rules (a reload) starts empty.
    assert judgements.get(rules(), "shop-frontend", "orders@yourcompany.com") == (False, None)


def test_judgements_are_bounded_and_remember_sessions_that_are_not_ours() -> None:
    from smtpplus_milter.core.policy import Judgements

    judgements, current = Judgements(size=2), rules(shop_directory(unknown_user="pass"))
    conversation = Conversation(judgements)
    answer = conversation.recipient(
        current, request("RCPT", login="stranger", recipient="x@example.org"), limits_for, None, drop_suppressed=False
    )
    assert answer.result == "dunno"
    assert judgements.get(current, "stranger", "orders@yourcompany.com") == (True, None)
    for n in range(3):
        judgements.remember(current, f"u{n}", "s", None)
    assert judgements.get(current, "stranger", "orders@yourcompany.com") == (False, None)  # forgotten
