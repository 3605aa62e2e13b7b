"""Authenticated tokens that travel in addresses and URLs: the bounce token and the unsubscribe token.

Both are made and checked here, statelessly: the token carries what it names, and a truncated
HMAC-SHA256 keyed by the relay's secret (``secret_file``, passed in as bytes) proves we made it.
Pure: no I/O, no clock; the key is the caller's.

Both are written in lowercase base32 (RFC 4648 alphabet ``a-z2-7``, no padding): every character
is valid in a local part and in a URL path, and the token survives an MTA or a mail client that
lowercases local parts (some do), so reading is case-insensitive. Reading accepts only the
canonical spelling of the bytes (base32 has spare bits in its last character), so a token has one
valid form per case.

**Bounce token** (``b+TOKEN@<bounces.return_path>``, the envelope sender of a relayed message):
``base32(node_tag[4] + queue_id + mac[10])``.

* *node_tag* is the first 4 bytes of SHA-256 of the node name, not the name: node names may be 64
  characters, which would not fit the 64-octet local part next to a queue id. The reader compares
  the tag with the tags of the nodes it knows (``node_tag(name)``); a 32-bit tag collides between
  two of a few dozen relay hosts with odds of about one in ten million, and the queue id must match too.
* *queue_id* is Postfix's queue id as ASCII (long ids mix cases, so they are carried as bytes, not
  as text that a lowercasing MTA could change); at most :data:`MAX_QUEUE_ID` (23) characters,
  while long ids are about 15 and short ones 10-12.
* *mac* is 80 bits of HMAC-SHA256 over a context string, the node tag and the queue id. A forger
  needs about 2**79 guesses per accepted token, each one a mail to us; 80 bits keep the longest
  address ``b+`` + 62 characters = 64 octets, the RFC 5321 limit of a local part.

**Unsubscribe token** (``/u/TOKEN``, issue 16): ``base32(user NUL list NUL recipient + mac[10])``,
everything carried so that the web endpoint can act without a database. A recipient address can be
254 octets, so the token is often far longer than a local part may be: it only travels in URLs.

**Mail unsubscribe token** (``u+TOKEN@<bounces.return_path>``, the ``mailto:`` of the same header):
``base32(node_tag[4] + recipient_tag[4] + queue_id + mac[8])``, short enough for a local part like
the bounce token (a long queue id of 15 characters gives 50 characters). It names the message and,
by a keyed 32-bit tag, which of its recipients; ``ingest`` (which has the store anyway) looks the
message up and finds the recipient whose tag matches, so user and list come from the record. 64
bits of MAC: a forger needs about 2**63 mails to us per accepted token.

Each kind has its own context string inside the MAC, so a token of one kind is never valid as
the other, and a future format gets a new context string rather than a version field.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass

# The shortest key we accept: 256 bits, the output size of SHA-256 (config checks the file).
MIN_KEY_BYTES = 32
# RFC 5321 4.5.3.1.1: a local part is at most 64 octets.
MAX_LOCAL_PART = 64
BOUNCE_PREFIX = "b+"
UNSUBSCRIBE_PREFIX = "u+"

NODE_TAG_BYTES = 4
MAC_BYTES = 10
# The longest queue id that keeps "b+TOKEN" within 64 octets: 4 + 23 + 10 = 37 bytes -> 60 characters.
MAX_QUEUE_ID = 23

_BOUNCE_CONTEXT = b"smtpplus bounce v1\0"
_UNSUBSCRIBE_CONTEXT = b"smtpplus unsubscribe v1\0"
_MAIL_UNSUBSCRIBE_CONTEXT = b"smtpplus unsubscribe mail v1\0"
_RECIPIENT_CONTEXT = b"smtpplus recipient v1\0"
RECIPIENT_TAG_BYTES = 4
MAIL_MAC_BYTES = 8
_QUEUE_ID = re.compile(rb"[0-9A-Za-z]{1,%d}" % MAX_QUEUE_ID)
_BASE32 = re.compile(r"[a-z2-7]+")
# Longer input is refused before decoding: an unsubscribe token of the longest address is ~460.
_MAX_TOKEN = 1024


@dataclass(frozen=True)
class BounceToken:
    """What a valid bounce token says: which node's message (by tag) and its queue id."""

    node_tag: bytes
    queue_id: str

    def is_from(self, node: str) -> bool:
        """True if *node* is the relay host that made this token (compared by tag)."""
        return hmac.compare_digest(self.node_tag, node_tag(node))


@dataclass(frozen=True)
class UnsubscribeToken:
    """What a valid unsubscribe token says: who sent, for which list, to which recipient."""

    user: str
    list: str
    recipient: str


@dataclass(frozen=True)
class MailUnsubscribeToken:
    """What a valid mail unsubscribe token says: which node's message, and which recipient (by tag)."""

    node_tag: bytes
    queue_id: str
    recipient_tag: bytes

    def is_from(self, node: str) -> bool:
        return hmac.compare_digest(self.node_tag, node_tag(node))

    def names(self, recipient: str, key: bytes) -> bool:
        """True if *recipient* (any case) is the recipient this token was made for (by its tag)."""
        return hmac.compare_digest(self.recipient_tag, recipient_tag(recipient, key))


def recipient_tag(recipient: str, key: bytes) -> bytes:
    """The keyed 4-byte tag of a recipient address (lowercased): it does not give the address away."""
    return hmac.new(key, _RECIPIENT_CONTEXT + recipient.lower().encode("utf-8"), hashlib.sha256).digest()[
        :RECIPIENT_TAG_BYTES
    ]


def make_mail_unsubscribe_token(node: str, queue_id: str, recipient: str, key: bytes) -> str:
    """The TOKEN of ``u+TOKEN@return_path`` for *recipient* of the message *queue_id* of *node*."""
    _check_key(key)
    raw_id = queue_id.encode("ascii", "replace")
    if not _QUEUE_ID.fullmatch(raw_id):
        raise ValueError(f"{queue_id!r} is not a Postfix queue id (1-{MAX_QUEUE_ID} letters and digits)")
    body = node_tag(node) + recipient_tag(recipient, key) + raw_id
    return _encode(body + _mac(key, _MAIL_UNSUBSCRIBE_CONTEXT, body)[:MAIL_MAC_BYTES])


def read_mail_unsubscribe_token(token: str, key: bytes) -> MailUnsubscribeToken | None:
    """Node tag, queue id and recipient tag of a token we made with *key*; None if forged or malformed."""
    raw = _decode(token)
    if raw is None or len(raw) <= NODE_TAG_BYTES + RECIPIENT_TAG_BYTES + MAIL_MAC_BYTES:
        return None
    body, mac = raw[:-MAIL_MAC_BYTES], raw[-MAIL_MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(key, _MAIL_UNSUBSCRIBE_CONTEXT, body)[:MAIL_MAC_BYTES]):
        return None
    raw_id = body[NODE_TAG_BYTES + RECIPIENT_TAG_BYTES :]
    if not _QUEUE_ID.fullmatch(raw_id):
        return None
    tags = body[:NODE_TAG_BYTES], body[NODE_TAG_BYTES : NODE_TAG_BYTES + RECIPIENT_TAG_BYTES]
    return MailUnsubscribeToken(tags[0], raw_id.decode("ascii"), tags[1])


def node_tag(node: str) -> bytes:
    """The 4-byte tag that stands for *node* in a bounce token."""
    return hashlib.sha256(node.encode("utf-8")).digest()[:NODE_TAG_BYTES]


def make_bounce_token(node: str, queue_id: str, key: bytes) -> str:
    """The TOKEN of ``b+TOKEN@return_path`` for the message *queue_id* relayed by *node*.

    ValueError if the queue id is not Postfix's (letters and digits, at most 23) or the key is short.
    """
    _check_key(key)
    raw_id = queue_id.encode("ascii", "replace")
    if not _QUEUE_ID.fullmatch(raw_id):
        raise ValueError(f"{queue_id!r} is not a Postfix queue id (1-{MAX_QUEUE_ID} letters and digits)")
    body = node_tag(node) + raw_id
    return _encode(body + _mac(key, _BOUNCE_CONTEXT, body))


def read_bounce_token(token: str, key: bytes) -> BounceToken | None:
    """The node tag and queue id of a token we made with *key*; None if forged or malformed.

    *token* is the part after ``b+``, in any case.
    """
    raw = _decode(token)
    if raw is None or len(raw) <= NODE_TAG_BYTES + MAC_BYTES:
        return None
    body, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(key, _BOUNCE_CONTEXT, body)):
        return None
    raw_id = body[NODE_TAG_BYTES:]
    if not _QUEUE_ID.fullmatch(raw_id):  # signed, so only a bug of ours could get here
        return None
    return BounceToken(body[:NODE_TAG_BYTES], raw_id.decode("ascii"))


def make_unsubscribe_token(user: str, list_name: str, recipient: str, key: bytes) -> str:
    """The TOKEN of ``/u/TOKEN`` (and ``u+TOKEN@return_path``) for one recipient of a list message.

    The three values are carried as given (the caller normalises them); none may contain NUL.
    """
    _check_key(key)
    parts = (user, list_name, recipient)
    if any(not part or "\0" in part for part in parts):
        raise ValueError("user, list and recipient must be non-empty and contain no NUL character")
    body = "\0".join(parts).encode("utf-8")
    token = _encode(body + _mac(key, _UNSUBSCRIBE_CONTEXT, body))
    if len(token) > _MAX_TOKEN:
        # read_unsubscribe_token refuses longer input before decoding it: never hand one out.
        raise ValueError(f"user, list and recipient are too long for a token ({len(body)} bytes)")
    return token


def read_unsubscribe_token(token: str, key: bytes) -> UnsubscribeToken | None:
    """User, list and recipient of a token we made with *key*; None if forged or malformed."""
    raw = _decode(token)
    if raw is None or len(raw) <= MAC_BYTES:
        return None
    body, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(key, _UNSUBSCRIBE_CONTEXT, body)):
        return None
    try:
        user, list_name, recipient = body.decode("utf-8").split("\0")
    except ValueError:  # signed, so only a bug of ours could get here
        return None
    return UnsubscribeToken(user, list_name, recipient)


def fits_local_part(prefix: str, token: str) -> bool:
    """True if ``prefix + token`` is a local part other MTAs must accept (at most 64 octets)."""
    return len(prefix) + len(token) <= MAX_LOCAL_PART


def _check_key(key: bytes) -> None:
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the token key has {len(key)} bytes; at least {MIN_KEY_BYTES} are needed")


def _mac(key: bytes, context: bytes, body: bytes) -> bytes:
    return hmac.new(key, context + body, hashlib.sha256).digest()[:MAC_BYTES]


def _encode(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def _decode(token: str) -> bytes | None:
    """The bytes of a lowercase-base32 token in any case; None unless it is the canonical spelling."""
    if len(token) > _MAX_TOKEN:
        return None
    text = token.lower()
    if not _BASE32.fullmatch(text) or len(text) % 8 in (1, 3, 6):  # no byte count gives these lengths
        return None
    try:
        raw = base64.b32decode(text.upper() + "=" * (-len(text) % 8))
    except binascii.Error:
        return None
    return raw if _encode(raw) == text else None
