"""Postfix's SMTPD access policy delegation protocol, as bytes in and values out (no I/O).

``check_policy_service`` makes Postfix's smtpd a client of ours: over one connection, which it
reuses for many requests, it writes a request as ``name=value`` lines, each ending in ``\\n``, and
an empty line after the last one; it then waits for exactly one reply, ``action=TEXT`` followed by
an empty line, before it sends the next request. This module owns both directions:
:class:`PolicyDecoder` turns whatever byte chunks the socket returns into :class:`PolicyRequest`
values, and :func:`encode_reply` turns an action into the reply bytes. The policy daemon (a door
in ``services/``) owns the socket, the timeouts and the decisions.

What the decoder accepts, and why:

* **LF only.** Postfix writes every attribute with ``"%s=%s\\n"``, never CR LF. A ``\\r`` is
  therefore data: at the end of a value it stays part of that value, and a line holding only
  ``\\r`` is a line without ``=`` (an error), never an empty line ending the request.
* **The name ends at the first ``=``**; the rest of the line, ``=`` signs included, is the value,
  and it may be empty (``sender=`` is the null sender). A name is 1 to 64 printable ASCII
  characters (Postfix's are lower-case words with ``_``). Every name is kept, known or not, so a
  newer Postfix's attributes reach the daemon; when a name comes twice, the **last** value wins
  (Postfix never repeats one; were a value ever to smuggle a line in, ``sasl_username`` comes after
  ``helo_name``, ``sender`` and ``recipient``, so the genuine one would still win) and the name is
  listed in :attr:`PolicyRequest.repeated` for the log.
* **Values are text decoded as UTF-8 with ``surrogateescape``**, like the milter's header values:
  an SMTPUTF8 address reads naturally, a Latin-1 HELO name cannot stop the decoder, and
  ``value.encode("utf-8", "surrogateescape")`` gives back exactly the bytes Postfix sent.
* **A NUL byte is an error.** Postfix's values are C strings and cannot hold one, so a NUL means
  the peer is not Postfix; judging a login or address that Postfix could never mean is refused.
* **An empty request is an error**: Postfix always sends at least ``request=``, so an empty line
  where a request should begin means the stream is out of step. Answering it would put every later
  reply out of step with its request; staying silent would leave the peer waiting.
* ``size`` and ``recipient_count``, when present and not empty, must be decimal numbers of at most
  20 digits (Postfix prints them with ``%lu``), so :attr:`PolicyRequest.size` can be trusted.

**Bounds.** A request is at most :data:`MAX_REQUEST_BYTES` bytes (its terminating empty line
included) and :data:`MAX_ATTRIBUTES` lines; an ordinary one is under 1 KiB and 30 lines. The
decoder never holds more than :data:`MAX_REQUEST_BYTES` bytes of a request, whatever it is fed.

**Errors.** Any breach raises :class:`PolicyProtocolError`, with the requests completed earlier in
the same chunk attached; the decoder then refuses further input. The server must close the
connection without a reply: that is what Postfix's protocol prescribes for a server in trouble
(Postfix logs it, retries the request on a new connection up to ``smtpd_policy_service_try_limit``
times, then applies ``smtpd_policy_service_default_action``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

MAX_REQUEST_BYTES = 64 * 1024  # about 60 times a real request with TLS client certificate details
MAX_ATTRIBUTES = 500  # Postfix 3.12 sends about 35
MAX_NAME_BYTES = 64  # the longest Postfix name, ccert_pubkey_fingerprint, has 24
MAX_NUMBER_DIGITS = 20  # an unsigned 64-bit number printed with %lu
# The action becomes the text of an SMTP reply whose line RFC 5321 bounds at 512 octets, code and
# CR LF included; Postfix itself reads a reply of any length, so the bound is ours to keep.
MAX_ACTION_BYTES = 512

_NAME = re.compile(rb"[!-<>-~]{1,%d}" % MAX_NAME_BYTES)  # printable ASCII except "=" (fullmatch)
# A whole well-formed request in one piece, by exactly the line rules below (fullmatch): what
# Postfix sends in one write. Checked at once, it is decoded about four times faster than line by
# line; anything else takes the line-by-line path, which finds the precise error.
_WHOLE = re.compile(rb"(?:[!-<>-~]{1,%d}=[^\n\0]*\n){1,%d}\n" % (MAX_NAME_BYTES, MAX_ATTRIBUTES))
_NUMBER = re.compile(f"[0-9]{{1,{MAX_NUMBER_DIGITS}}}")  # ASCII digits only (str.isdigit is wider)
_NUMERIC = ("size", "recipient_count")
# Any C0 control except TAB, and DEL: they would end or corrupt the reply line (CR, LF), cut a C
# string short (NUL) or reach the SMTP client as raw control bytes.
_ACTION_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class PolicyProtocolError(ValueError):
    """The peer broke the protocol; close the connection without replying.

    ``requests`` holds the requests that were complete before the breach in the same chunk (the
    decoder returns earlier ones from earlier calls), so what is decoded never depends on how the
    stream was cut into chunks.
    """

    def __init__(self, message: str, requests: tuple[PolicyRequest, ...] = ()) -> None:
        super().__init__(message)
        self.requests = requests


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """One request: every attribute Postfix sent (text, in its order), plus typed views of some.

    An attribute that is absent and one sent empty both read as ``None`` in the helpers, except
    :attr:`sender`, where the empty value is the null sender ``<>``.
    """

    attributes: Mapping[str, str]
    repeated: frozenset[str] = field(default=frozenset())

    def get(self, name: str) -> str | None:
        return self.attributes.get(name)

    def _text(self, name: str) -> str | None:
        return self.attributes.get(name) or None

    def _number(self, name: str) -> int | None:
        value = self.attributes.get(name)
        return int(value) if value else None  # the decoder checked it is a bounded decimal number

    @property
    def request(self) -> str | None:
        """The request type; ``smtpd_access_policy`` for smtpd's requests."""
        return self._text("request")

    @property
    def state(self) -> str | None:
        """The SMTP stage as Postfix names it: CONNECT, EHLO, HELO, MAIL, RCPT, DATA, END-OF-MESSAGE, VRFY, ETRN."""
        return self._text("protocol_state")

    @property
    def sasl_username(self) -> str | None:
        """The SMTP AUTH login; ``None`` for a client that did not log in."""
        return self._text("sasl_username")

    @property
    def sender(self) -> str | None:
        """The MAIL FROM address; ``""`` for the null sender, ``None`` if Postfix did not send it."""
        return self.attributes.get("sender")

    @property
    def recipient(self) -> str | None:
        """The RCPT TO address (at DATA and END-OF-MESSAGE only if the message has one recipient)."""
        return self._text("recipient")

    @property
    def queue_id(self) -> str | None:
        """The queue id; can be missing at the first RCPT (``smtpd_delay_open_until_valid_rcpt``)."""
        return self._text("queue_id")

    @property
    def instance(self) -> str | None:
        """Same value for every request about one message on one connection."""
        return self._text("instance")

    @property
    def size(self) -> int | None:
        """MAIL FROM's SIZE (0 if none was given); the actual size at END-OF-MESSAGE."""
        return self._number("size")

    @property
    def recipient_count(self) -> int | None:
        """Recipients accepted; 0 until DATA (count RCPT requests per :attr:`instance` instead)."""
        return self._number("recipient_count")


class PolicyDecoder:
    """Feed the bytes read from one connection; get back each request as soon as it is complete.

    A partial request (complete lines and a partial last line) is kept until the rest arrives.
    """

    __slots__ = ("_attrs", "_broken", "_count", "_held", "_repeated", "_size", "_tail")

    def __init__(self) -> None:
        self._tail = bytearray()  # the current partial line (a bytearray: 1-byte feeds stay linear)
        self._attrs: dict[str, str] = {}  # complete lines of the current request
        self._repeated: set[str] = set()
        self._count = 0  # attribute lines of the current request
        self._size = 0  # bytes of the current request's complete lines, newlines included
        self._held = 0  # bytes of the current request seen so far (complete lines and tail)
        self._broken: str | None = None

    @property
    def pending(self) -> int:
        """Bytes of an unfinished request seen so far (0 between requests); at most the bound."""
        return self._held

    def feed(self, chunk: bytes) -> list[PolicyRequest]:
        """The requests completed by *chunk*, in order; raises :class:`PolicyProtocolError`."""
        if self._broken is not None:
            raise PolicyProtocolError(f"the stream is already broken: {self._broken}")
        done: list[PolicyRequest] = []
        try:
            self._feed(chunk, done)
        except PolicyProtocolError as error:
            self._broken = str(error)
            self._tail, self._attrs, self._repeated, self._held = bytearray(), {}, set(), 0
            error.requests = tuple(done)
            raise
        return done

    def _feed(self, chunk: bytes, done: list[PolicyRequest]) -> None:
        start = 0
        # Between requests, each complete and well-formed request in the chunk is taken whole.
        while not self._tail and not self._size:
            end = chunk.find(b"\n\n", start)
            if end < 0 or end + 2 - start > MAX_REQUEST_BYTES:
                break
            whole = _whole(chunk[start : end + 2])
            if whole is None:
                break
            done.append(whole)
            start = end + 2
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                rest = len(chunk) - start
                if self._size + len(self._tail) + rest > MAX_REQUEST_BYTES:
                    raise self._too_long()
                if rest:
                    self._tail += chunk[start:]
                self._held = self._size + len(self._tail)
                return
            if self._size + len(self._tail) + end + 1 - start > MAX_REQUEST_BYTES:
                raise self._too_long()
            line = bytes(self._tail + chunk[start:end]) if self._tail else chunk[start:end]
            self._tail.clear()
            start = end + 1
            self._size += len(line) + 1
            if line:
                self._attribute(line)
                continue
            if not self._attrs:
                raise PolicyProtocolError("empty request: an empty line where a request should begin")
            done.append(self._finish())

    def _too_long(self) -> PolicyProtocolError:
        return PolicyProtocolError(f"request over {MAX_REQUEST_BYTES} bytes without its ending empty line")

    def _attribute(self, line: bytes) -> None:
        self._count += 1
        if self._count > MAX_ATTRIBUTES:
            raise PolicyProtocolError(f"request with more than {MAX_ATTRIBUTES} attributes")
        name, equals, value = line.partition(b"=")
        if not equals:
            raise PolicyProtocolError(f"attribute line {self._count} has no '=': {_shown(line)}")
        if not _NAME.fullmatch(name):
            raise PolicyProtocolError(
                f"attribute line {self._count} has a name that is not 1-{MAX_NAME_BYTES} "
                f"printable ASCII characters: {_shown(name)}"
            )
        if b"\0" in value:
            raise PolicyProtocolError(f"attribute {name.decode()} contains a NUL byte")
        text = value.decode("utf-8", "surrogateescape")
        key = name.decode("ascii")
        if key in _NUMERIC and text and not _NUMBER.fullmatch(text):
            raise PolicyProtocolError(
                f"attribute {key} is not a decimal number of at most {MAX_NUMBER_DIGITS} digits: {_shown(value)}"
            )
        if key in self._attrs:
            self._repeated.add(key)
        self._attrs[key] = text

    def _finish(self) -> PolicyRequest:
        request = PolicyRequest(MappingProxyType(self._attrs), frozenset(self._repeated))
        self._attrs, self._repeated = {}, set()
        self._count = self._size = self._held = 0
        return request


def _whole(raw: bytes) -> PolicyRequest | None:
    """*raw* (one request, its empty line included) decoded in one step; None when any line rule
    fails (the line-by-line path then raises the error that names it)."""
    if not _WHOLE.fullmatch(raw):
        return None
    lines = raw[:-2].decode("utf-8", "surrogateescape").split("\n")
    attributes = dict(line.split("=", 1) for line in lines)
    repeated: frozenset[str] = frozenset()
    pairs: Iterable[tuple[str, str]] = attributes.items()
    if len(attributes) != len(lines):  # a repeated name: every value counts, not only the last
        pairs = [(name, value) for name, _, value in (line.partition("=") for line in lines)]
        names = [name for name, _ in pairs]
        repeated = frozenset(name for name in names if names.count(name) > 1)
    for name, value in pairs:
        if value and name in _NUMERIC and not _NUMBER.fullmatch(value):
            return None
    return PolicyRequest(MappingProxyType(attributes), repeated)


def _shown(raw: bytes, limit: int = 60) -> str:
    """A short, printable rendering of peer bytes for an error message (never the whole line)."""
    text = repr(raw[:limit])[2:-1]
    return text + "..." if len(raw) > limit else text


def encode_reply(action: str) -> bytes:
    """The reply for *action* (e.g. ``DUNNO`` or ``450 4.7.1 text``): ``action=ACTION\\n\\n``.

    Raises ValueError for an action that Postfix would misread: empty, with a control character
    other than TAB (a newline would end the reply early and put every later reply out of step),
    not encodable as UTF-8 (Postfix with SMTPUTF8 replaces such an action by its default action),
    or over :data:`MAX_ACTION_BYTES` bytes.
    """
    if not action.strip():
        raise ValueError("empty policy action: answer DUNNO to leave the decision to later restrictions")
    control = _ACTION_CONTROL.search(action)
    if control:
        raise ValueError(f"policy action contains the control character {control.group()!r}: {action[:60]!r}")
    try:
        raw = action.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"policy action is not valid UTF-8 text: {error}") from None
    if len(raw) > MAX_ACTION_BYTES:
        raise ValueError(f"policy action of {len(raw)} bytes, at most {MAX_ACTION_BYTES}: shorten its text")
    return b"action=" + raw + b"\n\n"


def encode_request(attributes: Mapping[str, str] | Iterable[tuple[str, str]]) -> bytes:
    """The bytes Postfix would send for *attributes* (for tests and tools that play Postfix).

    Raises ValueError for a name or value Postfix could not send.
    """
    pairs = attributes.items() if isinstance(attributes, Mapping) else attributes
    lines: list[bytes] = []
    for name, value in pairs:
        raw_name = name.encode("ascii", "replace")
        raw_value = value.encode("utf-8", "surrogateescape")
        if not _NAME.fullmatch(raw_name):
            raise ValueError(f"attribute name {name!r} is not 1-{MAX_NAME_BYTES} printable ASCII characters")
        if b"\n" in raw_value or b"\0" in raw_value:
            raise ValueError(f"attribute {name} has a newline or NUL in its value")
        lines.append(raw_name + b"=" + raw_value + b"\n")
    if not lines:
        raise ValueError("a request needs at least one attribute")
    return b"".join(lines) + b"\n"
