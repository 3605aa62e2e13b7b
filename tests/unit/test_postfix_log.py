"""Golden tests for reading Postfix's log: the line splitter as a codec, and the line parser."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from smtpplus_milter.core.lines import Line, LineSplitter
from smtpplus_milter.core.postfix_log import (
    Active,
    Delivery,
    Expired,
    Link,
    Removed,
    parse_line,
    peek_queue_id,
)

NOW = datetime(2026, 12, 1, 4, 0, 0, tzinfo=UTC)

# ---------------------------------------------------------------------------------------------
# The splitter

GOLDEN = (
    b"Dec 01 03:39:12 relay postfix/smtp[1]: BA51F2120D5: to=<a@example.org>, status=sent (ok)\n"
    b"\n"
    b"caf\xc3\xa9 and a bad byte \xff here\r\n" + b"x" * 300 + b"\n"
    b"short\n"
    b"partial without newline"
)
GOLDEN_LINES = (
    Line("Dec 01 03:39:12 relay postfix/smtp[1]: BA51F2120D5: to=<a@example.org>, status=sent (ok)", 89),
    Line("", 90),
    Line("café and a bad byte \ufffd here", 119),
    Line("x" * 200, 420, truncated=True),
    Line("short", 426),
)


@pytest.mark.parametrize("size", [4096, 128, 16, 1])
def test_splitter_gives_the_same_lines_and_offsets_at_any_chunk_size(size: int) -> None:
    splitter = LineSplitter(max_line=200)
    got: list[Line] = []
    for i in range(0, len(GOLDEN), size):
        got.extend(splitter.feed(GOLDEN[i : i + size]))
    assert tuple(got) == GOLDEN_LINES
    assert splitter.offset == 426
    assert splitter.pending == len(b"partial without newline")
    assert splitter.feed(b"\n") == [Line("partial without newline", len(GOLDEN) + 1)]


def test_splitter_offsets_start_at_the_saved_position() -> None:
    splitter = LineSplitter(start=1000)
    assert splitter.feed(b"a\nbc\n") == [Line("a", 1002), Line("bc", 1005)]
    assert splitter.offset == 1005


def test_splitter_never_holds_more_than_the_bound_of_an_endless_line() -> None:
    splitter = LineSplitter(max_line=1024)
    for _ in range(1000):
        assert splitter.feed(b"y" * 4096) == []
    assert len(splitter._buf) == 1024
    assert splitter.pending == 4096 * 1000
    (line,) = splitter.feed(b"\n")
    assert line == Line("y" * 1024, 4096 * 1000 + 1, truncated=True)


def test_splitter_refuses_a_useless_bound() -> None:
    with pytest.raises(ValueError, match="max_line"):
        LineSplitter(max_line=0)


# ---------------------------------------------------------------------------------------------
# The parser


def at(month: int, day: int, h: int, m: int, s: int, year: int = 2026) -> datetime:
    return datetime(year, month, day, h, m, s, tzinfo=UTC)


DELIVERY_CASES = [
    pytest.param(
        "Dec 01 03:39:12 relay postfix/smtp[22411]: BA51F2120D5: to=<someone@example.org>,"
        " relay=127.0.0.1[127.0.0.1]:56689, delay=0.03, delays=0.01/0.01/0/0, dsn=2.0.0,"
        " status=sent (250 2.0.0 Ok: stored by the smtpplus lab sink)",
        Delivery(
            at(12, 1, 3, 39, 12),
            "BA51F2120D5",
            "someone@example.org",
            None,
            "sent",
            "2.0.0",
            "127.0.0.1[127.0.0.1]:56689",
            0.03,
            "250 2.0.0 Ok: stored by the smtpplus lab sink",
            "smtp",
            "postfix/smtp",
            "0.01/0.01/0/0",
        ),
        id="postlogd-3.7-sent",
    ),
    pytest.param(
        "Nov 30 23:59:59 mx postfix/relay/smtp[7]: 4jdfvM0wYyzJVF1: to=<bob@example.net>,"
        " orig_to=<bob-alias@example.com>, relay=mx.example.net[192.0.2.7]:25, conn_use=2,"
        " delay=3842, delays=3840/0.01/0.5/1.4, dsn=4.7.1, status=deferred (host"
        " mx.example.net[192.0.2.7] said: 451 4.7.1 Greylisted, try again (in reply to RCPT TO command))",
        Delivery(
            at(11, 30, 23, 59, 59),
            "4jdfvM0wYyzJVF1",
            "bob@example.net",
            "bob-alias@example.com",
            "deferred",
            "4.7.1",
            "mx.example.net[192.0.2.7]:25",
            3842.0,
            "host mx.example.net[192.0.2.7] said: 451 4.7.1 Greylisted, try again (in reply to RCPT TO command)",
            "smtp",
            "postfix/relay/smtp",
            "3840/0.01/0.5/1.4",
        ),
        id="long-queue-id-relay-transport-orig_to-conn_use-deferred",
    ),
    pytest.param(
        "2026-12-01T02:35:20.123456+00:00 out1 postfix-out/smtp[99]: 3F98E2123D2:"
        ' to=<"smith, j"@example.org>, relay=mx.example.org[203.0.113.5]:25, delay=1.2,'
        " delays=0.1/0/0.3/0.8, tls=starttls/(!sni), dsn=5.1.1, status=bounced (host"
        ' mx.example.org[203.0.113.5] said: 550 5.1.1 <"smith, j"@example.org>: unknown, sorry'
        " (in reply to RCPT TO command))",
        Delivery(
            datetime(2026, 12, 1, 2, 35, 20, 123456, tzinfo=UTC),
            "3F98E2123D2",
            '"smith, j"@example.org',
            None,
            "bounced",
            "5.1.1",
            "mx.example.org[203.0.113.5]:25",
            1.2,
            'host mx.example.org[203.0.113.5] said: 550 5.1.1 <"smith, j"@example.org>: unknown, sorry'
            " (in reply to RCPT TO command)",
            "smtp",
            "postfix-out/smtp",
            "0.1/0/0.3/0.8",
            "starttls/(!sni)",
        ),
        id="rfc3339-multi-instance-tls-field-comma-inside-angle-brackets-bounced",
    ),
    pytest.param(
        "Dec  1 03:00:00 mx postfix/smtpplus-high/smtp[5]: D834B2120D5: to=<m@example.de>,"
        " relay=mx.example.de[198.51.100.1]:25, delay=0.5, delays=0/0/0.2/0.3, dsn=5.7.1,"
        " status=bounced (host mx.example.de[198.51.100.1] said: 550 5.7.1 Empfänger unzulässig)",
        Delivery(
            at(12, 1, 3, 0, 0),
            "D834B2120D5",
            "m@example.de",
            None,
            "bounced",
            "5.7.1",
            "mx.example.de[198.51.100.1]:25",
            0.5,
            "host mx.example.de[198.51.100.1] said: 550 5.7.1 Empfänger unzulässig",
            "smtp",
            "postfix/smtpplus-high/smtp",
            "0/0/0.2/0.3",
        ),
        id="syslog-space-padded-day-our-transport-8bit-reply",
    ),
    pytest.param(
        "Dec  1 03:00:00 mx postfix/error[5]: D834B2120D5: to=<x@example.com>, relay=none,"
        " delay=432000, delays=431990/0/0/10, dsn=4.4.1, status=expired, returned to sender",
        Delivery(
            at(12, 1, 3, 0, 0),
            "D834B2120D5",
            "x@example.com",
            None,
            "expired",
            "4.4.1",
            "none",
            432000.0,
            "returned to sender",
            "error",
            "postfix/error",
            "431990/0/0/10",
        ),
        id="expired-on-a-recipient-line",
    ),
    pytest.param(
        "Dec 01 03:00:00 mx postfix/lmtp[5]: D834B2120D5: to=<u@example.com>, relay=mail[private/dovecot-lmtp],"
        " delay=0.1, delays=0/0/0/0.1, dsn=2.0.0, status=sent (250 2.0.0 <u@example.com> Saved)",
        Delivery(
            at(12, 1, 3, 0, 0),
            "D834B2120D5",
            "u@example.com",
            None,
            "sent",
            "2.0.0",
            "mail[private/dovecot-lmtp]",
            0.1,
            "250 2.0.0 <u@example.com> Saved",
            "lmtp",
            "postfix/lmtp",
            "0/0/0/0.1",
        ),
        id="lmtp",
    ),
    pytest.param(
        "Dec 01 03:00:00 mx postfix/qmgr[5]: D834B2120D5: to=<u@example.com>, relay=none, delay=9,"
        " delays=9/0/0/0, dsn=4.3.0, status=deferred (delivery temporarily suspended: connect to"
        " mx[192.0.2.1]:25: Connection refused)",
        Delivery(
            at(12, 1, 3, 0, 0),
            "D834B2120D5",
            "u@example.com",
            None,
            "deferred",
            "4.3.0",
            "none",
            9.0,
            "delivery temporarily suspended: connect to mx[192.0.2.1]:25: Connection refused",
            "qmgr",
            "postfix/qmgr",
            "9/0/0/0",
        ),
        id="qmgr-defers-without-an-agent",
    ),
    pytest.param(
        "Dec 01 03:00:00 mx postfix/smtp[5]: [ID 197553 mail.info] D834B2120D5: to=<u@example.com>,"
        " relay=none, delay=1, delays=1/0/0/0, dsn=4.4.1, status=SOFTBOUNCE (host said: 550 no)",
        Delivery(
            at(12, 1, 3, 0, 0),
            "D834B2120D5",
            "u@example.com",
            None,
            "deferred",
            "4.4.1",
            "none",
            1.0,
            "host said: 550 no",
            "smtp",
            "postfix/smtp",
            "1/0/0/0",
        ),
        id="solaris-id-tag-and-softbounce-is-a-deferral",
    ),
    pytest.param(
        "Dec 01 03:00:00 mx postfix/smtp[5]: D834B2120D5: to=<u@example.com>, relay=none, delay=1,"
        " delays=1/0/0/0, dsn=5.0.0, status=bounced (host said: 550 this reply was cut",
        Delivery(
            at(12, 1, 3, 0, 0),
            "D834B2120D5",
            "u@example.com",
            None,
            "bounced",
            "5.0.0",
            "none",
            1.0,
            "host said: 550 this reply was cut",
            "smtp",
            "postfix/smtp",
            "1/0/0/0",
        ),
        id="truncated-inside-the-reply-keeps-what-is-there",
    ),
]


@pytest.mark.parametrize(("line", "expected"), DELIVERY_CASES)
def test_delivery_lines(line: str, expected: Delivery) -> None:
    assert parse_line(line, now=NOW) == (expected,)
    assert peek_queue_id(line) == expected.queue_id


OTHER_CASES = [
    pytest.param(
        "Dec 01 03:40:55 relay postfix/smtp[1]: 1AC092123D2: to=<a@example.org>, relay=127.0.0.1[127.0.0.1]:10025,"
        " delay=0.2, delays=0/0/0/0.2, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 3F98E2123D2)",
        (Link(at(12, 1, 3, 40, 55), "1AC092123D2", "3F98E2123D2", "queued_as", "127.0.0.1[127.0.0.1]:10025"),),
        id="content-filter-queued-as",
    ),
    pytest.param(
        "Dec 28 13:39:28 mx postfix/bounce[19155]: C93CEB08A046: sender non-delivery notification: B1B894562003",
        (Link(at(12, 28, 13, 39, 28, year=2025), "C93CEB08A046", "B1B894562003", "bounce"),),
        id="bounce-notification-from-last-december",
    ),
    pytest.param(
        "Dec 01 03:00:00 mx postfix/bounce[1]: 4jdfvM0wYyzJVF1: sender delay notification: 4jdfvM1bBcz7KQ",
        (Link(at(12, 1, 3, 0, 0), "4jdfvM0wYyzJVF1", "4jdfvM1bBcz7KQ", "delay"),),
        id="delay-notification-long-ids",
    ),
    pytest.param(
        "Dec 28 13:39:28 mx postfix/qmgr[22753]: C93CEB08A046: from=<ina@example.com>, status=expired,"
        " returned to sender",
        (Expired(at(12, 28, 13, 39, 28, year=2025), "C93CEB08A046", "ina@example.com"),),
        id="qmgr-expired",
    ),
    pytest.param(
        "Dec 01 03:39:12 relay postfix/qmgr[22404]: BA51F2120D5: removed",
        (Removed(at(12, 1, 3, 39, 12), "BA51F2120D5"),),
        id="qmgr-removed",
    ),
    pytest.param(
        "Dec 01 03:39:12 relay postfix/postsuper[3]: BA51F2120D5: removed",
        (Removed(at(12, 1, 3, 39, 12), "BA51F2120D5"),),
        id="postsuper-removed",
    ),
    pytest.param(
        "Dec 01 03:39:12 relay postfix/qmgr[22404]: BA51F2120D5: from=<a@example.com>, size=439, nrcpt=2 (queue active)",
        (Active(at(12, 1, 3, 39, 12), "BA51F2120D5", "a@example.com", 439, 2),),
        id="qmgr-active",
    ),
    pytest.param(
        "Dec 01 03:39:12 relay postfix/smtp[1]: BA51F2120D5: to=<a@example.org>, relay=none, delay=0.0",
        (),
        id="truncated-before-the-status",
    ),
    pytest.param(
        "Dec 01 03:39:12 relay dovecot[1]: BA51F2120D5: to=<a@example.org>, dsn=2.0.0, status=sent (x)",
        (),
        id="another-program",
    ),
    pytest.param(
        "Dec 01 03:39:12 relay smtpplus-milter[1]: BA51F2120D5: to=<a@example.org>, dsn=2.0.0, status=sent (x)",
        (),
        id="our-own-program",
    ),
    pytest.param(
        "Dec 01 03:39:12 relay postfix/smtp[1]: warning: BA51F2120D5: to=<a@b>, status=sent (x)",
        (),
        id="a-warning-is-not-a-queue-id",
    ),
    pytest.param(
        "Dec 01 03:39:12 relay postfix/smtpd[1]: NOQUEUE: reject: RCPT from x[192.0.2.1]: 554 5.7.1 <a@b>: denied",
        (),
        id="noqueue",
    ),
    pytest.param(
        "Dec 01 03:39:12 relay postfix/cleanup[1]: BA51F2120D5: message-id=<x@y>",
        (),
        id="cleanup-message-id-is-not-used",
    ),
    pytest.param(
        "Dec 01 03:39:12 relay postfix/smtp[1]: BA51F2120D5: to=<a@b>, relay=none, delay=1, delays=1/0/0/0,"
        " dsn=2.1.5, status=deliverable (address verification)",
        (),
        id="address-verification-probe",
    ),
    pytest.param(
        "Feb 30 03:39:12 relay postfix/qmgr[1]: BA51F2120D5: removed",
        (),
        id="no-such-date",
    ),
    pytest.param(
        "Foo 01 03:39:12 relay postfix/qmgr[1]: BA51F2120D5: removed",
        (),
        id="no-such-month",
    ),
]


@pytest.mark.parametrize(("line", "expected"), OTHER_CASES)
def test_other_lines(line: str, expected: tuple[object, ...]) -> None:
    events = parse_line(line, now=NOW)
    if expected and isinstance(expected[0], Link) and expected[0].kind == "queued_as":
        assert len(events) == 2 and isinstance(events[0], Delivery) and events[0].status == "sent"
        events = events[1:]
    assert events == expected


def test_unwanted_queue_ids_are_skipped_before_the_fields_are_read() -> None:
    line = str(DELIVERY_CASES[0].values[0])
    assert parse_line(line, now=NOW, wanted=frozenset({"OTHER12345"})) == ()
    assert len(parse_line(line, now=NOW, wanted=frozenset({"BA51F2120D5"}))) == 1


@pytest.mark.parametrize(
    ("stamp", "now", "expected"),
    [
        pytest.param(
            "Dec 31 23:59:59",
            datetime(2027, 1, 1, 0, 5, tzinfo=UTC),
            at(12, 31, 23, 59, 59),
            id="december-read-in-january",
        ),
        pytest.param(
            "Jan  1 00:00:01",
            datetime(2026, 12, 31, 23, 59, tzinfo=UTC),
            at(1, 1, 0, 0, 1, 2027),
            id="clock-ahead-by-minutes",
        ),
        pytest.param(
            "Feb 29 12:00:00",
            datetime(2026, 3, 1, tzinfo=UTC),
            at(2, 29, 12, 0, 0, 2024),
            id="leap-day-of-the-last-leap-year",
        ),
        pytest.param("2026-06-01T10:00:00+02:00", NOW, at(6, 1, 8, 0, 0), id="rfc3339-offset"),
    ],
)
def test_timestamps(stamp: str, now: datetime, expected: datetime) -> None:
    (event,) = parse_line(f"{stamp} h postfix/qmgr[1]: BA51F2120D5: removed", now=now)
    assert event.at == expected


def test_classic_timestamps_are_in_the_given_zone() -> None:
    zone = timezone(timedelta(hours=1))
    (event,) = parse_line("Dec 01 03:00:00 h postfix/qmgr[1]: BA51F2120D5: removed", now=NOW, zone=zone)
    assert event.at == at(12, 1, 2, 0, 0)


@pytest.mark.parametrize(
    ("line", "qid"),
    [
        pytest.param("Dec 01 03:00:00 h postfix/qmgr[1]: 4jdfvM0wYyzJVF1: removed", "4jdfvM0wYyzJVF1", id="long"),
        pytest.param("Dec 01 03:00:00 h postfix/qmgr[1]: BA51F2120D5: removed", "BA51F2120D5", id="short"),
        pytest.param("Dec 01 03:00:00 h postfix/qmgr[1]: statistics: whatever", None, id="word"),
        pytest.param("Dec 01 03:00:00 h postfix/qmgr[1]: Abcdefghijklmn: x", None, id="vowels-are-no-long-id"),
        pytest.param("Dec 01 03:00:00 h postfix/qmgr[1]: bcdfghjklmnpqrs: x", None, id="no-z-separator"),
        pytest.param("Dec 01 03:00:00 h master[1]: BA51F2120D5: removed", None, id="no-service"),
    ],
)
def test_peek_queue_id(line: str, qid: str | None) -> None:
    assert peek_queue_id(line) == qid
