"""Hostile messages given to the fanout filter: each bound of core/fanout.py, its outcome and its cost.

A logged-in client writes the header section it likes; the filter must decide every copy quickly
and send what it cannot read on unchanged (never drop or bounce it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

from smtpplus_milter.core.fanout import (
    MAX_FIELDS,
    MAX_HEADER_BYTES,
    MAX_NAMED,
    MAX_PARSE_BYTES,
    Copy,
    Tag,
    make_copy,
    named,
)

# Generous for a loaded 2-core machine; the unbounded stdlib address parser takes 2-4 s on 1 MiB
# of '<', ';' or '[', and an ordinary copy costs well under a millisecond.
FAST = 0.5
TAG_LINE = b"X-SMTPPlus-Fanout: 4AbC12 bcc\r\n"
TAG = Tag("4AbC12", "bcc")
BODY = b"\r\nHello\r\n"

T = TypeVar("T")


def timed(call: Callable[[], T]) -> T:
    started = time.perf_counter()
    result = call()
    elapsed = time.perf_counter() - started
    assert elapsed < FAST, f"took {elapsed:.2f} s"
    return result


def addresses(count: int, fmt: str = '"Name {0}" <u{0}@sub.example.com>') -> bytes:
    return ",\r\n ".join(fmt.format(number) for number in range(count)).encode()


def _field_block(count: int) -> bytes:
    return b"".join(b"X-F%d: v\r\n" % number for number in range(count))


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        pytest.param(
            TAG_LINE + b"Subject: " + b"x" * MAX_HEADER_BYTES + b"\r\n" + BODY,
            f"header section over {MAX_HEADER_BYTES} bytes",
            id="one-long-field",
        ),
        pytest.param(
            TAG_LINE + b"Subject: s\r\n" + b" folded\r\n" * (MAX_HEADER_BYTES // 9) + BODY,
            f"header section over {MAX_HEADER_BYTES} bytes",
            id="a-hundred-thousand-continuation-lines",
        ),
        pytest.param(
            TAG_LINE + b"X: v\r\n" * (2 * MAX_HEADER_BYTES // 6),
            f"header section over {MAX_HEADER_BYTES} bytes",
            id="two-mib-of-fields-without-empty-line",
        ),
        pytest.param(
            TAG_LINE + b"X: v\n" * (MAX_HEADER_BYTES // 5 - 10) + BODY,
            f"more than {MAX_FIELDS} header fields",
            id="two-hundred-thousand-fields",
        ),
        pytest.param(
            TAG_LINE + _field_block(MAX_FIELDS) + BODY, f"more than {MAX_FIELDS} header fields", id="one-field-too-many"
        ),
        pytest.param(
            TAG_LINE + b"To: " + b"x@y," * (MAX_NAMED + 1) + b"\r\n" + BODY,
            f"more than {MAX_NAMED} addresses",
            id="too-many-addresses-in-to",
        ),
        pytest.param(
            TAG_LINE + b"To: a@b\r\n" + b"Cc: " + addresses(MAX_NAMED, "u{0}@x") + b"\r\n" + BODY,
            f"more than {MAX_NAMED} addresses",
            id="too-many-addresses-in-to-and-cc",
        ),
        pytest.param(
            TAG_LINE + b"To: " + addresses(5000) + b", r@example.com\r\n" + BODY,
            f"at most {MAX_PARSE_BYTES}",
            id="recipient-inside-a-huge-to",
        ),
        *(
            pytest.param(
                TAG_LINE + b"To: r@example.com " + run * (MAX_HEADER_BYTES // 2 // len(run)) + b"\r\n" + BODY,
                f"at most {MAX_PARSE_BYTES}",
                id=f"recipient-before-half-a-mib-of-{label}",
            )
            for label, run in [
                ("lt", b"<"),
                ("semicolons", b";"),
                ("brackets", b"["),
                ("quotes", b'"'),
                ("pairs", b"<>"),
            ]
        ),
    ],
)
def test_bounds_send_the_message_on_unchanged(raw: bytes, problem: str) -> None:
    copy = timed(lambda: make_copy(raw, "r@example.com"))
    assert copy.data is raw
    assert not copy.rewritten
    assert copy.problem is not None and problem in copy.problem, copy.problem


def test_a_header_section_just_inside_the_bounds_is_read() -> None:
    fields = _field_block(MAX_FIELDS - 3)
    padding = b"X-Pad: " + b"p" * (MAX_HEADER_BYTES - len(fields) - 200) + b"\r\n"
    raw = TAG_LINE + b"To: a@x\r\n" + fields + padding + BODY
    assert len(raw) - len(BODY) <= MAX_HEADER_BYTES
    copy = timed(lambda: make_copy(raw, "r@example.com"))
    assert copy == Copy(b"To: <r@example.com>\r\n" + fields + padding + BODY, TAG, True)


@pytest.mark.parametrize(
    ("recipient", "rewritten", "problem"),
    [
        pytest.param("r@example.com", True, None, id="blind-copy-found-absent-without-the-parser"),
        pytest.param("u9999@sub.example.com", False, f"at most {MAX_PARSE_BYTES}", id="named-one-over-the-parse-bound"),
    ],
)
def test_ten_thousand_addresses_are_decided(recipient: str, rewritten: bool, problem: str | None) -> None:
    raw = TAG_LINE + b"To: " + addresses(MAX_NAMED, "u{0}@sub.example.com") + b"\r\n" + BODY
    copy = timed(lambda: make_copy(raw, recipient))
    assert copy.rewritten is rewritten
    assert copy.problem is None if problem is None else (copy.problem is not None and problem in copy.problem)


@pytest.mark.parametrize(
    "run",
    [
        pytest.param(b"<", id="lt"),
        pytest.param(b";", id="semicolons"),
        pytest.param(b"[", id="brackets"),
        pytest.param(b"\\", id="backslashes"),
        pytest.param(b"()", id="comment-pairs"),
        pytest.param(b"(", id="nested-comments"),
        pytest.param(b"a@", id="at-signs"),
    ],
)
def test_hostile_syntax_within_the_parse_bound_is_decided_quickly(run: bytes) -> None:
    # The worst the parser is ever given: just under MAX_PARSE_BYTES of its slowest input, with
    # the recipient's address written in it so that the parser must run.
    filler = run * ((MAX_PARSE_BYTES - 100) // len(run))
    if run == b"a@":
        filler = filler[: 2 * (MAX_NAMED - 10)]
    raw = TAG_LINE + b"To: r@example.com, " + filler + b"\r\n" + BODY
    copy = timed(lambda: make_copy(raw, "r@example.com"))
    assert copy.tag == TAG
    assert copy.problem is None or "cannot be read" in copy.problem


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("<" * MAX_HEADER_BYTES, id="mib-of-lt"),
        pytest.param(";" * MAX_HEADER_BYTES, id="mib-of-semicolons"),
        pytest.param("," * MAX_HEADER_BYTES, id="mib-of-commas"),
        pytest.param("(" * MAX_HEADER_BYTES, id="mib-of-open-comments"),
    ],
)
def test_named_on_hostile_values_names_nobody_quickly(value: str) -> None:
    assert timed(lambda: named(["r@example.com", value])) == frozenset()


def test_a_large_body_is_never_scanned() -> None:
    body = BODY + (b"Bcc: x@y\r\nTo: z@y\r\n\r\n" + b"b" * 998 + b"\r\n") * 20_000  # about 20 MB
    raw = TAG_LINE + b"To: a@x\r\nBcc: r@example.com\r\n" + body
    copy = timed(lambda: make_copy(raw, "r@example.com"))
    assert copy == Copy(b"To: <r@example.com>\r\n" + body, TAG, True)
