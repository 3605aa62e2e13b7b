"""Reading reports: each ``tests/data/reports/*.eml`` (hand-written, modelled on the shapes real
receivers send: Postfix, Gmail, Exchange Online, a Yahoo-style feedback loop, qmail, Exim) gives
exactly the values below, with LF and with CRLF line breaks."""

from __future__ import annotations

import base64
import quopri
from pathlib import Path

import pytest

from smtpplus_milter.core.failures import BLOCKED, HARD, SOFT
from smtpplus_milter.core.reports import (
    MAX_RECIPIENTS,
    ComplaintReport,
    DeliveryReport,
    NotAReport,
    Report,
    ReturnedHeaders,
    Unreadable,
    read_report,
)
from smtpplus_milter.core.tracking import MAX_FIELD

DATA = Path(__file__).resolve().parent.parent / "data" / "reports"


def sample(name: str, eol: bytes = b"\n") -> bytes:
    return (DATA / f"{name}.eml").read_bytes().replace(b"\n", eol)


# (recipient to act on, action, status, tracking status, class) per entry.
DSN_GOLDEN = [
    pytest.param(
        "postfix-dsn-5.1.1",
        [("nobody@customer.example", "failed", "5.1.1", "bounced", HARD)],
        ReturnedHeaders(
            message_id="<inv-2026-118@yourcompany.example>",
            smtpplus_id="n1.4jdfvM0wYyzJVF1",
            from_="Sales Team <sales@yourcompany.example>",
            to="nobody@customer.example",
            subject="Your invoice n° 2026-118",
        ),
        True,
        id="postfix-5.1.1-rfc822-headers",
    ),
    pytest.param(
        "gmail-style-5.1.1",
        [("ghost.user@gmail.example", "failed", "5.1.1", "bounced", HARD)],
        ReturnedHeaders(
            message_id="<welcome-77@yourcompany.example>",
            smtpplus_id="n1.4jdfvM0wYyzJVF2",
            from_='"Your Company" <hello@yourcompany.example>',
            to="ghost.user@gmail.example",
            subject="Welcome aboard",
        ),
        True,
        id="gmail-nested-related-alternative",
    ),
    pytest.param(
        "exchange-style-5.1.10",
        [("former.employee@contoso.example", "failed", "5.1.10", "bounced", HARD)],
        ReturnedHeaders(
            message_id="<q4-report@yourcompany.example>",
            smtpplus_id="n1.4jdfvM0wYyzJVF3",
            from_="=?iso-8859-1?Q?J=FCrgen_M=FCller?= <juergen@yourcompany.example>",
            to="<former.employee@contoso.example>",
            subject="Q4 report",
        ),
        True,
        id="exchange-5.1.10-null-mx-class",
    ),
    pytest.param(
        "postfix-delayed",
        [("slow@busy.example", "delayed", "4.7.1", "deferred", SOFT)],
        ReturnedHeaders(
            message_id="<nightly-1201@yourcompany.example>",
            smtpplus_id="n2.4jdfvM0wYyzJVF4",
            from_="ops@yourcompany.example",
            to="slow@busy.example",
            subject="Nightly status",
        ),
        True,
        id="postfix-delayed-is-soft",
    ),
    pytest.param(
        "multi-recipient-mixed",
        [
            ("alice@partner.example", "delivered", "2.0.0", None, None),
            # the original recipient (what we sent to: a list there) is the one to act on
            ("team@partner.example", "failed", "5.2.2", "bounced", SOFT),
            ("carol@partner.example", "failed", "5.7.1", "bounced", BLOCKED),
            ("dave@partner.example", "delayed", "4.4.1", "deferred", SOFT),
            ("erin@partner.example", "failed", "5.2.1", "bounced", HARD),
        ],
        ReturnedHeaders(
            message_id="<news-dec@yourcompany.example>",
            smtpplus_id="n1.4jdfvM0wYyzJVF5",
            from_="news@yourcompany.example",
            to="team@partner.example, carol@partner.example, dave@partner.example, erin@partner.example",
            subject="December newsletter",
        ),
        True,
        id="mixed-outcomes-rfc822",
    ),
    pytest.param(
        "global-dsn-utf8",
        [("jörg@bücher.example", "failed", "5.1.1", "bounced", HARD)],
        ReturnedHeaders(
            message_id="<buecher@yourcompany.example>",
            smtpplus_id="n1.4jdfvM0wYyzJVFC",
            from_="verkauf@yourcompany.example",
            to=None,
            subject="Bücherliste",
        ),
        True,
        id="smtputf8-global-delivery-status",
    ),
    pytest.param(
        "qmail-plain-bounce",
        # the "<addr>:" line quoted in the copy of the message is not an entry
        [
            ("gone@oldhost.example", "failed", "5.1.1", "bounced", HARD),
            ("full@oldhost.example", "failed", "5.2.2", "bounced", SOFT),
        ],
        ReturnedHeaders(
            message_id="<holiday@yourcompany.example>",
            smtpplus_id=None,
            from_="hr@yourcompany.example",
            to="gone@oldhost.example, full@oldhost.example",
            subject="Holiday schedule",
        ),
        False,
        id="qmail-plain-text",
    ),
    pytest.param(
        "exim-plain-bounce",
        [("left@eximhost.example", "failed", "5.1.1", "bounced", HARD)],
        ReturnedHeaders(
            message_id=None,
            smtpplus_id=None,
            from_="it@yourcompany.example",
            to="left@eximhost.example",
            subject="Password expiry",
        ),
        False,
        id="exim-plain-text-auto-submitted",
    ),
]


@pytest.mark.parametrize("eol", [pytest.param(b"\n", id="lf"), pytest.param(b"\r\n", id="crlf")])
@pytest.mark.parametrize(("name", "entries", "returned", "standard"), DSN_GOLDEN)
def test_each_dsn_sample_reads_as_expected(
    name: str,
    entries: list[tuple[str, str, str, str | None, str | None]],
    returned: ReturnedHeaders,
    standard: bool,
    eol: bytes,
) -> None:
    report = read_report(sample(name, eol))
    assert isinstance(report, DeliveryReport), report
    got = [(e.recipient, e.action, e.status, e.tracking_status, e.failure_class) for e in report.entries]
    assert got == entries
    assert report.returned == returned
    assert report.standard is standard


def test_the_per_message_and_per_recipient_fields_of_a_postfix_dsn() -> None:
    report = read_report(sample("postfix-dsn-5.1.1"))
    assert isinstance(report, DeliveryReport)
    assert (report.reporting_mta, report.arrival_date, report.original_envelope_id) == (
        "relay.example.net",
        "Tue, 1 Dec 2026 03:39:58 +0000 (UTC)",
        None,
    )
    [entry] = report.entries
    assert entry.final_recipient == entry.original_recipient == "nobody@customer.example"
    assert entry.remote_mta == "mx.customer.example"
    # type "smtp;" removed and the folded reply unfolded
    assert entry.diagnostic == (
        "550 5.1.1 <nobody@customer.example>: Recipient address rejected: User unknown in virtual mailbox table"
    )


def test_the_envelope_id_and_a_typed_address_in_angle_brackets() -> None:
    report = read_report(sample("multi-recipient-mixed"))
    assert isinstance(report, DeliveryReport)
    assert report.original_envelope_id == "n1.4jdfvM0wYyzJVF5"
    assert report.entries[3].final_recipient == "dave@partner.example"  # "RFC822; <dave@...>"
    assert report.entries[3].diagnostic == "connection timed out"  # "X-Local;" removed


COMPLAINT_GOLDEN = [
    pytest.param(
        "arf-yahoo-style-abuse",
        ComplaintReport(
            feedback_type="abuse",
            user_agent="Yahoo!-Mail-Feedback/2.0",
            original_mail_from="b+n1.4jdfvM0wYyzJVF6.Tt55uu@bounce.relay.example",
            original_rcpt_to=(),  # redacted: matched by the token or X-SMTPPlus-ID instead
            arrival_date="Tue, 1 Dec 2026 06:55:12 +0000",
            reporting_mta=None,
            source_ip="198.51.100.2",
            returned=ReturnedHeaders(
                message_id="<sale-0412@yourcompany.example>",
                smtpplus_id="n1.4jdfvM0wYyzJVF6",
                from_="Shop <shop@yourcompany.example>",
                to="redacted@yahoo.example",
                subject="Spring sale starts today",
            ),
        ),
        id="yahoo-style-abuse-redacted",
    ),
    pytest.param(
        "arf-rfc822-headers",
        ComplaintReport(
            feedback_type="fraud",  # written "Fraud": lower-cased
            user_agent="SomeGenerator/1.0",
            original_mail_from="b+n3.4jdfvM0wYyzJVF7.Qq22rr@bounce.relay.example",
            original_rcpt_to=("victim@isp.example", "second@isp.example"),
            arrival_date="Tue, 1 Dec 2026 07:59:01 +0000",  # from Received-Date (ARF drafts)
            reporting_mta="mail.isp.example",
            source_ip="198.51.100.2",
            returned=ReturnedHeaders(
                message_id="<bill-881@yourcompany.example>",
                smtpplus_id="n3.4jdfvM0wYyzJVF7",
                from_="<billing@yourcompany.example>",
                to="<victim@isp.example>",
                subject="Facture impayée",
            ),
        ),
        id="fraud-text-rfc822-headers-two-recipients",
    ),
]


@pytest.mark.parametrize("eol", [pytest.param(b"\n", id="lf"), pytest.param(b"\r\n", id="crlf")])
@pytest.mark.parametrize(("name", "expected"), COMPLAINT_GOLDEN)
def test_each_complaint_sample_reads_as_expected(name: str, expected: ComplaintReport, eol: bytes) -> None:
    assert read_report(sample(name, eol)) == expected


@pytest.mark.parametrize(
    ("name", "kind", "reason_part"),
    [
        pytest.param("out-of-office", NotAReport, "automatic reply", id="out-of-office"),
        pytest.param("person-reply", Unreadable, "not a report", id="a-person-answers"),
    ],
)
def test_messages_that_are_no_report(name: str, kind: type, reason_part: str) -> None:
    report = read_report(sample(name))
    assert isinstance(report, kind) and isinstance(report, NotAReport | Unreadable)
    assert reason_part in report.reason


DSN_HEAD = (
    b"From: MAILER-DAEMON@mx.example\nSubject: x\nMIME-Version: 1.0\n"
    b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n\n'
)


def dsn(status_block: bytes, extra_parts: bytes = b"") -> bytes:
    return (
        DSN_HEAD
        + b"--B\nContent-Type: text/plain\n\nfailed\n\n--B\nContent-Type: message/delivery-status\n\n"
        + status_block
        + b"\n"
        + extra_parts
        + b"--B--\n"
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(b"", Unreadable("empty message"), id="empty"),
        pytest.param(b"x" * 101, Unreadable("report too large: 101 bytes, at most 100"), id="over-max-bytes"),
        pytest.param(
            dsn(b"Reporting-MTA: dns; mx.example\n"),
            Unreadable("delivery-status part names no recipient (no Final-Recipient field)"),
            id="no-recipient-block",
        ),
        pytest.param(
            DSN_HEAD + b"--B\nContent-Type: text/plain\n\nhello\n--B--\n",
            Unreadable("multipart/report (report-type='delivery-status') without a delivery-status or feedback part"),
            id="report-without-status-part",
        ),
    ],
)
def test_reports_that_cannot_be_read_say_why(raw: bytes, expected: Report) -> None:
    assert read_report(raw, max_bytes=100 if raw.startswith(b"x") else 1_000_000) == expected


def test_per_message_fields_merged_into_the_first_recipient_block_are_still_read() -> None:
    report = read_report(
        dsn(b"Reporting-MTA: dns; mx.example\nFinal-Recipient: rfc822; a@x.example\nAction: failed\nStatus: 5.1.1\n")
    )
    assert isinstance(report, DeliveryReport)
    assert [(e.final_recipient, e.failure_class) for e in report.entries] == [("a@x.example", HARD)]
    assert report.reporting_mta == "mx.example"


@pytest.mark.parametrize(
    ("status", "expected_status", "expected_class"),
    [
        pytest.param(b"5.1.1 (user unknown)", "5.1.1", HARD, id="comment-after-code"),
        pytest.param(b"550", None, SOFT, id="basic-code-only-never-hard"),
        pytest.param(b"5.1.1.1", None, SOFT, id="malformed-code"),
        pytest.param(b"", None, SOFT, id="absent"),
    ],
)
def test_the_class_comes_only_from_a_well_formed_enhanced_code(
    status: bytes, expected_status: str | None, expected_class: str
) -> None:
    block = b"Final-Recipient: rfc822; a@x.example\nAction: failed\nStatus: " + status + b"\n"
    report = read_report(dsn(b"Reporting-MTA: dns; mx.example\n\n" + block))
    assert isinstance(report, DeliveryReport)
    [entry] = report.entries
    assert (entry.status, entry.failure_class) == (expected_status, expected_class)


def test_an_unknown_action_is_kept_as_unknown_and_has_no_class() -> None:
    report = read_report(
        dsn(b"Reporting-MTA: dns; m\n\nFinal-Recipient: rfc822; a@x\nAction: exploded\nStatus: 5.1.1\n")
    )
    assert isinstance(report, DeliveryReport)
    assert (report.entries[0].action, report.entries[0].failure_class) == ("unknown", None)


def test_a_dsn_quoted_inside_the_returned_message_is_not_this_report() -> None:
    # A bounce of a bounce: the returned message is itself a DSN for someone else; only the outer
    # report's recipients count.
    inner = dsn(b"Reporting-MTA: dns; other\n\nFinal-Recipient: rfc822; victim@x\nAction: failed\nStatus: 5.1.1\n")
    inner = inner.replace(b'"B"', b'"INNER"').replace(b"--B", b"--INNER")
    outer = dsn(
        b"Reporting-MTA: dns; m\n\nFinal-Recipient: rfc822; real@x\nAction: delayed\nStatus: 4.2.0\n",
        b"--B\nContent-Type: message/rfc822\n\n" + inner + b"\n",
    )
    report = read_report(outer)
    assert isinstance(report, DeliveryReport)
    assert [e.recipient for e in report.entries] == ["real@x"]


def test_fields_are_bounded() -> None:
    long = b"a" * 5000
    block = (
        b"Final-Recipient: rfc822; "
        + long
        + b"@x\nAction: failed\nStatus: 5.1.1\nDiagnostic-Code: smtp; "
        + long
        + b"\n"
    )
    report = read_report(dsn(b"Reporting-MTA: dns; " + long + b"\n\n" + block))
    assert isinstance(report, DeliveryReport)
    [entry] = report.entries
    assert report.reporting_mta is not None and len(report.reporting_mta) <= MAX_FIELD
    assert entry.final_recipient is not None and len(entry.final_recipient) <= MAX_FIELD
    assert entry.diagnostic is not None and len(entry.diagnostic) <= 998


def test_at_most_max_recipients_blocks_are_read() -> None:
    blocks = b"".join(
        b"\nFinal-Recipient: rfc822; r%d@x\nAction: failed\nStatus: 5.1.1\n" % i for i in range(MAX_RECIPIENTS + 1)
    )
    report = read_report(dsn(b"Reporting-MTA: dns; m\n" + blocks))
    assert report == Unreadable(
        f"too many recipients: {MAX_RECIPIENTS + 1} Final-Recipient fields, at most {MAX_RECIPIENTS}"
    )
    blocks = b"".join(
        b"\nFinal-Recipient: rfc822; r%d@x\nAction: failed\nStatus: 5.1.1\n" % i for i in range(MAX_RECIPIENTS)
    )
    report = read_report(dsn(b"Reporting-MTA: dns; m\n" + blocks))
    assert isinstance(report, DeliveryReport) and len(report.entries) == MAX_RECIPIENTS


ARF_HEAD = (
    b'Content-Type: multipart/report; report-type=feedback-report; boundary="F"\n\n'
    b"--F\nContent-Type: text/plain\n\nreport\n\n"
    b"--F\nContent-Type: message/feedback-report\n\nFeedback-Type: %s\nVersion: 1\n\n"
)
RETURNED = b"From: a@yourcompany.example\nSubject: Hi\nX-SMTPPlus-ID: n1.4jdfvM0wYyzJVFD\n\nbody\n"


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        pytest.param(b"7bit", RETURNED, id="as-is"),
        pytest.param(b"base64", base64.encodebytes(RETURNED), id="base64"),
        pytest.param(b"quoted-printable", quopri.encodestring(RETURNED.replace(b"Hi", b"H=")), id="quoted-printable"),
    ],
)
def test_a_returned_message_is_read_even_when_its_sender_encoded_it(encoding: bytes, body: bytes) -> None:
    raw = (ARF_HEAD % b"not-spam") + b"--F\nContent-Type: message/rfc822\nContent-Transfer-Encoding: " + encoding
    report = read_report(raw + b"\n\n" + body + b"\n--F--\n")
    assert isinstance(report, ComplaintReport)
    assert report.feedback_type == "not-spam"
    assert report.returned is not None and report.returned.smtpplus_id == "n1.4jdfvM0wYyzJVFD"


def test_a_feedback_report_without_its_type_is_unreadable() -> None:
    raw = (ARF_HEAD % b"").replace(b"Feedback-Type: \n", b"") + b"--F--\n"
    assert read_report(raw) == Unreadable("feedback report without a Feedback-Type field")
