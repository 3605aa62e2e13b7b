"""Where the banner and the footer go in an HTML text, found in one linear pass per rule.

The placement rules (docs/footer.md): the banner right after the first ``<body ...>`` tag; without
one, after the first ``</head>``, else after the first ``<html ...>``, else after a ``<!DOCTYPE
...>`` at the start (white space allowed before it), else at the very start. The footer right
before the last ``</body>``; without one, before the last ``</html>``, else at the end.

Tag names match in any ASCII case. An opening tag is its name followed by white space, ``/`` or
``>`` (so ``<bodyx>`` is another tag and ``<body/>`` is the body tag, as HTML parsers read it);
it ends at the first ``>`` that is not inside an attribute value quoted right after ``=``. A
closing tag is ``</name`` plus optional white space and ``>``.

Why not regular expressions: ``<body(?:\\s[^>]*)?>`` searched over ``<body `` repeated without a
``>`` retries ``[^>]*`` to the end of the text from every candidate, which is quadratic (a 1 MB
HTML part took minutes while holding the GIL). Here every candidate is found with a search for a
fixed string, and the end of an opening tag is looked for once: when the first well-formed
candidate has no end, no later one can have one either (there is no ``>`` after it, or the rest
of the text is inside an unclosed quoted value, which is how HTML parsers read it too). Closing
tags are checked with an anchored ``\\s*`` whose runs of white space never overlap. Each
character is looked at a bounded number of times, so a scan is linear in the text length.

Case-insensitive search is a fixed-string pattern with ``IGNORECASE | ASCII`` rather than
``text.lower().find``: ``str.lower`` changes the length of some characters (``"İ".lower()`` is
two code points), which would shift every index after them.
"""

from __future__ import annotations

import re
from collections.abc import Callable

Check = Callable[[], None]

_SPACES = re.compile(r"\s*")  # anchored with .match: one run, linear in its length
_TAG_STOP = re.compile(r"[>\"']")  # a single character class: each search stops at the first hit


def _literal(word: str) -> re.Pattern[str]:
    """A case-insensitive (ASCII only) search for a fixed string: linear, no backtracking."""
    return re.compile(re.escape(word), re.IGNORECASE | re.ASCII)


_BODY_OPEN = _literal("<body")
_BODY_CLOSE = _literal("</body")
_HEAD_CLOSE = _literal("</head")
_HTML_OPEN = _literal("<html")
_HTML_CLOSE = _literal("</html")
_DOCTYPE = _literal("<!doctype")


def _never() -> None:
    return None


def banner_position(text: str, check: Check = _never) -> int:
    """Index where the banner goes: just after the tag the rules above pick, else 0."""
    end = open_tag_end(text, _BODY_OPEN, check)
    if end is None:
        end = first_close_tag_end(text, _HEAD_CLOSE, check)
    if end is None:
        end = open_tag_end(text, _HTML_OPEN, check)
    if end is None:
        end = doctype_end(text)
    return 0 if end is None else end


def footer_position(text: str, check: Check = _never) -> int:
    """Index where the footer goes: at the start of the last ``</body>``, else of the last ``</html>``, else the end."""
    for pattern in (_BODY_CLOSE, _HTML_CLOSE):
        start = last_close_tag_start(text, pattern, check)
        if start is not None:
            return start
    return len(text)


def open_tag_end(text: str, name: re.Pattern[str], check: Check = _never) -> int | None:
    """Index just after the first opening tag found by ``name`` (``<body``, ``<html``), else None."""
    pos = 0
    while True:
        check()
        found = name.search(text, pos)
        if found is None:
            return None
        after = found.end()
        following = text[after : after + 1]
        if following == ">":
            return after + 1
        if following == "/" or following.isspace():
            return _attributes_end(text, after, check)  # the only candidate that needs a scan: see the docstring
        pos = after  # "<bodyx": a different tag name


def _attributes_end(text: str, pos: int, check: Check) -> int | None:
    """Index after the ``>`` that ends an opening tag whose attributes start at ``pos``, else None."""
    while True:
        check()
        stop = _TAG_STOP.search(text, pos)
        if stop is None:
            return None
        mark = stop.group()
        if mark == ">":
            return stop.end()
        # A quote opens a value only right after "=" (a quote elsewhere is part of a name or an
        # unquoted value); the slice is the stretch just passed over, so slices never overlap.
        if text[pos : stop.start()].rstrip().endswith("="):
            close = text.find(mark, stop.end())
            if close < 0:
                return None  # the rest of the text is that value
            pos = close + 1
        else:
            pos = stop.end()


def _close_tag_matches(text: str, found: re.Match[str]) -> bool:
    spaces = _SPACES.match(text, found.end())
    end = spaces.end() if spaces else found.end()
    return text[end : end + 1] == ">"


def first_close_tag_end(text: str, name: re.Pattern[str], check: Check = _never) -> int | None:
    """Index just after the first closing tag found by ``name`` (``</head``), else None."""
    for found in name.finditer(text):
        check()
        if _close_tag_matches(text, found):
            return text.index(">", found.end()) + 1
    return None


def last_close_tag_start(text: str, name: re.Pattern[str], check: Check = _never) -> int | None:
    """Index of the ``<`` of the last closing tag found by ``name`` (``</body``, ``</html``), else None."""
    last = None
    for found in name.finditer(text):
        check()
        if _close_tag_matches(text, found):
            last = found.start()
    return last


def doctype_end(text: str) -> int | None:
    """Index just after a ``<!DOCTYPE ...>`` that starts the text (after white space), else None."""
    spaces = _SPACES.match(text)
    start = spaces.end() if spaces else 0
    found = _DOCTYPE.match(text, start)
    if found is None:
        return None
    close = text.find(">", found.end())
    return None if close < 0 else close + 1
