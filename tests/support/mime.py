"""Reading a raw message the way the milter sees it, and applying the footer's header changes.

Shared by the golden-file footer tests and the property-based ones, so both judge the injected
message with the same model of what libmilter and Postfix do.
"""

from __future__ import annotations

import re


def split_message(raw: bytes) -> tuple[bytes, list[tuple[str, str]], bytes]:
    """(header block incl. its blank line, headers as the milter sees them, body)."""
    match = re.search(rb"\r?\n\r?\n", raw)
    assert match is not None
    block, body = raw[: match.end()], raw[match.end() :]
    headers: list[tuple[str, str]] = []
    for line in block.decode("utf-8", "surrogateescape").splitlines(keepends=True):
        if line[:1] in (" ", "\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + line.rstrip("\r\n"))
        elif line.strip():
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
    return block, headers, body


def apply_header_changes(block: bytes, changes: tuple[tuple[str, str], ...], eol: bytes) -> bytes:
    """What the milter does with ``header_changes``: change the first header of that name, else add."""
    lines = block[: -len(eol)].splitlines(keepends=True)
    for name, value in changes:
        new = f"{name}: {value}".encode() + eol
        for index, line in enumerate(lines):
            if line.split(b":", 1)[0].strip().lower() == name.lower().encode():
                end = index + 1
                while end < len(lines) and lines[end][:1] in (b" ", b"\t"):
                    end += 1
                lines[index:end] = [new]
                break
        else:
            lines.append(new)
    return b"".join(lines) + eol
