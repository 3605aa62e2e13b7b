"""Normalising mail addresses and domains, and reading the addresses out of From:/Sender:.

It also owns the bounds on that reading (size, tokens, addresses, NUL and control characters)
and the memo of parsed values, both sized so that no client input costs unbounded time or memory.

Every comparison of senders goes through here so that "the same address" means one thing:
case-folded, IDNA (UTS #46) A-labels, no trailing dot. Anything that cannot be read with
certainty raises :class:`AddressError`; callers treat that as *not authorized*.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from email.errors import UndecodableBytesDefect
from email.headerregistry import AddressHeader
from typing import Any

import idna


class AddressError(ValueError):
    """An address or domain that cannot be read with certainty."""


@functools.lru_cache(maxsize=4096)
def normalize_domain(domain: str) -> str:
    """Return the canonical form of *domain*: lower-case A-labels, no trailing dot."""
    text = domain.strip()
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise AddressError("empty domain")
    if text.startswith("[") or "\\" in text:
        raise AddressError(f"domain literal {domain!r} cannot be authorized")
    if any(ord(ch) < 0x21 or 0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        raise AddressError(f"domain {domain!r} contains invalid characters")
    try:
        return idna.encode(text, uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError) as exc:
        raise AddressError(f"domain {domain!r} is not a valid domain name: {exc}") from None


@dataclass(frozen=True, slots=True)
class Address:
    """A normalised mailbox address."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


def normalize_address(address: str) -> Address:
    """Normalise ``local@domain``; the local part is compared case-insensitively."""
    text = address.strip()
    local, sep, domain = text.rpartition("@")
    if not sep or not local or not domain:
        raise AddressError(f"{address!r} is not an address of the form local@domain")
    if any((ord(ch) < 0x21 and ch != " ") or ch == "\x7f" or 0xD800 <= ord(ch) <= 0xDFFF for ch in local):
        raise AddressError(f"{address!r} contains invalid characters")
    if "@" in local and not (local.startswith('"') and local.endswith('"')):
        # "a@@yourcompany.com" must not pass as a yourcompany.com address.
        raise AddressError(f"{address!r} has more than one '@'")
    return Address(local.lower(), normalize_domain(domain))


# The envelope (RFC 5321) allows no control character at all; a header value allows HT as
# whitespace, and CR LF only as folding (unfolded first, a bare one is refused on its own).
_ENVELOPE_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEADER_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _describe_control(char: str) -> str:
    return "a NUL byte" if char == "\x00" else f"control character 0x{ord(char):02x}"


def parse_envelope_sender(mail_from: str) -> Address | None:
    """Read the MAIL FROM argument as Postfix hands it to a milter (``<a@b>`` or ``<>``).

    Returns None for the null sender. Source routes (``<@relay:a@b>``) are dropped. A control
    character anywhere (even in a source route that is dropped) makes it unreadable: libmilter
    hands values over as C strings, so what follows a NUL may not be what Postfix acts on.
    """
    control = _ENVELOPE_CONTROL.search(mail_from)
    if control:
        raise AddressError(f"MAIL FROM contains {_describe_control(control.group())}")
    text = mail_from.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    if ":" in text and text.startswith("@"):
        text = text.split(":", 1)[1]
    if not text:
        return None
    return normalize_address(text)


_FOLD = re.compile(r"\r?\n(?=[ \t])")

# Bounds on what one From:/Sender: value may make us do. The stdlib parser is roughly quadratic
# in the number of tokens (16 KiB of commas or of dots takes 4-5 s of CPU), and a memoised value
# stays in memory until the process ends, so both are bounded before the parser runs. Every bound
# refuses the header (not authorized): a real From: is a few hundred bytes with one address.
#: Longest header value parsed, in bytes as Postfix sent them.
MAX_HEADER_BYTES = 16 * 1024
#: Most lexical tokens (specials, whitespace runs, runs of other characters) parsed in one value:
#: at most about 0.15 s of parser time (2,000 commas, on a loaded 2-core machine), while 100
#: addresses of the form ``"Name 7" <u7@sub.example.com>`` count 1,700.
MAX_HEADER_TOKENS = 2000
#: Most addresses in one header value.
MAX_ADDRESSES = 100
#: Only values of at most MEMO_MAX_BYTES bytes and MEMO_MAX_AT '@' signs are memoised, and at
#: most MEMO_ENTRIES of them: the memo stays at a few MB whatever clients send (see docs/design.md),
#: while the From: a user repeats (one address, a short name) always fits.
MEMO_MAX_BYTES = 512
MEMO_MAX_AT = 4
MEMO_ENTRIES = 2048

_LEXEME = re.compile(r'[()<>\[\]:;@\\,."]|[ \t]+|[^()<>\[\]:;@\\,." \t]+')


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One address of a From:/Sender: value, with the free text shown next to it.

    ``names`` are its display name and, inside a group, the group's name (encoded-words decoded);
    ``comments`` the comments around it, as written. Neither decides anything: they are kept to
    notice a name that shows a different address (display-name spoofing).
    """

    address: Address
    names: tuple[str, ...] = ()
    comments: tuple[str, ...] = ()


def parse_address_header(name: str, value: str) -> tuple[Address, ...]:
    """Return every address in one From:/Sender: header value (see :func:`parse_mailboxes`)."""
    return tuple(mailbox.address for mailbox in parse_mailboxes(name, value))


def parse_mailboxes(name: str, value: str) -> tuple[Mailbox, ...]:
    """Return every mailbox in one From:/Sender: header value.

    The stdlib parser repairs a lot of broken input silently (``info@a <x@b>`` becomes
    ``info@a``, an encoded-word that hides an address becomes a local part). Any defect the
    parser records therefore makes the whole header unreadable: a sender must never be
    authorized on a guess.

    Memoised for short values: the stdlib parser costs about 0.25 ms per header, and an SMTP+
    user sends from a handful of fixed From: values (measured in docs/benchmarks.md). Refusals
    are exceptions and are not cached, and long values are parsed every time, so hostile input
    cannot make the memo large.
    """
    size = len(value.encode("utf-8", "surrogateescape"))
    if size > MAX_HEADER_BYTES:
        raise AddressError(f"{name}: header too long ({size} bytes, at most {MAX_HEADER_BYTES})")
    # Bytes, not characters: a Python string of non-ASCII text takes up to 4 bytes per character.
    if size <= MEMO_MAX_BYTES and value.count("@") <= MEMO_MAX_AT:
        return _parse_memoised(name, value)
    return _parse(name, value)


@functools.lru_cache(maxsize=MEMO_ENTRIES)
def _parse_memoised(name: str, value: str) -> tuple[Mailbox, ...]:
    return _parse(name, value)


def _parse(name: str, value: str) -> tuple[Mailbox, ...]:
    value = _FOLD.sub("", value)
    if "\r" in value or "\n" in value:
        raise AddressError(f"{name}: contains a bare line break")
    # Postfix and libmilter pass header values as C strings: with a NUL inside, what we would
    # judge and what gets delivered may differ. Other controls have no business in an address
    # header either; the stdlib parser only flags some of them, and not in every position.
    control = _HEADER_CONTROL.search(value)
    if control:
        raise AddressError(f"{name}: contains {_describe_control(control.group())}")
    tokens = sum(1 for _ in _LEXEME.finditer(value))
    if tokens > MAX_HEADER_TOKENS:
        raise AddressError(f"{name}: too complex ({tokens} tokens, at most {MAX_HEADER_TOKENS})")
    try:
        tree = AddressHeader.value_parser(value)
        _check_defects(name, tree)
        found = [(address, mailbox) for address in tree.addresses for mailbox in address.all_mailboxes]
        if len(found) > MAX_ADDRESSES:
            raise AddressError(f"{name}: holds {len(found)} addresses (at most {MAX_ADDRESSES})")
        mailboxes: list[Mailbox] = []
        for address, mailbox in found:
            local, domain = mailbox.local_part or "", mailbox.domain or ""
            if not domain or "=?" in local or "=?" in domain:
                raise AddressError(f"{name}: {f'{local}@{domain}'!r} is not a usable address")
            names = tuple(text for text in (mailbox.display_name, address.display_name) if text)
            mailboxes.append(Mailbox(normalize_address(f"{local}@{domain}"), names, _comments(mailbox)))
    except AddressError:
        raise
    except Exception as exc:  # the stdlib parser raises assorted errors on hostile input
        raise AddressError(f"{name}: cannot be parsed ({type(exc).__name__})") from None
    return tuple(mailboxes)


def _comments(token: Any) -> tuple[str, ...]:
    """The contents of the outermost comments inside *token*.

    A nested comment is part of its outer one's content; keeping it again on its own would let
    deep nesting multiply what the memo holds.
    """
    found: list[str] = []
    stack = [token]
    while stack:
        item = stack.pop()
        if getattr(item, "token_type", None) == "comment":
            found.append(str(item.content))
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return tuple(found)


# Parts of a header that are free text: raw 8-bit there says nothing about the address.
_FREE_TEXT = frozenset({"display-name", "comment"})


def _check_defects(name: str, tree: Any) -> None:
    """Refuse a value the parser had to repair, except for raw 8-bit text in names and comments.

    pymilter hands raw 8-bit bytes that are not UTF-8 (a Latin-1 ``Müller``) over as surrogate
    escapes, which the parser reads as ordinary text characters (so the structure it finds is the
    one an 8-bit-clean reader finds) and flags as undecodable. A flag inside a display name or a
    comment is harmless: the address is judged on its own. Anywhere else, and any other defect,
    makes the value unreadable.
    """
    defects = tree.all_defects
    if not defects:
        return
    if any(isinstance(defect, UndecodableBytesDefect) for defect in defects):
        # Walked with a stack (nested comments may be deep); the parse tree is lists of lists and
        # str terminals, each with its own defects.
        stack: list[tuple[Any, bool]] = [(tree, False)]
        while stack:
            token, free = stack.pop()
            free = free or token.token_type in _FREE_TEXT
            if not free and any(isinstance(defect, UndecodableBytesDefect) for defect in token.defects):
                raise AddressError(f"{name}: raw 8-bit characters outside a display name or comment")
            if isinstance(token, list):
                stack.extend((child, free) for child in token)
    other = [defect for defect in defects if not isinstance(defect, UndecodableBytesDefect)]
    if other:
        raise AddressError(f"{name}: malformed ({other[0]})")
