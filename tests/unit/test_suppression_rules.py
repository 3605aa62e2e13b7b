"""What one outcome does to an address's suppression: hard at once, soft only when it keeps coming."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from smtpplus_milter.core.suppression import (
    HARD_BOUNCE,
    SOFT_BOUNCE,
    LiftBounces,
    Policy,
    Streak,
    Suppress,
    after_outcome,
    reply,
)

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
POLICY = Policy(hard_days=180, soft_limit=3)


@pytest.mark.parametrize(
    ("status", "failure_class", "streak", "expected"),
    [
        pytest.param("sent", None, Streak(2, T0), (Streak(), LiftBounces()), id="delivery-ends-streak"),
        pytest.param(
            "bounced", "hard", Streak(), (Streak(), Suppress(HARD_BOUNCE, T0 + timedelta(days=180))), id="hard"
        ),
        pytest.param("bounced", "blocked", Streak(1, T0), (Streak(1, T0), None), id="blocked-never"),
        pytest.param("deferred", "soft", Streak(1, T0), (Streak(1, T0), None), id="deferral-not-counted"),
        pytest.param("bounced", "soft", Streak(), (Streak(1, T0), None), id="first-soft"),
        pytest.param("expired", "soft", Streak(1, T0), (Streak(2, T0), None), id="expired-counts"),
    ],
)
def test_one_outcome(status: str, failure_class: str | None, streak: Streak, expected: object) -> None:
    assert after_outcome(status, failure_class, streak, T0, POLICY) == expected


def test_soft_failures_suppress_only_at_the_limit_and_over_three_days() -> None:
    streak = Streak()
    actions = []
    for day in (0, 1, 2, 3):
        streak, action = after_outcome("bounced", "soft", streak, T0 + timedelta(days=day), POLICY)
        actions.append(action)
    # The third in a row came after two days only; the fourth is three days after the first.
    assert actions[:3] == [None, None, None]
    assert actions[3] == Suppress(SOFT_BOUNCE, T0 + timedelta(days=3 + 180))
    assert streak == Streak(4, T0)


def test_many_soft_failures_in_one_afternoon_do_not_suppress() -> None:
    streak = Streak()
    for minute in range(50):
        streak, action = after_outcome("bounced", "soft", streak, T0 + timedelta(minutes=minute), POLICY)
        assert action is None
    assert streak.count == 50


def test_a_delivery_in_between_starts_over() -> None:
    streak, _ = after_outcome("bounced", "soft", Streak(), T0, POLICY)
    streak, _ = after_outcome("bounced", "soft", streak, T0 + timedelta(days=2), POLICY)
    streak, action = after_outcome("sent", None, streak, T0 + timedelta(days=3), POLICY)
    assert (streak, action) == (Streak(), LiftBounces())
    streak, action = after_outcome("bounced", "soft", streak, T0 + timedelta(days=4), POLICY)
    assert (streak, action) == (Streak(1, T0 + timedelta(days=4)), None)


def test_the_refusal_names_reason_and_day() -> None:
    assert (
        reply("a@example.org", HARD_BOUNCE, T0)
        == "<a@example.org>: recipient suppressed (hard_bounce since 2026-11-01)"
    )
