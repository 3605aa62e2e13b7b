"""core.limits: the sending-limit decision and the counting, on exact values (no clocks)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from smtpplus_milter.core.limits import (
    ALLOWED,
    TOO_MANY_RECIPIENTS,
    Limits,
    Message,
    Usage,
    Verdict,
    admit,
    check,
    check_recipient,
    count,
    day_of,
    micros,
)

# Small numbers so every edge is visible: one message every 1,200 s, burst 3.
SMALL = Limits(messages_per_hour=3, recipients_per_message=5, recipients_per_day=10, bytes_per_day=1000)
MIDNIGHT = 1714521600.0  # 2024-05-01 00:00:00 UTC
DAY = 19844  # its UTC day number
NOW = MIDNIGHT + 12 * 3600  # noon: 43,200 s to the next midnight
NOW_US = int(NOW) * 1_000_000
S = 1_000_000  # one second in microseconds
ONE = Message(recipients=1, bytes=100)


def test_the_clock_constants_are_what_they_say() -> None:
    assert datetime.fromtimestamp(MIDNIGHT, UTC) == datetime(2024, 5, 1, tzinfo=UTC)
    assert day_of(micros(MIDNIGHT)) == DAY
    assert day_of(micros(MIDNIGHT) - 1) == DAY - 1


@pytest.mark.parametrize(
    ("usage", "message", "now", "expected"),
    [
        pytest.param(Usage(), ONE, NOW, ALLOWED, id="never-sent"),
        # GCRA: two sent just now leave the TAT two intervals ahead; the third of the burst fits.
        pytest.param(Usage(tat_us=NOW_US + 2 * 1200 * S), ONE, NOW, ALLOWED, id="burst-third-fits"),
        pytest.param(
            Usage(tat_us=NOW_US + 3 * 1200 * S), ONE, NOW, Verdict("messages_per_hour", 1200), id="burst-fourth-waits"
        ),
        pytest.param(
            Usage(tat_us=NOW_US + 3 * 1200 * S),
            ONE,
            NOW + 0.25,
            Verdict("messages_per_hour", 1200),
            id="retry-rounds-up-1199.75",
        ),
        pytest.param(
            Usage(tat_us=NOW_US + 3 * 1200 * S),
            ONE,
            NOW + 1199.5,
            Verdict("messages_per_hour", 1),
            id="retry-half-second-is-1",
        ),
        pytest.param(Usage(tat_us=NOW_US + 3 * 1200 * S), ONE, NOW + 1200, ALLOWED, id="one-interval-later-fits"),
        pytest.param(Usage(), Message(5, 100), NOW, ALLOWED, id="recipients-per-message-exactly"),
        pytest.param(
            Usage(),
            Message(6, 100),
            NOW,
            Verdict("recipients_per_message", 0, permanent=True),
            id="recipients-per-message-one-over",
        ),
        pytest.param(Usage(day=DAY, recipients=7), Message(3, 1), NOW, ALLOWED, id="recipients-per-day-exactly"),
        pytest.param(
            Usage(day=DAY, recipients=7),
            Message(4, 1),
            NOW,
            Verdict("recipients_per_day", 43200),
            id="recipients-per-day-one-over-waits-for-midnight",
        ),
        pytest.param(Usage(day=DAY, bytes=900), Message(1, 100), NOW, ALLOWED, id="bytes-per-day-exactly"),
        pytest.param(
            Usage(day=DAY, bytes=900),
            Message(1, 101),
            NOW,
            Verdict("bytes_per_day", 43200),
            id="bytes-per-day-one-over",
        ),
        pytest.param(
            Usage(day=DAY - 1, recipients=10, bytes=1000),
            Message(5, 1000),
            NOW,
            ALLOWED,
            id="yesterday-counts-nothing",
        ),
        pytest.param(
            Usage(day=DAY, recipients=10),
            ONE,
            MIDNIGHT + 86400 - 0.4,
            Verdict("recipients_per_day", 1),
            id="last-moment-of-the-day-retry-1",
        ),
        pytest.param(Usage(day=DAY, recipients=10), ONE, MIDNIGHT + 86400, ALLOWED, id="midnight-utc-resets"),
        pytest.param(
            Usage(), Message(1, 1001), NOW, Verdict("bytes_per_day", 43200, permanent=True), id="bigger-than-a-day"
        ),
        pytest.param(
            Usage(tat_us=NOW_US + 3 * 1200 * S, day=DAY, recipients=10),
            ONE,
            NOW,
            Verdict("recipients_per_day", 43200),
            id="two-limits-the-longer-wait-is-named",
        ),
        pytest.param(
            Usage(tat_us=int(MIDNIGHT + 86400 - 100) * S + 3 * 1200 * S, day=DAY, recipients=10),
            ONE,
            MIDNIGHT + 86400 - 100,
            Verdict("messages_per_hour", 1200),
            id="two-limits-rate-waits-longer-near-midnight",
        ),
    ],
)
def test_check(usage: Usage, message: Message, now: float, expected: Verdict) -> None:
    assert check(SMALL, usage, message, now) == expected


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        pytest.param(Limits(messages_per_hour=0), Verdict("messages_per_hour", 3600, permanent=True), id="rate-0"),
        pytest.param(Limits(recipients_per_day=0), Verdict("recipients_per_day", 43200, permanent=True), id="day-0"),
        pytest.param(Limits(bytes_per_day=0), Verdict("bytes_per_day", 43200, permanent=True), id="bytes-0"),
        pytest.param(
            Limits(recipients_per_message=0), Verdict("recipients_per_message", 0, permanent=True), id="per-message-0"
        ),
    ],
)
def test_zero_allows_none(limits: Limits, expected: Verdict) -> None:
    assert check(limits, Usage(), ONE, NOW) == expected


@pytest.mark.parametrize(
    ("usage", "message", "now", "expected"),
    [
        pytest.param(Usage(), Message(2, 300), NOW, Usage(NOW_US + 1200 * S, DAY, 2, 300), id="first"),
        pytest.param(
            Usage(NOW_US + 1200 * S, DAY, 2, 300),
            Message(3, 50),
            NOW,
            Usage(NOW_US + 2400 * S, DAY, 5, 350),
            id="tat-ahead-adds-one-interval",
        ),
        pytest.param(
            Usage(NOW_US - 5000 * S, DAY, 2, 300),
            ONE,
            NOW,
            Usage(NOW_US + 1200 * S, DAY, 3, 400),
            id="tat-in-the-past-starts-from-now",
        ),
        pytest.param(
            Usage(NOW_US, DAY - 1, 9, 999), ONE, NOW, Usage(NOW_US + 1200 * S, DAY, 1, 100), id="new-day-starts-at-0"
        ),
    ],
)
def test_count(usage: Usage, message: Message, now: float, expected: Usage) -> None:
    assert count(SMALL, usage, message, now) == expected


@pytest.mark.parametrize(
    ("per_hour", "interval_us"),
    [
        pytest.param(3, 1200 * S, id="divides"),
        pytest.param(7, 514_285_715, id="rounds-up"),
        pytest.param(3600, 1 * S, id="one-a-second"),
    ],
)
def test_burst_then_one_per_interval(per_hour: int, interval_us: int) -> None:
    limits = Limits(messages_per_hour=per_hour, recipients_per_day=10**9, bytes_per_day=10**12)
    assert limits.interval_us == interval_us
    usage = Usage()
    answers = []
    for _ in range(per_hour + 1):  # an idle user sends limit + 1 at once
        verdict, usage = admit(limits, usage, ONE, NOW)
        answers.append(verdict.allowed)
    assert answers == [True] * per_hour + [False]
    assert verdict == Verdict("messages_per_hour", -(-interval_us // S))
    # Then exactly one per interval: not a microsecond before.
    early = NOW + (interval_us - 1) / S
    assert not admit(limits, usage, ONE, early)[0].allowed
    verdict, usage = admit(limits, usage, ONE, NOW + interval_us / S)
    assert verdict.allowed
    assert not admit(limits, usage, ONE, NOW + interval_us / S)[0].allowed


def test_a_refusal_counts_nothing() -> None:
    usage = Usage(NOW_US + 3 * 1200 * S, DAY, 4, 400)
    assert admit(SMALL, usage, ONE, NOW) == (Verdict("messages_per_hour", 1200), usage)


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        pytest.param(5, ALLOWED, id="fifth-of-5"),
        pytest.param(6, Verdict("recipients_per_message", 0, permanent=True), id="sixth-of-5"),
    ],
)
def test_check_recipient(number: int, expected: Verdict) -> None:
    assert check_recipient(SMALL, number) == expected


@pytest.mark.parametrize(
    ("verdict", "reply"),
    [
        pytest.param(
            Verdict("messages_per_hour", 1200),
            "450 4.7.1 sending limit messages_per_hour reached for SMTP+ user app, retry after 1200 s",
            id="rate",
        ),
        pytest.param(
            Verdict("bytes_per_day", 43200, permanent=True),
            "450 4.7.1 sending limit bytes_per_day reached for SMTP+ user app, retry after 43200 s",
            id="day",
        ),
        pytest.param(Verdict("recipients_per_message", 0, permanent=True), TOO_MANY_RECIPIENTS, id="per-message"),
    ],
)
def test_reply(verdict: Verdict, reply: str) -> None:
    assert verdict.reply("app") == reply


def test_an_allowed_message_has_no_reply() -> None:
    with pytest.raises(ValueError, match="no refusal reply"):
        ALLOWED.reply("app")


@pytest.mark.parametrize(
    "field",
    [
        pytest.param({"messages_per_hour": -1}, id="negative"),
        pytest.param({"bytes_per_day": True}, id="bool"),
        pytest.param({"recipients_per_day": 1.5}, id="float"),
    ],
)
def test_limits_refuse_what_is_not_a_count(field: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="whole number, 0 or more"):
        Limits(**field)  # type: ignore[arg-type]
