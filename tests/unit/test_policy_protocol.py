"""core/policy_protocol.py: requests as Postfix writes them, decoded whatever the chunking; replies."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpplus_milter.core.policy_protocol import (
    MAX_ACTION_BYTES,
    PolicyDecoder,
    PolicyProtocolError,
    PolicyRequest,
    encode_reply,
    encode_request,
)

# Every attribute Postfix 3.12 sends, in its order (after the protocol README's example), at RCPT.
RCPT_FULL = (
    b"request=smtpd_access_policy\n"
    b"protocol_state=RCPT\n"
    b"protocol_name=ESMTP\n"
    b"helo_name=some.domain.tld\n"
    b"queue_id=8045F2AB23\n"
    b"sender=foo@bar.tld\n"
    b"recipient=bar@foo.tld\n"
    b"recipient_count=0\n"
    b"client_address=1.2.3.4\n"
    b"client_name=another.domain.tld\n"
    b"reverse_client_name=another.domain.tld\n"
    b"instance=123.456.7\n"
    b"sasl_method=plain\n"
    b"sasl_username=you\n"
    b"sasl_sender=\n"
    b"size=12345\n"
    b"ccert_subject=solaris9.porcupine.org\n"
    b"ccert_issuer=Wietse+20Venema\n"
    b"ccert_fingerprint=C2:9D:F4:87:71:73:73:D9:18:E7:C2:F3:C1:DA:6E:04\n"
    b"encryption_protocol=TLSv1/SSLv3\n"
    b"encryption_cipher=DHE-RSA-AES256-SHA\n"
    b"encryption_keysize=256\n"
    b"etrn_domain=\n"
    b"stress=\n"
    b"ccert_pubkey_fingerprint=68:B3:29:DA:98:93:E3:40:99:C7:D8:AD:5C:B9:C9:40\n"
    b"client_port=1234\n"
    b"policy_context=submission\n"
    b"server_address=10.3.2.1\n"
    b"server_port=54321\n"
    b"compatibility_level=3.6\n"
    b"mail_version=3.8.0\n"
    b"tls_sni=mail.example.com\n"
    b"\n"
)
RCPT_FULL_ATTRIBUTES = {
    "request": "smtpd_access_policy",
    "protocol_state": "RCPT",
    "protocol_name": "ESMTP",
    "helo_name": "some.domain.tld",
    "queue_id": "8045F2AB23",
    "sender": "foo@bar.tld",
    "recipient": "bar@foo.tld",
    "recipient_count": "0",
    "client_address": "1.2.3.4",
    "client_name": "another.domain.tld",
    "reverse_client_name": "another.domain.tld",
    "instance": "123.456.7",
    "sasl_method": "plain",
    "sasl_username": "you",
    "sasl_sender": "",
    "size": "12345",
    "ccert_subject": "solaris9.porcupine.org",
    "ccert_issuer": "Wietse+20Venema",
    "ccert_fingerprint": "C2:9D:F4:87:71:73:73:D9:18:E7:C2:F3:C1:DA:6E:04",
    "encryption_protocol": "TLSv1/SSLv3",
    "encryption_cipher": "DHE-RSA-AES256-SHA",
    "encryption_keysize": "256",
    "etrn_domain": "",
    "stress": "",
    "ccert_pubkey_fingerprint": "68:B3:29:DA:98:93:E3:40:99:C7:D8:AD:5C:B9:C9:40",
    "client_port": "1234",
    "policy_context": "submission",
    "server_address": "10.3.2.1",
    "server_port": "54321",
    "compatibility_level": "3.6",
    "mail_version": "3.8.0",
    "tls_sni": "mail.example.com",
}
# The same message at END-OF-MESSAGE with two recipients: recipient empty, count and size final.
END_OF_MESSAGE = (
    b"request=smtpd_access_policy\nprotocol_state=END-OF-MESSAGE\nprotocol_name=ESMTP\n"
    b"helo_name=some.domain.tld\nqueue_id=8045F2AB23\nsender=foo@bar.tld\nrecipient=\n"
    b"recipient_count=2\nclient_address=1.2.3.4\ninstance=123.456.7\nsasl_method=plain\n"
    b"sasl_username=you\nsasl_sender=\nsize=48213\nstress=\n\n"
)
# An unauthenticated client at its first RCPT: no queue file yet, null sender, no SIZE.
UNAUTHENTICATED = (
    b"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=SMTP\nhelo_name=[10.0.0.9]\n"
    b"queue_id=\nsender=\nrecipient=postmaster@example.com\nrecipient_count=0\nclient_address=10.0.0.9\n"
    b"client_name=unknown\ninstance=2f1.6651b0a3.9c4d2.0\nsasl_method=\nsasl_username=\nsasl_sender=\n"
    b"size=0\n\n"
)
# Values as the protocol allows them: "=" inside, SMTPUTF8 text, raw 8-bit, a CR kept, a new name.
ODD_VALUES = (
    b"request=smtpd_access_policy\n"
    b"sender=a=b@x.example\n"
    b"policy_context=k=v;w==\n"
    b"recipient=j\xc3\xbcrgen@b\xc3\xbccher.example\n"
    b"helo_name=M\xfcller\n"
    b"client_name=host\r\n"
    b"x_future_attribute=kept as sent\n"
    b"\n"
)
TRANSCRIPTS = [RCPT_FULL, END_OF_MESSAGE, UNAUTHENTICATED, ODD_VALUES]


def decode(stream: bytes, size: int | None = None) -> list[PolicyRequest]:
    decoder = PolicyDecoder()
    step = size or max(len(stream), 1)
    out: list[PolicyRequest] = []
    for at in range(0, len(stream), step):
        out += decoder.feed(stream[at : at + step])
    assert decoder.pending == 0
    return out


def test_the_full_request_decodes_to_every_attribute_in_order() -> None:
    [request] = decode(RCPT_FULL)
    assert list(request.attributes.items()) == list(RCPT_FULL_ATTRIBUTES.items())
    assert request.repeated == frozenset()


@pytest.mark.parametrize("size", [None, 4096, 128, 16, 1], ids=lambda size: f"chunk-{size or 'whole'}")
@pytest.mark.parametrize("stream", [pytest.param(t, id=f"transcript-{n}") for n, t in enumerate(TRANSCRIPTS)])
def test_chunk_size_does_not_change_the_values(stream: bytes, size: int | None) -> None:
    assert decode(stream, size) == decode(stream)
    assert len(decode(stream, size)) == 1


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        pytest.param(
            RCPT_FULL,
            ("smtpd_access_policy", "RCPT", "you", "foo@bar.tld", "bar@foo.tld", "8045F2AB23", "123.456.7", 12345, 0),
            id="authenticated-rcpt",
        ),
        pytest.param(
            END_OF_MESSAGE,
            ("smtpd_access_policy", "END-OF-MESSAGE", "you", "foo@bar.tld", None, "8045F2AB23", "123.456.7", 48213, 2),
            id="end-of-message-two-recipients",
        ),
        pytest.param(
            UNAUTHENTICATED,
            ("smtpd_access_policy", "RCPT", None, "", "postmaster@example.com", None, "2f1.6651b0a3.9c4d2.0", 0, 0),
            id="no-login-null-sender-no-queue-id",
        ),
        pytest.param(b"x_other=1\n\n", (None, None, None, None, None, None, None, None, None), id="nothing-known-sent"),
    ],
)
def test_typed_helpers(stream: bytes, expected: tuple[object, ...]) -> None:
    [request] = decode(stream)
    got = (
        request.request,
        request.state,
        request.sasl_username,
        request.sender,
        request.recipient,
        request.queue_id,
        request.instance,
        request.size,
        request.recipient_count,
    )
    assert got == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("sender", "a=b@x.example", id="split-at-the-first-equals"),
        pytest.param("policy_context", "k=v;w==", id="equals-signs-kept"),
        pytest.param("recipient", "jürgen@bücher.example", id="utf8-decoded"),
        pytest.param("helo_name", "M\udcfcller", id="latin1-surrogate-escaped"),
        pytest.param("client_name", "host\r", id="cr-at-end-is-data"),
        pytest.param("x_future_attribute", "kept as sent", id="unknown-name-kept"),
    ],
)
def test_odd_values(name: str, value: str) -> None:
    [request] = decode(ODD_VALUES)
    assert request.get(name) == value


def test_raw_bytes_come_back_from_the_text() -> None:
    [request] = decode(ODD_VALUES)
    assert request.attributes["helo_name"].encode("utf-8", "surrogateescape") == b"M\xfcller"
    assert encode_request(request.attributes) == ODD_VALUES


def test_several_requests_in_one_buffer_come_out_in_order() -> None:
    stream = b"".join(TRANSCRIPTS)
    assert decode(stream) == [decode(t)[0] for t in TRANSCRIPTS]


def test_a_stream_split_anywhere_decodes_the_same() -> None:
    stream = END_OF_MESSAGE + UNAUTHENTICATED
    whole = decode(stream)
    assert len(whole) == 2
    for cut in range(len(stream) + 1):
        decoder = PolicyDecoder()
        first = decoder.feed(stream[:cut])
        held = cut if cut < len(END_OF_MESSAGE) else cut - len(END_OF_MESSAGE)
        assert decoder.pending == (0 if cut == len(stream) else held), cut
        assert first + decoder.feed(stream[cut:]) == whole, cut


def test_a_request_is_returned_as_soon_as_its_empty_line_arrives() -> None:
    decoder = PolicyDecoder()
    assert decoder.feed(END_OF_MESSAGE[:-1]) == []
    assert decoder.pending == len(END_OF_MESSAGE) - 1
    assert len(decoder.feed(b"\n")) == 1
    assert decoder.pending == 0


def test_a_repeated_name_keeps_the_last_value_and_is_listed() -> None:
    [request] = decode(b"sasl_username=first\nsender=\nsasl_username=last\n\n")
    assert request.sasl_username == "last"
    assert request.repeated == frozenset({"sasl_username"})
    assert list(request.attributes) == ["sasl_username", "sender"]


def test_the_attributes_are_read_only() -> None:
    [request] = decode(END_OF_MESSAGE)
    with pytest.raises(TypeError):
        request.attributes["sasl_username"] = "admin"  # type: ignore[index]


@pytest.mark.parametrize(
    ("stream", "problem"),
    [
        pytest.param(b"request=x\nno equals sign\n\n", "attribute line 2 has no '='", id="line-without-equals"),
        pytest.param(b"request=x\r\n\r\n", "attribute line 2 has no '='", id="crlf-is-not-an-empty-line"),
        pytest.param(b"=value\n\n", "has a name that is not", id="empty-name"),
        pytest.param(b"na me=v\n\n", "has a name that is not", id="space-in-name"),
        pytest.param("n\u00e4me=v\n\n".encode(), "has a name that is not", id="non-ascii-name"),
        pytest.param(b"n" * 65 + b"=v\n\n", "has a name that is not", id="name-too-long"),
        pytest.param(b"sasl_username=ad\0min\n\n", "attribute sasl_username contains a NUL byte", id="nul-in-value"),
        pytest.param(b"n\0=v\n\n", "has a name that is not", id="nul-in-name"),
        pytest.param(b"\n", "empty request", id="empty-request"),
        pytest.param(END_OF_MESSAGE + b"\n", "empty request", id="extra-empty-line-after-a-request"),
        pytest.param(b"size=12k\n\n", "attribute size is not a decimal number", id="size-not-a-number"),
        pytest.param(b"size=-1\n\n", "attribute size is not a decimal number", id="size-negative"),
        pytest.param("size=\u0661\u0662\n\n".encode(), "attribute size is not", id="size-arabic-digits"),
        pytest.param(b"recipient_count=" + b"9" * 21 + b"\n\n", "recipient_count is not", id="count-21-digits"),
    ],
)
def test_protocol_errors(stream: bytes, problem: str) -> None:
    for size in (None, 1):
        with pytest.raises(PolicyProtocolError, match=problem):
            decode(stream, size)


def test_the_largest_numbers_postfix_prints_are_read() -> None:
    [request] = decode(b"size=18446744073709551615\nrecipient_count=\n\n")
    assert request.size == 2**64 - 1
    assert request.recipient_count is None


def test_after_an_error_the_decoder_holds_nothing_and_refuses_more() -> None:
    decoder = PolicyDecoder()
    with pytest.raises(PolicyProtocolError) as caught:
        decoder.feed(END_OF_MESSAGE + UNAUTHENTICATED + b"bad line\nrequest=")
    assert caught.value.requests == (decode(END_OF_MESSAGE)[0], decode(UNAUTHENTICATED)[0])
    assert decoder.pending == 0
    with pytest.raises(PolicyProtocolError, match="already broken: attribute line 1 has no '='"):
        decoder.feed(END_OF_MESSAGE)


@pytest.mark.parametrize(
    ("action", "reply"),
    [
        pytest.param("DUNNO", b"action=DUNNO\n\n", id="dunno"),
        pytest.param("452 4.5.3 Too many recipients", b"action=452 4.5.3 Too many recipients\n\n", id="numeric-reply"),
        pytest.param("REJECT a=b\tc", b"action=REJECT a=b\tc\n\n", id="equals-and-tab-kept"),
        pytest.param("REJECT Jürgen", "action=REJECT Jürgen\n\n".encode(), id="utf8"),
        pytest.param("x" * MAX_ACTION_BYTES, b"action=" + b"x" * MAX_ACTION_BYTES + b"\n\n", id="at-the-bound"),
    ],
)
def test_encode_reply(action: str, reply: bytes) -> None:
    assert encode_reply(action) == reply


@pytest.mark.parametrize(
    ("action", "problem"),
    [
        pytest.param("", "empty policy action", id="empty"),
        pytest.param("  ", "empty policy action", id="blank"),
        pytest.param("REJECT a\n\naction=OK", "control character '\\\\n'", id="newline-would-forge-a-reply"),
        pytest.param("REJECT a\r", "control character '\\\\r'", id="cr"),
        pytest.param("REJECT a\0b", "control character '\\\\x00'", id="nul"),
        pytest.param("REJECT \x7f", "control character '\\\\x7f'", id="del"),
        pytest.param("REJECT \udcfc", "not valid UTF-8", id="lone-surrogate"),
        pytest.param("x" * (MAX_ACTION_BYTES + 1), f"at most {MAX_ACTION_BYTES}", id="one-byte-too-long"),
        pytest.param("ü" * (MAX_ACTION_BYTES // 2 + 1), f"of {MAX_ACTION_BYTES + 2} bytes", id="counted-in-bytes"),
    ],
)
def test_encode_reply_refuses(action: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        encode_reply(action)


@pytest.mark.parametrize(
    ("attributes", "problem"),
    [
        pytest.param({}, "at least one attribute", id="nothing"),
        pytest.param({"a=b": "v"}, "not 1-64 printable ASCII", id="equals-in-name"),
        pytest.param({"a": "x\ny=z"}, "newline or NUL", id="newline-in-value"),
        pytest.param({"a": "x\0"}, "newline or NUL", id="nul-in-value"),
    ],
)
def test_encode_request_refuses_what_postfix_cannot_send(attributes: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        encode_request(attributes)


def test_encode_request_round_trips_through_the_decoder() -> None:
    pairs = [("request", "smtpd_access_policy"), ("sender", ""), ("recipient", "a=b@c")]
    assert encode_request(pairs) == b"request=smtpd_access_policy\nsender=\nrecipient=a=b@c\n\n"
    assert dict(decode(encode_request(pairs))[0].attributes) == dict(pairs)


_LINE = st.one_of(
    st.builds(
        lambda name, value: name + b"=" + value,
        st.sampled_from([b"size", b"recipient_count", b"sender", b"a", b"x" * 64, b"x" * 65, b"na=me"]),
        st.binary(max_size=12),
    ),
    st.binary(max_size=20).filter(lambda raw: b"\n" not in raw),
)


@given(st.lists(st.lists(_LINE, max_size=6), min_size=1, max_size=4))
def test_the_whole_request_path_and_the_line_path_agree(requests: list[list[bytes]]) -> None:
    # Every chunk split, valid or not: one chunk takes the whole-request path where it can, one
    # byte at a time never can; both must decode the same requests and break at the same one.
    stream = b"".join(b"".join(line + b"\n" for line in lines) + b"\n" for lines in requests)

    def decode(pieces: list[bytes]) -> tuple[list[PolicyRequest], str | None]:
        decoder, found = PolicyDecoder(), []
        try:
            for piece in pieces:
                found += decoder.feed(piece)
        except PolicyProtocolError as error:
            return found + list(error.requests), str(error)
        return found, None

    whole = decode([stream])
    by_byte = decode([stream[i : i + 1] for i in range(len(stream))])
    assert whole[0] == by_byte[0]
    assert (whole[1] is None) == (by_byte[1] is None)
