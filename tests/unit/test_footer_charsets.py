"""The charset allow-list behind footer injection (mime/charsets.py)."""

from __future__ import annotations

import codecs

import pytest

from smtpplus_milter.mime.charsets import IANA_CHARSETS, codec_for
from smtpplus_milter.mime.footer import Banner, inject


@pytest.mark.parametrize(("label", "codec"), sorted(IANA_CHARSETS.items()))
def test_every_label_maps_to_a_text_codec(label: str, codec: str) -> None:
    assert codecs.lookup(codec)._is_text_encoding  # type: ignore[attr-defined]
    assert "Total: 12".encode(codec).decode(codec) == "Total: 12"
    assert label == label.lower().strip()


@pytest.mark.parametrize(
    ("label", "codec"),
    [
        pytest.param("US-ASCII", "ascii", id="upper-case"),
        pytest.param(" utf-8 ", "utf_8", id="spaces"),
        pytest.param("Windows-1252", "cp1252", id="windows"),
        pytest.param("ISO_8859-15", "iso8859_15", id="iso-alias"),
        pytest.param("KS_C_5601-1987", "cp949", id="korean-label-is-cp949"),
        pytest.param("utf8", None, id="unregistered-spelling"),
        pytest.param("latin-1", None, id="unregistered-latin-1"),
        pytest.param("unicode_escape", None, id="python-only"),
    ],
)
def test_codec_for(label: str, codec: str | None) -> None:
    assert codec_for(label) == codec


@pytest.mark.parametrize("label", ["ISO-8859-1", "Windows-1252", "latin1", "cp850"])
def test_registered_aliases_still_get_the_footer_and_keep_their_label(label: str) -> None:
    codec = codec_for(label)
    assert codec is not None
    headers = [("Content-Type", f"text/plain; charset={label}"), ("Content-Transfer-Encoding", "8bit")]
    result = inject(headers, "Grüße\r\n".encode(codec), Banner(footer_text="Köln"), marker="m")
    assert (result.status, result.header_changes) == ("added", ())
    assert result.body == "Grüße\r\n\r\nKöln\r\n".encode(codec)
