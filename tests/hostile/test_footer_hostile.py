"""Hostile bodies for the footer injector: each must finish fast and leave a sane result.

Before the bounds, some of these ran for minutes while holding the GIL, which no in-process
timeout can interrupt (a signal handler or watchdog thread needs the GIL too). So every timed case
runs ``inject`` in a forked child: the parent waits up to ``HARD_TIMEOUT`` seconds, kills the
child if it is still busy, and then asserts on the time the child measured for ``inject`` alone.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

import pytest

from smtpplus_milter.mime.footer import Banner, InjectionResult, inject

MARKER = "smtpplus-footer"
BANNER = Banner(header_html="<p>BANNER</p>", footer_html="<p>FOOTER</p>", header_text="BANNER", footer_text="FOOTER")
FAST = 2.0  # seconds; the fixed code takes well under 0.5 s for every case here
HARD_TIMEOUT = 30.0  # seconds before a child still busy is killed (the unfixed code took minutes)
MB = 1_000_000


def _child(call: Callable[[], InjectionResult], conn: Connection) -> None:
    started = time.perf_counter()
    try:
        result: InjectionResult | str = call()
    except BaseException as exc:  # inject must not raise; report it rather than look like a hang
        result = f"inject raised {exc!r}"
    conn.send((time.perf_counter() - started, result))


def timed(call: Callable[[], InjectionResult]) -> tuple[float, InjectionResult]:
    """(seconds ``call`` took, its result), run in a forked child that is killed after HARD_TIMEOUT."""
    parent, child_end = multiprocessing.get_context("fork").Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(target=_child, args=(call, child_end), daemon=True)
    child.start()
    child_end.close()  # so that a child that dies shows up as EOF, not as a hang
    try:
        if not parent.poll(HARD_TIMEOUT):
            pytest.fail(f"inject still running after {HARD_TIMEOUT} s (killed)")
        elapsed, result = parent.recv()
        assert isinstance(result, InjectionResult), result
        return float(elapsed), result
    finally:
        child.kill()
        child.join()


def html_body(html: str, charset: str = "utf-8") -> tuple[list[tuple[str, str]], bytes]:
    return [("Content-Type", f"text/html; charset={charset}")], html.encode("utf-8")


def run_of(piece: str, size: int = MB) -> str:
    """``piece`` repeated to about ``size`` characters, in lines of 100 pieces (a body line may not exceed 998 octets)."""
    line = piece * 100 + "\n"
    return line * (size // len(line) + 1)


@pytest.mark.parametrize("piece", [pytest.param("<body ", id="body-run"), pytest.param("<html ", id="html-run")])
def test_tag_run_without_gt_is_linear(piece: str) -> None:
    text = run_of(piece)  # just over 1 MB, no ">" anywhere
    headers, body = html_body(text)
    elapsed, result = timed(lambda: inject(headers, body, BANNER, marker=MARKER))
    assert elapsed < FAST, f"{elapsed:.2f} s"
    assert result.status == "added", result.reason
    assert result.body is not None
    new = result.body.decode("utf-8")
    # No usable tag: the banner goes at the very start, the footer at the very end, the run in between.
    assert new.startswith(f"<!-- {MARKER} -->\n<p>BANNER</p>\n" + piece)
    assert new.endswith(piece + f"\n<!-- {MARKER} -->\n<p>FOOTER</p>\n")
    assert new.count(piece) == text.count(piece)


def test_body_run_ended_by_a_late_gt_is_linear() -> None:
    text = run_of("<body ") + "><p>x</p></body>\n"
    headers, body = html_body(text)
    elapsed, result = timed(lambda: inject(headers, body, BANNER, marker=MARKER))
    assert elapsed < FAST, f"{elapsed:.2f} s"
    assert result.status == "added", result.reason
    assert result.body is not None
    new = result.body.decode("utf-8")
    assert new.startswith(text[:1000])  # the banner is not before the (garbled) body tag
    assert f"<body \n>\n<!-- {MARKER} -->\n<p>BANNER</p>\n<p>x</p>" in new
    assert new.index("<p>FOOTER</p>") < new.rindex("</body>")


@pytest.mark.parametrize(
    "piece",
    [
        pytest.param("</body ", id="close-body-run"),
        pytest.param("<bodyx", id="bodyx-run"),
        pytest.param("</head\t", id="head-run"),
    ],
)
def test_other_tag_runs_are_linear(piece: str) -> None:
    text = "<html><head>\n" + run_of(piece) + "<p>x</p></html>\n"
    headers, body = html_body(text)
    elapsed, result = timed(lambda: inject(headers, body, BANNER, marker=MARKER))
    assert elapsed < FAST, f"{elapsed:.2f} s"
    assert result.status == "added", result.reason


def test_html_over_the_size_bound_is_left_unchanged() -> None:
    line = "<p>" + "x" * 90 + "</p>\n"
    text = "<html><body>\n" + line * (3 * MB // len(line)) + "</body></html>\n"  # about 3 MB
    headers, body = html_body(text)
    elapsed, result = timed(lambda: inject(headers, body, BANNER, marker=MARKER))
    assert elapsed < FAST, f"{elapsed:.2f} s"
    assert (result.status, result.body, result.header_changes) == ("unchanged-limit", None, ())
    assert "text/html part" in result.reason and f"bound of {2 * 1024 * 1024} (MAX_HTML_BYTES)" in result.reason


@pytest.mark.parametrize(
    ("content_type", "keyword", "name"),
    [
        pytest.param("text/html", "max_html_bytes", "MAX_HTML_BYTES", id="html"),
        pytest.param("text/plain", "max_text_bytes", "MAX_TEXT_BYTES", id="text"),
    ],
)
def test_size_bounds_are_keywords_and_count_decoded_bytes(content_type: str, keyword: str, name: str) -> None:
    headers = [("Content-Type", content_type), ("Content-Transfer-Encoding", "quoted-printable")]
    body = b"=41" * 300  # 900 octets on the wire, 300 decoded
    assert inject(headers, body, BANNER, marker=MARKER, **{keyword: 300}).status == "added"  # type: ignore[arg-type]
    result = inject(headers, body, BANNER, marker=MARKER, **{keyword: 299})  # type: ignore[arg-type]
    assert (result.status, result.body) == ("unchanged-limit", None)
    assert result.reason == f"the {content_type} part is 300 bytes decoded, over the bound of 299 ({name})"


def test_time_budget_leaves_the_message_unchanged() -> None:
    attachment = b"Content-Type: application/octet-stream\r\n\r\nAAAA\r\n"
    body = (
        b"".join(b"--B\r\n" + attachment for _ in range(500))
        + b"--B\r\nContent-Type: text/plain\r\n\r\nHi\r\n--B--\r\n"
    )
    headers = [("Content-Type", "multipart/mixed; boundary=B")]
    assert inject(headers, body, BANNER, marker=MARKER).status == "added"
    result = inject(headers, body, BANNER, marker=MARKER, time_budget=1e-6)
    assert (result.status, result.body) == ("unchanged-limit", None)
    assert result.reason == "the CPU time budget of 1e-06 s per injection was spent"


def test_deadline_counts_the_clock_it_is_given() -> None:
    from smtpplus_milter.mime.limits import Deadline, LimitExceeded

    now = [100.0]
    deadline = Deadline(2.0, clock=lambda: now[0])
    now[0] = 102.0
    deadline.check()  # exactly at the budget: still allowed
    now[0] = 102.5
    with pytest.raises(LimitExceeded, match="budget of 2 s"):
        deadline.check()


@pytest.mark.parametrize("where", [pytest.param("part", id="part-header"), pytest.param("top", id="top-level-header")])
def test_quadratic_header_parameters_are_bounded(where: str) -> None:
    # email.message._parseparam recounts quotes from the start for every ';' inside a quoted value.
    value = 'inline; filename="' + ";\r\n " * 40_000 + 'x.txt"'
    if where == "part":
        headers = [("Content-Type", "multipart/mixed; boundary=B")]
        part = f"Content-Type: text/plain\r\nContent-Disposition: {value}\r\n\r\nHi\r\n".encode()
        body = b"--B\r\n" + part + b"--B--\r\n"
        bound = "header block"
    else:
        headers = [("Content-Type", "text/plain"), ("Content-Disposition", value)]
        body = b"Hi\r\n"
        bound = "Content-Disposition header"
    elapsed, result = timed(lambda: inject(headers, body, BANNER, marker=MARKER))
    assert elapsed < FAST, f"{elapsed:.2f} s"
    assert (result.status, result.body) == ("unchanged-limit", None)
    assert bound in result.reason and "bound of 8192 (MAX_HEADER_BYTES)" in result.reason


PYTHON_ONLY_CODECS = [
    "unicode_escape",
    "raw_unicode_escape",
    "rot13",
    "rot_13",
    "hex",
    "base64",
    "zlib",
    "uu",
    "bz2",
    "quopri",
    "punycode",
    "idna",
    "utf-8-sig",
    "utf_8",
    "utf8",
    "latin_1",
    "cp65001",
    "mbcs",
    "undefined",
    "palmos",
    "oem",
]


@pytest.mark.parametrize("codec", [pytest.param(codec, id=codec) for codec in PYTHON_ONLY_CODECS])
@pytest.mark.parametrize("subtype", ["plain", "html"])
def test_python_only_codecs_are_not_charsets(codec: str, subtype: str) -> None:
    headers = [("Content-Type", f'text/{subtype}; charset="{codec}"')]
    body = b"Total: \\x41\\r\\nline two\r\n"  # unicode_escape would read "\x41" as "A" and "\r\n" as a line break
    result = inject(headers, body, BANNER, marker=MARKER)
    assert (result.status, result.body, result.header_changes) == ("unchanged-malformed", None, ())
    assert (
        result.reason == f"unknown charset {codec!r} in the text/{subtype} part (not an IANA-registered MIME charset)"
    )


def test_many_empty_parts_stop_at_the_part_cap() -> None:
    body = b"--B\r\n\r\n" * 300_000 + b"--B--\r\n"  # 300,000 empty parts in 2.1 MB
    headers = [("Content-Type", "multipart/mixed; boundary=B")]
    elapsed, result = timed(lambda: inject(headers, body, BANNER, marker=MARKER))
    assert elapsed < FAST, f"{elapsed:.2f} s"
    assert (result.status, result.body) == ("unchanged-malformed", None)
    assert result.reason == "more than 1000 MIME parts (MAX_PARTS)"


@pytest.mark.parametrize(("count", "status"), [(1000, "added"), (1001, "unchanged-malformed")])
def test_part_cap_counts_every_level(count: int, status: str) -> None:
    # 10 nested multiparts of (count - 10) / 10 attachments each, the text part first: all levels count.
    leaf = b"Content-Type: application/octet-stream\r\n\r\nAAAA\r\n"
    per_level, extra = divmod(count - 11, 10)
    inner = b"".join(b"--in\r\n" + leaf for _ in range(per_level)) + b"--in--\r\n"
    nested = b"Content-Type: multipart/mixed; boundary=in\r\n\r\n" + inner
    body = b"--B\r\nContent-Type: text/plain\r\n\r\nHi\r\n" + b"".join(b"--B\r\n" + nested for _ in range(10))
    body += b"".join(b"--B\r\n" + leaf for _ in range(extra)) + b"--B--\r\n"
    headers = [("Content-Type", "multipart/mixed; boundary=B")]
    result = inject(headers, body, BANNER, marker=MARKER)
    assert result.status == status, result.reason
    assert inject(headers, body, BANNER, marker=MARKER, max_parts=count).status == "added"
    assert (
        inject(headers, body, BANNER, marker=MARKER, max_parts=count - 1).reason
        == f"more than {count - 1} MIME parts (MAX_PARTS)"
    )


def test_twenty_megabytes_of_empty_lines_are_scanned_fast() -> None:
    # The line-length check took one Python step per line: 10 million empty lines, 6.4 s.
    headers = [("Content-Type", "multipart/mixed; boundary=B")]
    body = (
        b"--B\r\nContent-Type: text/plain\r\n\r\nHi\r\n--B\r\nContent-Type: application/octet-stream\r\n\r\n"
        + b"\r\n" * 10_000_000
        + b"--B--\r\n"
    )
    elapsed, result = timed(lambda: inject(headers, body, BANNER, marker=MARKER))
    assert elapsed < FAST, f"{elapsed:.2f} s"
    assert result.status == "added", result.reason
    assert result.body is not None and result.body.endswith(b"\r\n" * 1000 + b"--B--\r\n")


def test_a_huge_part_without_a_blank_line_is_scanned_fast() -> None:
    # Finding the end of a part's header block took one Python step per line: 6 million lines, 4.8 s.
    headers = [("Content-Type", "multipart/mixed; boundary=B")]
    body = (
        b"--B\r\nContent-Type: text/plain\r\n\r\nHi\r\n--B\r\nContent-Type: application/octet-stream\r\n"
        + b"a\r\n" * 6_000_000
        + b"--B--\r\n"
    )
    elapsed, result = timed(lambda: inject(headers, body, BANNER, marker=MARKER))
    assert elapsed < FAST, f"{elapsed:.2f} s"
    assert (result.status, result.body) == ("unchanged-limit", None)
    assert result.reason == "a MIME part header block of 18000038 bytes, over the bound of 8192 (MAX_HEADER_BYTES)"
