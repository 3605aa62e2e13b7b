"""Hostile peers on the policy socket: each bound of core/policy_protocol.py, what it holds and its cost.

Anyone who can reach the socket (a local user on an inet: listener, a bug in a client) can write
any bytes; the decoder must refuse them quickly and never hold more than one bounded request.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from smtpplus_milter.core.policy_protocol import (
    MAX_ATTRIBUTES,
    MAX_REQUEST_BYTES,
    PolicyDecoder,
    PolicyProtocolError,
)

FAST = 0.5  # generous for a loaded 2-core machine; an ordinary request decodes in microseconds
# Fed a byte at a time, reaching the 64 KiB bound takes 65,536 calls (0.15 s measured, idle machine).
FAST_BYTEWISE = 1.5
MIB = 1024 * 1024


def chunks(stream: bytes, size: int) -> Iterator[bytes]:
    for at in range(0, len(stream), size):
        yield stream[at : at + size]


def feed_until_refused(stream: bytes, size: int, budget: float) -> tuple[PolicyDecoder, PolicyProtocolError, int]:
    """Feed *stream* in chunks of *size*; the error, and the most bytes the decoder held meanwhile."""
    decoder = PolicyDecoder()
    most = 0
    started = time.perf_counter()
    try:
        for chunk in chunks(stream, size):
            decoder.feed(chunk)
            most = max(most, decoder.pending)
    except PolicyProtocolError as error:
        elapsed = time.perf_counter() - started
        assert elapsed < budget, f"took {elapsed:.2f} s"
        return decoder, error, most
    raise AssertionError("the decoder accepted the whole stream")


@pytest.mark.parametrize(
    ("stream", "problem"),
    [
        pytest.param(b"x" * MIB, f"request over {MAX_REQUEST_BYTES} bytes", id="one-mib-without-newline"),
        pytest.param(b"n=" + b"v" * MIB + b"\n\n", f"request over {MAX_REQUEST_BYTES} bytes", id="one-mib-value"),
        pytest.param(b"n=v\n" * (MIB // 4), f"more than {MAX_ATTRIBUTES} attributes", id="endless-short-lines"),
        pytest.param(
            b"".join(b"a%d=%s\n" % (n, b"v" * 200) for n in range(MAX_ATTRIBUTES)) + b"\n",
            f"request over {MAX_REQUEST_BYTES} bytes",
            id="under-the-count-over-the-bytes",
        ),
        pytest.param(
            b"".join(b"x_%d=v\n" % n for n in range(10_000)) + b"\n",
            f"more than {MAX_ATTRIBUTES} attributes",
            id="ten-thousand-attributes",
        ),
        pytest.param(b"\n" * MIB, "empty request", id="flood-of-empty-lines"),
        pytest.param(b"\0" * MIB, f"request over {MAX_REQUEST_BYTES} bytes", id="one-mib-of-nul"),
        pytest.param(b"request=x\nsender=" + b"\0" * MIB + b"\n\n", "request over", id="nul-flood-in-a-value"),
        pytest.param(b"sender=a\0b\n\n", "contains a NUL byte", id="nul-in-a-value"),
        pytest.param(b"\r\n" * (MIB // 2), "has no '='", id="crlf-flood"),
        pytest.param(b"=" * MIB, f"request over {MAX_REQUEST_BYTES} bytes", id="equals-flood"),
        pytest.param(b"size=" + b"9" * 5000 + b"\n\n", "not a decimal number", id="huge-number"),
    ],
)
@pytest.mark.parametrize("size", [MIB * 2, 4096, 1], ids=["whole", "chunk-4096", "chunk-1"])
def test_refused_quickly_holding_at_most_one_request(stream: bytes, problem: str, size: int) -> None:
    if size == 1 and len(stream) > MAX_REQUEST_BYTES * 2:
        stream = stream[: MAX_REQUEST_BYTES * 2]  # a byte at a time, every bound is reached before
    decoder, error, most = feed_until_refused(stream, size, FAST_BYTEWISE if size == 1 else FAST)
    assert problem in str(error)
    assert most <= MAX_REQUEST_BYTES
    assert decoder.pending == 0
    with pytest.raises(PolicyProtocolError, match="already broken"):
        decoder.feed(b"request=smtpd_access_policy\n\n")


def test_a_request_exactly_at_the_bound_is_accepted() -> None:
    head = b"request=smtpd_access_policy\nx="
    stream = head + b"v" * (MAX_REQUEST_BYTES - len(head) - 2) + b"\n\n"
    assert len(stream) == MAX_REQUEST_BYTES
    decoder = PolicyDecoder()
    [request] = decoder.feed(stream)
    assert len(request.attributes["x"]) == MAX_REQUEST_BYTES - len(head) - 2
    with pytest.raises(PolicyProtocolError, match="request over"):
        PolicyDecoder().feed(stream[:-2] + b"v\n\n")


def test_exactly_the_attribute_bound_is_accepted() -> None:
    stream = b"".join(b"x_%d=v\n" % n for n in range(MAX_ATTRIBUTES)) + b"\n"
    [request] = PolicyDecoder().feed(stream)
    assert len(request.attributes) == MAX_ATTRIBUTES


def test_many_requests_on_one_connection_hold_nothing_between_them() -> None:
    request = b"request=smtpd_access_policy\nprotocol_state=RCPT\nsasl_username=u\n\n"
    decoder = PolicyDecoder()
    started = time.perf_counter()
    total = 0
    for chunk in chunks(request * 20_000, 4096):
        total += len(decoder.feed(chunk))
        assert decoder.pending < len(request)
    assert total == 20_000
    assert decoder.pending == 0
    assert time.perf_counter() - started < 4 * FAST
