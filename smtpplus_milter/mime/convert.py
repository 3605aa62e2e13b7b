"""The missing variant of a banner: plain text as HTML, and HTML as plain text.

A list may configure only ``text`` or only ``html`` for its header or footer, while a message may
carry both a text/plain and a text/html part. Rather than leave one of them bare, the other
variant is derived:

- text -> HTML: HTML-escaped, line breaks as ``<br>``, wrapped in one ``<p>``;
- HTML -> text: tags stripped with the stdlib ``html.parser`` (entities decoded, ``<script>`` and
  ``<style>`` dropped, block elements and ``<br>`` become line breaks, runs of blank lines and
  spaces collapsed). Links keep their text only; an operator who wants the URL in the text part
  configures the ``text`` variant.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

_BLOCK_TAGS = frozenset(
    {"p", "div", "br", "tr", "li", "ul", "ol", "table", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "blockquote", "pre"}
)
_SKIP_TAGS = frozenset({"script", "style", "head", "title"})


def text_to_html(text: str) -> str:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").strip("\n").split("\n")
    return "<p>" + "<br>\n".join(html.escape(line) for line in lines) + "</p>"


def html_to_text(markup: str) -> str:
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    lines = ["".join(line).strip() for line in parser.lines]
    text = "\n".join(" ".join(line.split()) for line in lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[list[str]] = [[]]
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skipping += 1
        elif tag in _BLOCK_TAGS:
            self.lines.append([])

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK_TAGS:
            self.lines.append([])

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skipping = max(0, self._skipping - 1)
        elif tag in _BLOCK_TAGS and tag != "br":
            self.lines.append([])

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.lines[-1].append(data)
