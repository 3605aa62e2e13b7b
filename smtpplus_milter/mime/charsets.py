"""Which ``charset=`` labels a part we rewrite may carry, and the Python codec that reads each.

Only IANA-registered MIME charset names and their IANA-registered aliases count, case-insensitive.
``codecs.lookup`` alone is not a charset check: Python also has codecs that are not character
sets at all (``unicode_escape`` turns the text ``\\x41`` into ``A``, ``raw_unicode_escape``,
``punycode``, ``idna``, ``rot13``, the bytes-to-bytes ``base64``/``hex``/``zlib``/``bz2``/
``uu``/``quopri``), Python-only spellings (``latin_1``, ``utf_8``, ``utf-8-sig``, ``cp65001``)
and platform ones (``mbcs``). A part labelled with any of those would be read differently by
every mail client than by us, so it is left unchanged as malformed.

Not-registered spellings that some senders use anyway (``utf8``, ``latin-1``) are refused too:
the cost is a missing footer on such a message, counted as ``unchanged-malformed``; reading a
label differently from the recipient would cost a garbled message.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType


def _names(codec: str, *labels: str) -> dict[str, str]:
    return dict.fromkeys(labels, codec)


# IANA "Character Sets" registry names and aliases -> the Python codec with the same mapping.
IANA_CHARSETS: Mapping[str, str] = MappingProxyType(
    {
        **_names(
            "ascii",
            "us-ascii",
            "ansi_x3.4-1968",
            "ansi_x3.4-1986",
            "iso_646.irv:1991",
            "iso646-us",
            "us",
            "ibm367",
            "cp367",
            "csascii",
            "iso-ir-6",
        ),
        **_names("utf_8", "utf-8", "csutf8"),
        **_names("utf_7", "utf-7", "csutf7"),
        **_names("utf_16", "utf-16", "csutf16"),
        **_names("utf_16_be", "utf-16be", "csutf16be"),
        **_names("utf_16_le", "utf-16le", "csutf16le"),
        **_names("utf_32", "utf-32", "csutf32"),
        **_names("utf_32_be", "utf-32be", "csutf32be"),
        **_names("utf_32_le", "utf-32le", "csutf32le"),
        **_names(
            "latin_1",
            "iso-8859-1",
            "iso_8859-1",
            "iso_8859-1:1987",
            "iso-ir-100",
            "latin1",
            "l1",
            "ibm819",
            "cp819",
            "csisolatin1",
        ),
        **_names(
            "iso8859_2", "iso-8859-2", "iso_8859-2", "iso_8859-2:1987", "iso-ir-101", "latin2", "l2", "csisolatin2"
        ),
        **_names(
            "iso8859_3", "iso-8859-3", "iso_8859-3", "iso_8859-3:1988", "iso-ir-109", "latin3", "l3", "csisolatin3"
        ),
        **_names(
            "iso8859_4", "iso-8859-4", "iso_8859-4", "iso_8859-4:1988", "iso-ir-110", "latin4", "l4", "csisolatin4"
        ),
        **_names(
            "iso8859_5", "iso-8859-5", "iso_8859-5", "iso_8859-5:1988", "iso-ir-144", "cyrillic", "csisolatincyrillic"
        ),
        **_names(
            "iso8859_6",
            "iso-8859-6",
            "iso_8859-6",
            "iso_8859-6:1987",
            "iso-ir-127",
            "ecma-114",
            "asmo-708",
            "arabic",
            "csisolatinarabic",
        ),
        **_names(
            "iso8859_7",
            "iso-8859-7",
            "iso_8859-7",
            "iso_8859-7:1987",
            "iso-ir-126",
            "elot_928",
            "ecma-118",
            "greek",
            "greek8",
            "csisolatingreek",
        ),
        **_names(
            "iso8859_8", "iso-8859-8", "iso_8859-8", "iso_8859-8:1988", "iso-ir-138", "hebrew", "csisolatinhebrew"
        ),
        **_names(
            "iso8859_9", "iso-8859-9", "iso_8859-9", "iso_8859-9:1989", "iso-ir-148", "latin5", "l5", "csisolatin5"
        ),
        **_names("iso8859_10", "iso-8859-10", "iso_8859-10:1992", "iso-ir-157", "latin6", "l6", "csisolatin6"),
        **_names("iso8859_13", "iso-8859-13", "csiso885913"),
        **_names(
            "iso8859_14",
            "iso-8859-14",
            "iso_8859-14",
            "iso_8859-14:1998",
            "iso-ir-199",
            "latin8",
            "iso-celtic",
            "l8",
            "csiso885914",
        ),
        **_names("iso8859_15", "iso-8859-15", "iso_8859-15", "latin-9", "csiso885915"),
        **_names(
            "iso8859_16",
            "iso-8859-16",
            "iso_8859-16",
            "iso_8859-16:2001",
            "iso-ir-226",
            "latin10",
            "l10",
            "csiso885916",
        ),
        **{f"windows-{page}": f"cp{page}" for page in range(1250, 1259)},
        **{f"cswindows{page}": f"cp{page}" for page in range(1250, 1259)},
        **_names("cp874", "windows-874", "cswindows874"),
        **_names("koi8_r", "koi8-r", "cskoi8r"),
        **_names("koi8_u", "koi8-u", "cskoi8u"),
        **_names("shift_jis", "shift_jis", "ms_kanji", "csshiftjis"),
        **_names("cp932", "windows-31j", "cswindows31j"),
        **_names("euc_jp", "euc-jp", "extended_unix_code_packed_format_for_japanese", "cseucpkdfmtjapanese"),
        **_names("iso2022_jp", "iso-2022-jp", "csiso2022jp"),
        **_names("iso2022_jp_2", "iso-2022-jp-2", "csiso2022jp2"),
        **_names("iso2022_kr", "iso-2022-kr", "csiso2022kr"),
        **_names("euc_kr", "euc-kr", "cseuckr"),
        # Korean mailers send Windows code page 949 (a superset of EUC-KR) under this label, and HTML
        # engines read it so (WHATWG); Python alone would read it as plain EUC-KR.
        **_names("cp949", "ks_c_5601-1987", "ks_c_5601-1989", "ksc_5601", "iso-ir-149", "korean", "csksc56011987"),
        **_names("gb2312", "gb2312", "csgb2312"),
        **_names("gbk", "gbk", "cp936", "ms936", "windows-936", "csgbk"),
        **_names("gb18030", "gb18030", "csgb18030"),
        **_names("hz", "hz-gb-2312"),
        **_names("big5", "big5", "csbig5"),
        **_names("big5hkscs", "big5-hkscs", "csbig5hkscs"),
        **_names("tis_620", "tis-620", "cstis620"),
        **_names("cp437", "ibm437", "cp437", "437", "cspc8codepage437"),
        **_names("cp850", "ibm850", "cp850", "850", "cspc850multilingual"),
        **_names("cp852", "ibm852", "cp852", "852", "cspcp852"),
        **_names("cp866", "ibm866", "cp866", "866", "csibm866"),
        **_names("mac_roman", "macintosh", "mac", "csmacintosh"),
    }
)


def codec_for(label: str) -> str | None:
    """The Python codec for a ``charset=`` label, or None when it is not a registered MIME charset."""
    return IANA_CHARSETS.get(label.strip().lower())
