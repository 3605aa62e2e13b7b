"""Reports as an attacker could shape them: anyone can send mail to the bounce domain, so ingest
reads whatever arrives. Whatever the bytes, read_report returns a value (never raises), within a
time and memory bound per report, and a report over a bound says which one."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from smtpplus_milter.core.reports import (
    MAX_CONTAINERS,
    MAX_PARSE_BYTES,
    MAX_RECIPIENTS,
    MAX_REPORT_BYTES,
    DeliveryReport,
    NotAReport,
    Unreadable,
    read_report,
)

# CPU seconds one report may cost (measured here: at most 0.6 s, a 512 KiB head of blank lines or
# one-field lines, which the stdlib parser reads at about a microsecond a line).
REPORT_BUDGET = 3.0
# Memory one report may allocate beyond its input (measured: 13 MB for 500k status blocks; 100 MB for
# a 10 MB header before only the head was parsed).
REPORT_MEMORY = 64 * 1024 * 1024

REPORT = b'MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; boundary="B"\n\n'
STATUS = b"--B\nContent-Type: message/delivery-status\n\n"
ONE_RECIPIENT = b"Reporting-MTA: dns; m\n\nFinal-Recipient: rfc822; a@x.example\nAction: failed\nStatus: 5.1.1\n"


def nested_multiparts(depth: int) -> bytes:
    return b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (level, level) for level in range(depth)
    )


HOSTILE = [
    pytest.param(nested_multiparts(5_000), "too many nested parts", id="deep-multipart-nesting"),
    pytest.param(b"Content-Type: message/rfc822\n\n" * 20_000, "too many nested parts", id="deep-rfc822-nesting"),
    pytest.param(
        REPORT + b"--B\nContent-Type: text/plain\n\nx\n" * 100_000 + b"--B--\n", "too many parts", id="100k-parts"
    ),
    pytest.param(
        b"Content-Type: multipart/mixed; boundary=x\n\n" + b"--x\n\n" * 100_000, "too many parts", id="100k-empty-parts"
    ),
    pytest.param(
        b"".join(b"Content-Type: text/plain; boundary=u%d\n" % i for i in range(MAX_CONTAINERS + 1)),
        "too many multipart boundaries",
        id="many-boundaries",
    ),
    pytest.param(b"Subject: " + b"a" * 10_000_000 + b"\n\nbody", "not a report", id="10MB-header"),
    pytest.param(b"Subject: a" + b"\n a" * 3_000_000 + b"\n\nbody", "not a report", id="3M-folded-lines"),
    pytest.param(b"X-A: b\n" * 1_000_000 + b"\n", "not a report", id="1M-header-fields"),
    pytest.param(bytes(range(256)) * 40_000, "not a report", id="10MB-garbage-bytes"),
    pytest.param(b"\x00\n" * 1_000_000, "not a report", id="nul-lines"),
    pytest.param(REPORT + STATUS + b"X:\n\n" * 500_000 + b"--B--\n", "names no recipient", id="500k-status-blocks"),
    pytest.param(
        REPORT + STATUS + b"\n" * 2_000_000 + b"--B--\n", "delivery-status part is empty", id="2M-blank-lines"
    ),
    pytest.param(
        REPORT + STATUS + b"\nFinal-Recipient: rfc822; a@b\nAction: failed\n" * (MAX_RECIPIENTS + 1) + b"--B--\n",
        "too many recipients",
        id="too-many-recipients",
    ),
    pytest.param(
        b'Content-Type: multipart/report; report-type=feedback-report; boundary="B"\n\n--B\n'
        b"Content-Type: message/feedback-report\n\nFeedback-Type: abuse\n" + b"Original-Rcpt-To: <a@b>\n" * 300_000,
        None,
        id="300k-complaint-recipients",
    ),
    pytest.param(
        REPORT + STATUS + b"Final-Recipient: rfc822; a@b\n" + b"X: y\n" * 200_000 + b"--B--\n",
        None,
        id="200k-fields-in-one-block",
    ),
]


@pytest.mark.parametrize(("raw", "reason"), HOSTILE)
def test_hostile_reports_cost_little_and_say_why(raw: bytes, reason: str | None) -> None:
    started = time.process_time()
    report = read_report(raw, max_bytes=20_000_000)
    assert time.process_time() - started < REPORT_BUDGET
    if reason is not None:
        assert isinstance(report, Unreadable) and reason in report.reason, report


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(HOSTILE[2].values[0], id="100k-parts"),
        pytest.param(HOSTILE[5].values[0], id="10MB-header"),
        pytest.param(HOSTILE[10].values[0], id="500k-status-blocks"),
    ],
)
def test_hostile_reports_allocate_a_bounded_amount(raw: bytes) -> None:
    tracemalloc.start()
    try:
        read_report(raw, max_bytes=20_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < REPORT_MEMORY


def test_over_max_bytes_is_refused_before_reading() -> None:
    raw = REPORT + STATUS + ONE_RECIPIENT + b"--B--\n"
    assert isinstance(read_report(raw), DeliveryReport)
    assert read_report(raw, max_bytes=len(raw) - 1) == Unreadable(
        f"report too large: {len(raw)} bytes, at most {len(raw) - 1}"
    )
    assert MAX_REPORT_BYTES > MAX_PARSE_BYTES


def test_a_large_returned_message_does_not_hide_the_status() -> None:
    # Only the head is parsed: a report whose returned message is many megabytes is still read.
    raw = REPORT + STATUS + ONE_RECIPIENT + b"--B\nContent-Type: message/rfc822\n\nSubject: big\n\n" + b"x" * 5_000_000
    report = read_report(raw)
    assert isinstance(report, DeliveryReport) and report.returned is not None
    assert report.returned.subject == "big"


def test_a_status_part_past_the_parsed_head_says_so() -> None:
    raw = REPORT + b"--B\nContent-Type: text/plain\n\n" + b"x" * MAX_PARSE_BYTES + b"\n" + STATUS + ONE_RECIPIENT
    report = read_report(raw)
    assert isinstance(report, Unreadable)
    assert f"only the first {MAX_PARSE_BYTES} of {len(raw)} bytes were read" in report.reason


@pytest.mark.parametrize(
    "part",
    [
        pytest.param(b"Content-Type: message/delivery-status; charset=no-such-charset\n\n", id="unknown-charset"),
        pytest.param(b"Content-Type: message/delivery-status; charset=utf-16\n\n", id="utf-16-declared-ascii-sent"),
        pytest.param(
            b"Content-Type: message/delivery-status\nContent-Transfer-Encoding: base64\n\n!!", id="bad-base64"
        ),
        pytest.param(b"Content-Type: message/delivery-status; charset=us-ascii\n\n\xff\xfe", id="8bit-in-ascii"),
    ],
)
def test_wrong_charsets_and_encodings_are_values_not_exceptions(part: bytes) -> None:
    report = read_report(REPORT + b"--B\n" + part + ONE_RECIPIENT + b"--B--\n")
    assert isinstance(report, DeliveryReport | Unreadable)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\xff\xfe" + "Subject: é\n".encode("utf-16-le"), id="utf-16-message"),
        pytest.param(b"Content-Type: multipart/report; boundary=\n\n--\n--\n", id="empty-boundary"),
        pytest.param(b'Content-Type: multipart/report; boundary="B"\n\n--B--\n--B\n', id="part-after-close"),
        pytest.param(b"Subject: =?x-unknown?q?a?=\nAuto-Submitted: auto-replied\n\n", id="unknown-encoded-word"),
        pytest.param(b"Content-Type: message/feedback-report\n\n", id="feedback-without-fields"),
        pytest.param(b"\r\r\r\n\n\r", id="bare-carriage-returns"),
    ],
)
def test_odd_shapes_are_values_not_exceptions(raw: bytes) -> None:
    assert isinstance(read_report(raw), Unreadable | NotAReport | DeliveryReport)
