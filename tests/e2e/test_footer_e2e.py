"""Header/footer injection through a real Postfix: what arrives at the sink."""

from __future__ import annotations

import os
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from lab.stack import Stack

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="private Postfix instances need root"),
]

LISTS = {
    "shop": {
        "header": {"text": "ORDER NOTICE", "html": "<p>ORDER NOTICE</p>"},
        "footer": {"text": "Example Shop GmbH, Main St 1", "html": "<p>Example Shop GmbH, Main St 1</p>"},
    },
    "staff": {},
}
LIMIT = 2_000_000
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack(settings={"lists": LISTS, "limits": {"max_message_bytes": LIMIT}}) as running:
        yield running


@pytest.fixture(autouse=True)
def _clean(stack: Stack) -> None:
    stack.sink.clear()


def _message(subject: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Shop <info@yourcompany.com>"
    message["To"] = "someone@example.org"
    message["Subject"] = subject
    return message


def _roundtrip(stack: Stack, message: EmailMessage) -> EmailMessage:
    data = message.as_bytes(policy=policy.SMTP)
    result = stack.send(data, login="shop-frontend", mail_from="info@yourcompany.com")
    assert result.accepted, result
    [received] = stack.sink.wait_for(1, timeout=30)
    parsed = message_from_bytes(received.data, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_text_message(stack: Stack) -> None:
    message = _message("text")
    message.set_content("Your order 1001 has shipped.\n")
    text = _roundtrip(stack, message).get_content().replace("\r\n", "\n")
    assert text.startswith("ORDER NOTICE\n\nYour order 1001 has shipped.\n")
    assert text.rstrip().endswith("Example Shop GmbH, Main St 1")
    assert text.count("Example Shop GmbH") == 1


def test_html_message(stack: Stack) -> None:
    message = _message("html")
    message.set_content(
        '<html><head><title>x</title></head><BODY class="mail"><p>Shipped.</p></BODY></html>\n', subtype="html"
    )
    html = _roundtrip(stack, message).get_content()
    body_open = html.index('<BODY class="mail">')
    assert html.index("<p>ORDER NOTICE</p>") > body_open
    assert html.index("<p>Shipped.</p>") < html.index("<p>Example Shop GmbH, Main St 1</p>") < html.index("</BODY>")


def test_alternative_with_attachment(stack: Stack) -> None:
    message = _message("alternative + pdf")
    message.set_content("Invoice attached.\n")
    message.add_alternative("<html><body><p>Invoice attached.</p></body></html>\n", subtype="html")
    message.add_attachment(PDF, maintype="application", subtype="pdf", filename="invoice.pdf")
    received = _roundtrip(stack, message)
    plain = received.get_body(preferencelist=("plain",))
    html = received.get_body(preferencelist=("html",))
    assert plain is not None and html is not None
    assert plain.get_content().startswith("ORDER NOTICE") and "Example Shop GmbH" in plain.get_content()
    assert "<p>ORDER NOTICE</p>" in html.get_content() and "<p>Example Shop GmbH, Main St 1</p>" in html.get_content()
    [attachment] = list(received.iter_attachments())
    assert attachment.get_filename() == "invoice.pdf"
    assert attachment.get_content() == PDF


def test_signed_message_body_is_byte_identical(stack: Stack) -> None:
    body = (
        b"--sig\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nSigned text.\r\n"
        b"--sig\r\nContent-Type: application/pkcs7-signature; name=smime.p7s\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHAqCAMIACAQExDzANBglghkgBZQMEAgEFADCABgkqhkiG9w0BBwEAAKCAMIIB\r\n"
        b"--sig--\r\n"
    )
    head = (
        b"From: Shop <info@yourcompany.com>\r\nTo: someone@example.org\r\nSubject: signed\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary="sig"\r\n\r\n'
    )
    result = stack.send(head + body, login="shop-frontend", mail_from="info@yourcompany.com")
    assert result.accepted, result
    [received] = stack.sink.wait_for(1, timeout=30)
    assert received.data.split(b"\r\n\r\n", 1)[1] == body
    event = stack.milter.wait_for_event("message", lambda e: (e.get("footer") or {}).get("result") == "skipped")  # type: ignore[union-attr]
    assert "multipart/signed" in event["footer"]["reason"]


def test_over_the_limit_refused_with_552(stack: Stack) -> None:
    message = _message("too big")
    message.set_content("x" * 70 + "\n")
    message.add_attachment(os.urandom(LIMIT), maintype="application", subtype="octet-stream", filename="big.bin")
    result = stack.send(message.as_bytes(policy=policy.SMTP), login="shop-frontend", mail_from="info@yourcompany.com")
    assert (result.accepted, result.code) == (False, 552), result
    assert result.text.startswith("5.3.4 ") and str(LIMIT) in result.text


def test_over_the_limit_without_size_is_refused_at_end_of_data(stack: Stack) -> None:
    import smtplib

    from lab.stack import client_tls

    assert stack.postfix is not None
    message = _message("too big, no SIZE")
    message.set_content("x" * 70 + "\n")
    message.add_attachment(os.urandom(LIMIT), maintype="application", subtype="octet-stream", filename="big.bin")
    with smtplib.SMTP("127.0.0.1", stack.postfix.submission_port, timeout=60) as client:
        client.starttls(context=client_tls())
        client.login("shop-frontend", stack.passwords["shop-frontend"])
        client.esmtp_features.pop("size", None)  # a client that does not announce the size
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("info@yourcompany.com", ["someone@example.org"], message.as_bytes(policy=policy.SMTP))
    assert refused.value.smtp_code == 552


def test_empty_part_between_boundary_lines_gains_no_part(stack: Stack) -> None:
    # "--B" directly followed by "--B": no header block, no blank line. Python's parser sees no
    # part there; the footer must go to the real text part, not turn that nothing into a
    # visible text/plain part.
    head = (
        b"From: Shop <info@yourcompany.com>\r\nTo: someone@example.org\r\nSubject: empty part\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
    )
    attachment = (
        b"--B\r\nContent-Type: application/pdf; name=invoice.pdf\r\nContent-Disposition: attachment; filename=invoice.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--B--\r\n"
    )
    body = (
        b"--B\r\n--B\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nYour order 1002 has shipped.\r\n" + attachment
    )
    result = stack.send(head + body, login="shop-frontend", mail_from="info@yourcompany.com")
    assert result.accepted, result
    [received] = stack.sink.wait_for(1, timeout=30)
    original = message_from_bytes(head + body, policy=policy.default)
    delivered = message_from_bytes(received.data, policy=policy.default)
    assert [part.get_content_type() for part in delivered.walk()] == [
        part.get_content_type() for part in original.walk()
    ]
    [text] = [part for part in delivered.walk() if part.get_content_type() == "text/plain"]
    assert isinstance(text, EmailMessage)
    content = text.get_content().replace("\r\n", "\n")
    assert content.startswith("ORDER NOTICE\n\nYour order 1002 has shipped.\n")
    assert content.count("Example Shop GmbH") == 1
    assert received.data.endswith(attachment)  # untouched, byte for byte


def test_past_a_bound_the_message_is_unchanged_logged_and_counted(stack: Stack) -> None:
    import urllib.request

    # An attachment whose header block is over rawparts.MAX_HEADER_BYTES (8 KiB): the stdlib's
    # parameter parser is quadratic, so such a block is not read and the message stays as it is.
    padding = b"".join(b";\r\n x-pad%03d=%s" % (index, b"a" * 70) for index in range(120))
    head = (
        b"From: Shop <info@yourcompany.com>\r\nTo: someone@example.org\r\nSubject: big part header\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
    )
    body = (
        b"--B\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nYour order 1003 has shipped.\r\n"
        b"--B\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=invoice.pdf"
        + padding
        + b"\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--B--\r\n"
    )
    result = stack.send(head + body, login="shop-frontend", mail_from="info@yourcompany.com")
    assert result.accepted, result
    [received] = stack.sink.wait_for(1, timeout=30)
    assert received.data.split(b"\r\n\r\n", 1)[1] == body
    event = stack.milter.wait_for_event(  # type: ignore[union-attr]
        "message", lambda e: (e.get("footer") or {}).get("result") == "unchanged-limit"
    )
    assert "MAX_HEADER_BYTES" in event["footer"]["reason"]
    assert any(reason.startswith("footer not added (unchanged-limit): ") for reason in event["reasons"])
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'smtpplus_footer_total{result="unchanged-limit"} 1.0' in metrics
