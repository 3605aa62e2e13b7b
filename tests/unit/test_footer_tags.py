"""The linear HTML tag scan behind the banner and footer placement (mime/htmltags.py)."""

from __future__ import annotations

import pytest

from smtpplus_milter.mime.htmltags import banner_position, footer_position


def _after(text: str, piece: str) -> int:
    return text.index(piece) + len(piece)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("<html><body><p>x</p></body></html>", "<body>", id="plain-body"),
        pytest.param("<HTML><BODY BGCOLOR=white><p>x</p></BODY></HTML>", "<BODY BGCOLOR=white>", id="uppercase"),
        pytest.param("<html><BoDy\tclass='a'>x</bOdY></html>", "<BoDy\tclass='a'>", id="mixed-case-tab"),
        pytest.param(
            '<body onload="if (a > b) go()">x</body>', '<body onload="if (a > b) go()">', id="gt-in-double-quotes"
        ),
        pytest.param(
            "<body data-x = 'a>b' id=c>x</body>", "<body data-x = 'a>b' id=c>", id="gt-in-single-quotes-spaced"
        ),
        pytest.param('<body class=a"b>x</body>', '<body class=a"b>', id="quote-inside-unquoted-value"),
        pytest.param("<body/>x", "<body/>", id="self-closing-slash"),
        pytest.param('<body\n  class="m"\n>x', '<body\n  class="m"\n>', id="attributes-over-lines"),
        pytest.param("<bodyx>no</bodyx><body>yes", "<body>", id="bodyx-is-another-tag"),
        pytest.param("<html><head><title>t</title></head><p>x</p></html>", "</head>", id="head-close"),
        pytest.param("<html><head></HEAD  ><p>x</p>", "</HEAD  >", id="head-close-spaces-uppercase"),
        pytest.param("<html lang=en><p>x</p></html>", "<html lang=en>", id="html-open"),
        pytest.param("<htmlx><p>x</p>", "", id="htmlx-is-not-html"),
        pytest.param("  <!DOCTYPE html>\n<p>x</p>", "<!DOCTYPE html>", id="doctype"),
        pytest.param("<p>x</p><!doctype html>", "", id="doctype-not-at-start"),
        pytest.param("<p>hello</p>", "", id="fragment"),
        pytest.param("", "", id="empty"),
        pytest.param("<body class=x", "", id="unterminated-body-tag"),
        pytest.param('<body title="a>', "", id="unclosed-quote"),
        pytest.param("<body " * 50 + "<head></head>", "<head>", id="run-ended-by-a-later-gt"),
        pytest.param("<body " * 50, "", id="run-without-gt"),
        pytest.param("<html " * 50, "", id="html-run-without-gt"),
        pytest.param("\u0130<BODY>x", "<BODY>", id="length-changing-lowercase-before-tag"),
    ],
)
def test_banner_position(text: str, expected: str) -> None:
    assert banner_position(text) == (_after(text, expected) if expected else 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("<body>x</body></html>", "</body>", id="body-close"),
        pytest.param("<body>x</BODY >y</Body\n>z</html>", "</Body\n>", id="last-of-several-any-case"),
        pytest.param("<body>x</bodyx></html>", "</html>", id="bodyx-close-is-not-body"),
        pytest.param("<body>x</body y></html>", "</html>", id="close-tag-with-junk"),
        pytest.param("<p>x</p></HTML>", "</HTML>", id="html-close"),
        pytest.param("<p>x</p>", None, id="none-at-end"),
        pytest.param("</body", None, id="unterminated-close"),
    ],
)
def test_footer_position(text: str, expected: str | None) -> None:
    assert footer_position(text) == (len(text) if expected is None else text.rindex(expected))
