"""What the relay records about a message it accepted: the tracking record, as a value.

Built from a decided :class:`~smtpplus_milter.core.session.Outcome` at end of message, then handed
to the tracking writer (off the mail path) and the store. The Subject is decoded (encoded-words,
RFC 2047) and cut to a bounded length, the From address is the first address the authorization
read (None when the header was not readable), and every text field is bounded, so a hostile
message cannot make a record large: at most :data:`MAX_RECIPIENTS` recipients are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.errors import HeaderParseError
from email.header import decode_header, make_header

from smtpplus_milter.core.addresses import AddressError, parse_envelope_sender, parse_mailboxes

# Postfix's own default smtpd_recipient_limit is 1000; a record never holds more than this.
MAX_RECIPIENTS = 10_000
MAX_SUBJECT = 998  # one RFC 5322 line
MAX_FIELD = 320  # an address (64 + 1 + 255) with room to spare; Message-ID, user, list


@dataclass(frozen=True)
class MessageRecord:
    """One accepted message, as the tracking store keeps it (``accepted_at`` is aware, in UTC)."""

    node: str
    queue_id: str
    user: str
    list: str | None
    envelope_from: str
    header_from: str | None
    subject: str
    message_id: str | None
    size: int
    priority: int
    queue: str
    accepted_at: datetime
    recipients: tuple[str, ...]
    # Recipients the suppression list kept from this message (refused at RCPT, or accepted and
    # dropped): recorded in state ``suppressed``.
    suppressed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.accepted_at.tzinfo is None:
            raise ValueError(f"accepted_at must be timezone-aware (UTC), got {self.accepted_at!r}")
        if not self.node or not self.queue_id:
            raise ValueError("a message record needs a node and a queue id")

    def as_dict(self) -> dict[str, object]:
        """The JSON form the spool keeps (and :meth:`from_dict` reads back)."""
        return {
            "node": self.node,
            "queue_id": self.queue_id,
            "user": self.user,
            "list": self.list,
            "envelope_from": self.envelope_from,
            "header_from": self.header_from,
            "subject": self.subject,
            "message_id": self.message_id,
            "size": self.size,
            "priority": self.priority,
            "queue": self.queue,
            "accepted_at": self.accepted_at.isoformat(),
            "recipients": list(self.recipients),
            "suppressed": list(self.suppressed),
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> MessageRecord:
        recipients = data["recipients"]
        suppressed = data.get("suppressed") or []  # absent in lines written before it existed
        assert isinstance(recipients, list) and isinstance(suppressed, list)
        return cls(
            node=str(data["node"]),
            queue_id=str(data["queue_id"]),
            user=str(data["user"]),
            list=None if data["list"] is None else str(data["list"]),
            envelope_from=str(data["envelope_from"]),
            header_from=None if data["header_from"] is None else str(data["header_from"]),
            subject=str(data["subject"]),
            message_id=None if data["message_id"] is None else str(data["message_id"]),
            size=int(str(data["size"])),
            priority=int(str(data["priority"])),
            queue=str(data["queue"]),
            accepted_at=datetime.fromisoformat(str(data["accepted_at"])),
            recipients=tuple(str(item) for item in recipients),
            suppressed=tuple(str(item) for item in suppressed),
        )


def decode_subject(value: str) -> str:
    """The Subject as a reader sees it: encoded-words decoded, unfolded, bounded."""
    text = value.replace("\r\n", "").replace("\n", "").strip()
    try:
        text = str(make_header(decode_header(text)))
    except (HeaderParseError, LookupError, UnicodeError, ValueError):
        pass  # shown as written: a broken encoded-word is still the sender's subject
    return _bounded(text, MAX_SUBJECT)


def first_value(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    lowered = name.lower()
    return next((value for key, value in headers if key.lower() == lowered), None)


def from_address(headers: tuple[tuple[str, str], ...]) -> str | None:
    """The first address of the first From: header, normalised; None when it cannot be read."""
    value = first_value(headers, "From")
    if value is None:
        return None
    try:
        mailboxes = parse_mailboxes("From", value)
    except AddressError:
        return None
    return _bounded(str(mailboxes[0].address), MAX_FIELD) if mailboxes else None


def envelope_address(mail_from: str) -> str:
    """The envelope sender as an address ("" for the null sender or an unreadable one)."""
    try:
        address = parse_envelope_sender(mail_from)
    except AddressError:
        return ""
    return "" if address is None else _bounded(str(address), MAX_FIELD)


def recipient_address(rcpt_to: str) -> str:
    """An RCPT TO argument as recorded: without the angle brackets, bounded."""
    return _bounded(rcpt_to.strip().removeprefix("<").removesuffix(">"), MAX_FIELD)


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit]
