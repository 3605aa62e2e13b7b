"""One recipient's copy of a message that is split per recipient (the pure half of ``fanout``).

The milter marks a message that must reach each recipient on its own with one tag header
(:data:`TAG`, value ``<queue id> <mode>``, or ``<queue id> each <list> <user>`` for a list whose
copies carry List-Unsubscribe with each recipient's own token); Postfix then hands the fanout filter that message
once per recipient, and the filter asks :func:`make_copy` for that recipient's copy:

* the tag and every ``Bcc:`` field are always removed (a blind copy must never show who else got
  the message, and the tag has done its work);
* ``To:`` becomes exactly ``To: <recipient>`` when the recipient is not named in ``To:``/``Cc:``
  (in both modes: ``each`` only splits more often, a named recipient keeps the To: they were
  named in); a signature of the first pass (``DKIM-Signature``) then no longer
  verifies and is removed too (the signer on the re-injection path signs the copy);
* the *extra_headers* the filter asks for (a list's List-Unsubscribe with this recipient's token)
  are added, and any field of the same name is removed first: only ours may leave; a first-pass
  ``DKIM-Signature`` is removed too (a signer that oversigns those names fails once they are added);
* anything else is kept byte for byte: the header section is cut into fields (a field is its
  first line and its folded continuation lines) and whole fields are dropped or replaced, the
  body is never looked at, every line keeps its own line ending.

A message this module cannot read with certainty (no header section, a line that is no field,
a bound crossed) is returned exactly as it came with ``problem`` saying why: the filter sends it
on unchanged and counts it, it never drops or bounces it. The bounds keep a hostile message from
costing more than a fraction of a second: the stdlib address parser takes about 2 s for 1 MiB of
commas and recurses once per nested parenthesis, so its input is bounded before it runs.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import getaddresses
from urllib.parse import quote, unquote

from smtpplus_milter.mime.rawparts import detect_eol

TAG = "X-SMTPPlus-Fanout"
MODES = ("bcc", "each")

#: Largest header section read, in bytes (real ones are a few KiB).
MAX_HEADER_BYTES = 1024 * 1024
#: Most header fields read (real messages have a few dozen, a long Received: chain a hundred).
MAX_FIELDS = 1000
#: Most addresses read from To: and Cc: together.
MAX_NAMED = 10_000
#: Most bytes of To: and Cc: values given to the stdlib address parser. It walks the text one
#: character at a time in Python, up to 4.5 us per character for hostile text (runs of '<', ';'
#: or '['; 3.6 s per MiB unbounded), so 32 KiB cost at most about 0.15 s; 32 KiB hold about
#: 1,000 ``"Name" <address>`` entries. A blind-copy recipient is found absent without the parser
#: (see :func:`make_copy`), so only a recipient whose own address is written in a longer
#: To:/Cc: meets this bound (and then gets the message unchanged, as a named recipient would).
MAX_PARSE_BYTES = 32 * 1024

_TAG_NAME = TAG.lower().encode("ascii")
_TO = b"to"
_CC = b"cc"
_BCC = b"bcc"
_DKIM = b"dkim-signature"

# A field name is printable ASCII but ':' (RFC 5322 §2.2); obsolete syntax allows blanks before
# the colon (``Bcc :``), which mail readers honour, so they are allowed here too.
_FIELD_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
# Where a field starts: after a line feed, at a line that is not a continuation (SP or HT).
_FIELD_START = re.compile(rb"\n(?=[^ \t])")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
# Postfix queue ids, short (hex) or long (letters and digits).
_QUEUE_ID = re.compile(r"[0-9A-Za-z]{1,40}")
# A recipient we can write between angle brackets on one header line.
_UNWRITABLE = re.compile(r"[\x00-\x1f\x7f<>\ud800-\udfff]")


@dataclass(frozen=True)
class Tag:
    """What the milter's tag says: the message's first-pass queue id and how to split it.

    *list_name* and *user* are set for a list with unsubscribe (issue 16): the filter adds that
    recipient's List-Unsubscribe to each copy. Both or neither.
    """

    queue_id: str
    mode: str  # "bcc" | "each"
    list_name: str | None = None
    user: str | None = None

    def render(self) -> str:
        """The tag header's value (list and user percent-encoded: one ASCII word each)."""
        if self.list_name is None or self.user is None:
            return f"{self.queue_id} {self.mode}"
        return f"{self.queue_id} {self.mode} {quote(self.list_name, safe='')} {quote(self.user, safe='')}"

    @classmethod
    def parse(cls, text: str) -> Tag | None:
        """The tag in a header value; None when it is not one of ours (wrong shape, unknown mode)."""
        parts = text.split()
        if len(parts) not in (2, 4):
            return None
        queue_id, mode = parts[:2]
        if mode not in MODES or not _QUEUE_ID.fullmatch(queue_id):
            return None
        if len(parts) == 2:
            return cls(queue_id, mode)
        try:
            list_name, user = (unquote(part, errors="strict") for part in parts[2:])
        except UnicodeDecodeError:
            return None
        if not list_name or not user:
            return None
        return cls(queue_id, mode, list_name, user)


def named(values: Sequence[str]) -> frozenset[str]:
    """Lower-cased addresses named in the given To:/Cc: header values (RFC 5322 lists, groups, comments).

    Read by the stdlib (``email.utils.getaddresses``); a group's name and a display name are not
    addresses (``undisclosed-recipients:;`` names nobody). Values the parser must not read (over
    :data:`MAX_PARSE_BYTES`, more than :data:`MAX_NAMED` addresses, syntax it cannot handle)
    name nobody: the empty set makes every recipient "not named", so such a message is split and
    :func:`make_copy` decides each copy (a recipient whose address is not written there at all
    gets its own To:; one whose address is, gets the message unchanged with ``problem`` set).
    """
    found = _read_named(values)
    return frozenset() if isinstance(found, str) else found


def needs_fanout(mode: str | None, named_addresses: frozenset[str], recipients: Sequence[str]) -> bool:
    """bcc: some envelope recipient is not named; each: more than one recipient; None: False."""
    if mode is None:
        return False
    wanted = {_bare(recipient).lower() for recipient in recipients}
    if mode == "bcc":
        return bool(wanted - named_addresses)
    if mode == "each":
        return len(wanted) > 1
    raise ValueError(f"unknown fanout mode {mode!r} (one of {', '.join(MODES)})")


@dataclass(frozen=True)
class Copy:
    """One recipient's copy, and how it was made."""

    data: bytes  # the message for this one recipient
    tag: Tag | None  # the tag the message carried (None: no/invalid tag -> sent on unchanged)
    rewritten: bool  # To: was replaced by the recipient's own address
    problem: str | None = None  # why it went on unchanged (unparseable header section...), else None


@dataclass(frozen=True)
class _Field:
    name: bytes  # lower-cased
    start: int
    end: int  # just after its last line's line feed (or the section's end)


def make_copy(raw: bytes, recipient: str, *, extra_headers: Sequence[tuple[str, str]] = ()) -> Copy:
    """The copy for *recipient*: the tag header and every Bcc: header removed; To: replaced by exactly
    `To: <recipient>` when the recipient is not named in To:/Cc: (whatever the mode; then also
    any DKIM-Signature header of the first pass is removed: it no longer verifies); *extra_headers*
    (issue 16's per-recipient List-Unsubscribe) added in place of any field of the same name.
    Everything else byte for byte (byte splicing of the header section, the body untouched).
    A message it cannot read (header section, tag, the recipient, a bound): ``data`` is *raw*
    itself and ``problem`` says why (the filter sends it on unchanged and counts it; never
    dropped or bounced).

    *extra_headers* come from our own code, not from the message: a name that is no field name or
    a value with a line break or non-ASCII text is a programming error (ValueError).
    """
    extra = _extra_lines(extra_headers)
    read = _read_header_section(raw)
    if isinstance(read, str):
        return Copy(raw, None, False, read)
    head_end, fields = read
    tags = {_value(raw, field) for field in fields if field.name == _TAG_NAME}
    if not tags:
        return Copy(raw, None, False, f"no {TAG} header")
    if len(tags) > 1:
        return Copy(raw, None, False, f"{len(tags)} different {TAG} headers")
    tag_value = tags.pop()
    tag = Tag.parse(tag_value)
    if tag is None:
        return Copy(raw, None, False, f"{TAG} header {tag_value[:80]!r} is not '<queue id> <mode>'")
    address = _bare(recipient)
    if not address or _UNWRITABLE.search(address):
        return Copy(raw, tag, False, f"recipient {recipient[:80]!r} cannot be written into a To: header")

    values = [_value(raw, field) for field in fields if field.name in (_TO, _CC)]
    problem = _too_many(values)
    if problem is not None:
        return Copy(raw, tag, False, problem)
    wanted = address.lower()
    # Not even written in To:/Cc: (one linear search): not named, and the parser is not needed.
    # The parser could only find it where comments or blanks split the address, which no
    # mailer writes; the copy would then show the recipient's own address, nothing else.
    if any(wanted in value.lower() for value in values):
        found = _read_named(values)
        if isinstance(found, str):
            return Copy(raw, tag, False, found)
        rewrite = wanted not in found
    else:
        rewrite = True

    eol = detect_eol(raw)  # the first line's: added lines end like the others (CRLF when none has an end)
    replaced = {name.lower().encode("ascii") for name, _ in extra_headers}
    # A first-pass signature no longer verifies once To: is replaced, nor (if it oversigned them)
    # once headers are added; the signer after the split signs the copy.
    dropped = {_TAG_NAME, _BCC} | replaced | ({_TO, _DKIM} if rewrite else set()) | ({_DKIM} if extra else set())
    to_line = b"To: <" + address.encode("utf-8") + b">" + eol
    pieces: list[bytes] = []
    to_written = not rewrite
    for field in fields:
        if field.name not in dropped:
            pieces.append(raw[field.start : field.end])
        elif field.name == _TO and not to_written:
            pieces.append(to_line)  # where the first To: was: the order of the fields stays
            to_written = True
    added = ([] if to_written else [to_line]) + [line + eol for line in extra]
    if added and pieces and not pieces[-1].endswith(b"\n"):
        pieces[-1] += eol  # headers only, the last line without its line ending
    pieces.extend(added)
    pieces.append(raw[head_end:])
    return Copy(b"".join(pieces), tag, rewrite)


def _read_header_section(raw: bytes) -> tuple[int, list[_Field]] | str:
    """(where the header section ends, its fields), or why it cannot be read."""
    if raw.startswith((b"\n", b"\r\n")):
        return "no header section (the message starts with an empty line)"
    limit = MAX_HEADER_BYTES + 2  # the empty line may start right at the bound
    # CRLF first (what Postfix hands over), then LF only before it: a CRLF message's body is
    # never searched for an LF empty line it does not have.
    crlf = raw.find(b"\n\r\n", 0, limit)
    lf = raw.find(b"\n\n", 0, crlf + 2 if crlf >= 0 else limit)
    hits = [hit + 1 for hit in (crlf, lf) if hit >= 0]
    if hits:
        head_end = min(hits)  # the empty line and the body stay as they are
    elif len(raw) <= MAX_HEADER_BYTES:
        head_end = len(raw)  # no empty line: a message of headers only
    else:
        head_end = MAX_HEADER_BYTES + 1
    if head_end > MAX_HEADER_BYTES:
        return f"header section over {MAX_HEADER_BYTES} bytes (MAX_HEADER_BYTES)"
    if not head_end:
        return "empty message"
    # Bounded: a section of a million short lines stops at the bound, not at its end.
    starts = [0] + [match.end() for match in itertools.islice(_FIELD_START.finditer(raw, 0, head_end), MAX_FIELDS)]
    if len(starts) > MAX_FIELDS:
        return f"more than {MAX_FIELDS} header fields (MAX_FIELDS)"
    fields: list[_Field] = []
    for number, (start, end) in enumerate(zip(starts, [*starts[1:], head_end], strict=True), 1):
        match = _FIELD_NAME.match(raw, start, end)
        if match is None:
            line = raw[start : min(end, start + 40)]
            return f"header line {number} is not a header field ({line!r})"
        fields.append(_Field(match.group(1).lower(), start, end))
    return head_end, fields


def _value(raw: bytes, field: _Field) -> str:
    """The field's value, unfolded; raw 8-bit bytes that are not UTF-8 kept as surrogate escapes."""
    colon = raw.index(b":", field.start, field.end)
    text = raw[colon + 1 : field.end].decode("utf-8", "surrogateescape")
    return _FOLD.sub("", text).strip()


def _too_many(values: Sequence[str]) -> str | None:
    """Why these values name too many addresses, checked without the parser (linear)."""
    # Each address has an '@' (a local name without one is no recipient of ours anyway).
    ats = sum(value.count("@") for value in values)
    if ats > MAX_NAMED:
        return f"To:/Cc: name more than {MAX_NAMED} addresses ({ats} '@' signs, MAX_NAMED)"
    return None


def _read_named(values: Sequence[str]) -> frozenset[str] | str:
    """The addresses named in *values*, or why the parser was not asked or failed."""
    problem = _too_many(values)
    if problem is not None:
        return problem
    size = sum(len(value.encode("utf-8", "surrogateescape")) for value in values)
    if size > MAX_PARSE_BYTES:
        return f"To:/Cc: too long to read ({size} bytes, at most {MAX_PARSE_BYTES}, MAX_PARSE_BYTES)"
    try:
        found = frozenset(address.lower() for _, address in getaddresses(list(values)) if address)
    except (RecursionError, ValueError, IndexError) as exc:  # the stdlib parser on hostile input
        return f"To:/Cc: cannot be read ({type(exc).__name__})"
    if len(found) > MAX_NAMED:
        return f"To:/Cc: name {len(found)} addresses (at most {MAX_NAMED}, MAX_NAMED)"
    return found


def _bare(recipient: str) -> str:
    """An envelope recipient without blanks or angle brackets (``<a@b>`` -> ``a@b``)."""
    text = recipient.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    return text


def _extra_lines(extra_headers: Sequence[tuple[str, str]]) -> list[bytes]:
    lines: list[bytes] = []
    for name, value in extra_headers:
        line = f"{name}: {value}"
        if not _FIELD_NAME.fullmatch(f"{name}:".encode("ascii", "replace")) or not line.isascii():
            raise ValueError(f"extra header {name!r} is not an ASCII header field")
        if "\r" in line or "\n" in line:
            raise ValueError(f"extra header {name!r} holds a line break")
        lines.append(line.encode("ascii"))
    return lines
