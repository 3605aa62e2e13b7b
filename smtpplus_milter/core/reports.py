"""Reading a report that came back to the relay: a DSN, a complaint, or something else (bytes in,
values out).

:func:`read_report` takes one message as it arrived (``ingest`` reads it from stdin) and returns:

* :class:`DeliveryReport`: an RFC 3464 delivery status notification (``multipart/report;
  report-type=delivery-status`` with a ``message/delivery-status`` or, RFC 6533,
  ``message/global-delivery-status`` part), one :class:`DeliveryEntry` per recipient block, plus the
  headers of the returned message when the report carries them. Two plain-text bounce formats that
  are common and fixed in shape (qmail's "I wasn't able to deliver" and Exim's "could not be
  delivered to one or more of its recipients") are read too, as ``standard=False`` reports: their
  addresses come from free text, so whoever acts on them should record them but think twice before
  suppressing on them alone.
* :class:`ComplaintReport`: an RFC 5965 ARF feedback report (``message/feedback-report``).
* :class:`NotAReport`: a message that is plainly not a report (an out-of-office or other
  auto-reply, a person answering the return path): nothing to record about a delivery.
* :class:`Unreadable`: anything else, with a reason a person can act on. Nothing here raises.

Why the stdlib parser with ``compat32``: it hands header values back as written (we cut them before
decoding anything) and never runs the address parser, whose cost grows with the square of its input.
Its own costs are bounded before it runs: only the first :data:`MAX_PARSE_BYTES` are parsed (a
report's own parts come first; the rest is the returned message's body, never needed), and those
bytes may hold at most :data:`MAX_CONTAINERS` multipart/message content types (each open level adds
a test to every later line), :data:`MAX_PARTS` part delimiters and :data:`MAX_RECIPIENTS` recipient
blocks. The delivery-status part is read as text and split into blocks here, at most
``MAX_RECIPIENTS + 1`` of them (the parser would build one object per block, however many). A real
report is far below each bound; a report over one is Unreadable with the bound's name (``ingest``
keeps it, nothing is lost).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import message_from_bytes, message_from_string
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32
from types import MappingProxyType

from smtpplus_milter.core.failures import classify
from smtpplus_milter.core.tracking import MAX_FIELD, MAX_SUBJECT, decode_subject

# A DSN returns the original message, which may be large; ingest refuses more than this.
MAX_REPORT_BYTES = 16 * 1024 * 1024
# The head of the message that is parsed (see read_report).
MAX_PARSE_BYTES = 512 * 1024
# multipart/* and message/* content types: the nesting the parser would have to follow.
MAX_CONTAINERS = 64
# Lines that open a part (of any declared boundary).
MAX_PARTS = 1000
# Recipient blocks in one DSN: Postfix's default smtpd_recipient_limit.
MAX_RECIPIENTS = 1000
# Distinct boundaries counted (more than MAX_CONTAINERS of them cannot be legitimate anyway).
_MAX_BOUNDARIES = MAX_CONTAINERS
# A diagnostic (the remote reply) is kept for people, within one header line.
MAX_DIAGNOSTIC = 998
# Parts looked at while searching for the report's own parts (the returned message is not entered).
_MAX_WALK = MAX_PARTS

ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})
# RFC 3464 actions → the tracking status whose class core/failures gives.
_ACTION_STATUS = MappingProxyType({"failed": "bounced", "delayed": "deferred"})

_CONTAINER = re.compile(rb"content-type[ \t]*:\s*(?:multipart|message)/", re.IGNORECASE)
_BOUNDARY = re.compile(rb"""boundary\s*=\s*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))""", re.IGNORECASE)
_STATUS_TYPE = re.compile(rb"(content-type[ \t]*:\s*)message/(global-)?delivery-status", re.IGNORECASE)
_STATUS_AS_TEXT = b"text/x-smtpplus-"
_STATUS_TYPES = frozenset({"text/x-smtpplus-delivery-status", "text/x-smtpplus-global-delivery-status"})
_RECIPIENT_FIELD = re.compile(rb"^final-recipient[ \t]*:", re.IGNORECASE | re.MULTILINE)
_CODE = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
_STATUS = re.compile(r"([245]\.\d{1,3}\.\d{1,3})\Z")
_ADDRESS = re.compile(r"[^\s<>@,;:\"]{1,64}@[A-Za-z0-9.\-\[\]:]{1,255}")


@dataclass(frozen=True)
class ReturnedHeaders:
    """What the report quotes of our message: the keys ingest matches it by, and what people read."""

    message_id: str | None
    smtpplus_id: str | None
    from_: str | None
    to: str | None
    subject: str | None


@dataclass(frozen=True)
class DeliveryEntry:
    """One recipient block of a DSN (addresses without their ``rfc822;`` type, bounded)."""

    final_recipient: str | None
    original_recipient: str | None
    action: str  # failed | delayed | delivered | relayed | expanded (anything else: "unknown")
    status: str | None  # the enhanced code (RFC 3463), None when absent or not one
    diagnostic: str | None  # the remote reply (Diagnostic-Code without its "smtp;" type)
    remote_mta: str | None

    @property
    def tracking_status(self) -> str | None:
        """``bounced`` for a failure, ``deferred`` for a delay, None for anything else."""
        return _ACTION_STATUS.get(self.action)

    @property
    def failure_class(self) -> str | None:
        """hard / soft / blocked (core/failures) for a failure or a delay, else None."""
        status = self.tracking_status
        return None if status is None else classify(status, self.status)

    @property
    def recipient(self) -> str | None:
        """The address to act on: the original recipient (what we sent to) before the final one."""
        return self.original_recipient or self.final_recipient


@dataclass(frozen=True)
class DeliveryReport:
    reporting_mta: str | None
    original_envelope_id: str | None
    arrival_date: str | None
    entries: tuple[DeliveryEntry, ...]
    returned: ReturnedHeaders | None
    standard: bool = True  # False: a plain-text bounce read from its free text (qmail, Exim)


@dataclass(frozen=True)
class ComplaintReport:
    feedback_type: str  # abuse | fraud | virus | other | not-spam | auth-failure | ... (lower case)
    user_agent: str | None
    original_mail_from: str | None
    original_rcpt_to: tuple[str, ...]  # often absent: many receivers redact the recipient
    arrival_date: str | None
    reporting_mta: str | None
    source_ip: str | None
    returned: ReturnedHeaders | None


@dataclass(frozen=True)
class NotAReport:
    reason: str


@dataclass(frozen=True)
class Unreadable:
    reason: str


Report = DeliveryReport | ComplaintReport | NotAReport | Unreadable


def read_report(raw: bytes, *, max_bytes: int = MAX_REPORT_BYTES) -> Report:
    """The report in ``raw``; never raises (a parse failure is :class:`Unreadable` with its reason)."""
    if len(raw) > max_bytes:
        return Unreadable(f"report too large: {len(raw)} bytes, at most {max_bytes}")
    if not raw.strip():
        return Unreadable("empty message")
    # Only the head is parsed: a report's own parts (the notice, the status, the returned headers)
    # come first, and what follows (the rest of the returned message) is never needed; it is also
    # what bounds the parser's time and memory, whatever the limit on the whole.
    cut = len(raw) > MAX_PARSE_BYTES
    head = raw[:MAX_PARSE_BYTES]
    refusal = _too_complex(head)
    if refusal is not None:
        return Unreadable(refusal)
    # The parser would read a message/delivery-status part into one message object per blank-line
    # separated block, however many there are (a megabyte of empty blocks: seconds of CPU); as
    # text, its blocks are split here and at most MAX_RECIPIENTS + 1 of them are read.
    head = _STATUS_TYPE.sub(rb"\1" + _STATUS_AS_TEXT + rb"\2delivery-status", head)
    try:
        report = _read(message_from_bytes(head, policy=compat32))
    except Exception as error:  # hostile input: any failure is a reason, never a crash
        return Unreadable(f"could not parse the message: {type(error).__name__}: {_bounded(str(error), 200)}")
    if cut and isinstance(report, Unreadable):
        return Unreadable(f"{report.reason} (only the first {MAX_PARSE_BYTES} of {len(raw)} bytes were read)")
    return report


def _too_complex(raw: bytes) -> str | None:
    containers = len(_CONTAINER.findall(raw))
    if containers > MAX_CONTAINERS:
        return f"too many nested parts: {containers} multipart or message content types, at most {MAX_CONTAINERS}"
    boundaries = {quoted or bare for quoted, bare in _BOUNDARY.findall(raw)}
    if len(boundaries) > _MAX_BOUNDARIES:
        return f"too many multipart boundaries: {len(boundaries)}, at most {_MAX_BOUNDARIES}"
    # Each delimiter line opens (or closes) one part; counting the boundary anywhere over-counts,
    # which only errs on the side of refusing.
    parts = sum(raw.count(b"--" + boundary) for boundary in boundaries)
    if parts > MAX_PARTS:
        return f"too many parts: {parts} part delimiters, at most {MAX_PARTS}"
    recipients = len(_RECIPIENT_FIELD.findall(raw))
    if recipients > MAX_RECIPIENTS:
        return f"too many recipients: {recipients} Final-Recipient fields, at most {MAX_RECIPIENTS}"
    return None


def _read(message: Message) -> Report:
    status_part: Message | None = None
    feedback_part: Message | None = None
    returned_part: Message | None = None
    for part in _report_parts(message):
        kind = part.get_content_type()
        if kind == "message/feedback-report" and feedback_part is None and status_part is None:
            feedback_part = part
        elif kind in _STATUS_TYPES:
            if status_part is None and feedback_part is None:
                status_part = part
        elif kind in _RETURNED_TYPES and returned_part is None and (status_part or feedback_part):
            returned_part = part
    returned = _returned_headers(returned_part) if returned_part is not None else None
    if feedback_part is not None:
        return _complaint(feedback_part, returned)
    if status_part is not None:
        return _delivery(status_part, returned)
    if message.get_content_type() == "multipart/report":
        param = message.get_param("report-type", "")
        report_type = _bounded(param if isinstance(param, str) else "", 60)
        return Unreadable(f"multipart/report (report-type={report_type!r}) without a delivery-status or feedback part")
    return _not_standard(message)


_RETURNED_TYPES = frozenset(
    {"message/rfc822", "text/rfc822-headers", "message/global", "message/global-headers", "message/rfc822-headers"}
)


def _report_parts(message: Message) -> list[Message]:
    """The parts in order, entering multiparts but not the returned message (its own parts, even a
    DSN it quotes, are not this report's)."""
    found: list[Message] = []
    stack = [message]
    while stack and len(found) < _MAX_WALK:
        part = stack.pop()
        found.append(part)
        if part.is_multipart() and part.get_content_maintype() == "multipart":
            children = part.get_payload()
            if isinstance(children, list):
                stack.extend(reversed([child for child in children if isinstance(child, Message)]))
    return found


# --- DSN -------------------------------------------------------------------------------------------


def _delivery(part: Message, returned: ReturnedHeaders | None) -> Report:
    blocks = _status_blocks(part)
    if not blocks:
        return Unreadable("delivery-status part is empty")
    # Some senders put the per-message fields and the first recipient's in one block.
    per_message, recipients = blocks[0], (blocks if _has_recipient(blocks[0]) else blocks[1:])
    entries = tuple(_entry(block) for block in recipients[:MAX_RECIPIENTS] if _has_recipient(block))
    if not entries:
        return Unreadable("delivery-status part names no recipient (no Final-Recipient field)")
    return DeliveryReport(
        reporting_mta=_typed(_field(per_message, "Reporting-MTA")),
        original_envelope_id=_field(per_message, "Original-Envelope-Id"),
        arrival_date=_field(per_message, "Arrival-Date"),
        entries=entries,
        returned=returned,
    )


def _status_blocks(part: Message) -> list[Message]:
    """The header blocks of a delivery-status part: the per-message one, then one per recipient."""
    chunks = _BLANK_LINE.split(_text(part).strip(), maxsplit=MAX_RECIPIENTS + 1)[: MAX_RECIPIENTS + 1]
    blocks = [HeaderParser(policy=compat32).parsestr(chunk.strip() + "\n") for chunk in chunks if chunk.strip()]
    return blocks


_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def _has_recipient(block: Message) -> bool:
    return block.get("Final-Recipient") is not None or block.get("Original-Recipient") is not None


def _entry(block: Message) -> DeliveryEntry:
    action = (_field(block, "Action") or "").split(" ", 1)[0].lower()
    status = (_field(block, "Status") or "").split(" ", 1)[0]
    code = _STATUS.match(status)
    return DeliveryEntry(
        final_recipient=_address(_typed(_field(block, "Final-Recipient"))),
        original_recipient=_address(_typed(_field(block, "Original-Recipient"))),
        action=action if action in ACTIONS else "unknown",
        status=code.group(1) if code else None,
        diagnostic=_typed(_field(block, "Diagnostic-Code", MAX_DIAGNOSTIC)),
        remote_mta=_typed(_field(block, "Remote-MTA")),
    )


# --- ARF -------------------------------------------------------------------------------------------


def _complaint(part: Message, returned: ReturnedHeaders | None) -> Report:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        fields = payload[0]  # the parser reads message/* as a nested message: its headers
    else:
        fields = message_from_string(_text(part).strip() + "\n", policy=compat32)
    feedback_type = (_field(fields, "Feedback-Type") or "").lower()
    if not feedback_type:
        return Unreadable("feedback report without a Feedback-Type field")
    recipients = [_address(value) for value in _all_fields(fields, "Original-Rcpt-To")]
    return ComplaintReport(
        feedback_type=_bounded(feedback_type, 60),
        user_agent=_field(fields, "User-Agent"),
        original_mail_from=_address(_field(fields, "Original-Mail-From")),
        original_rcpt_to=tuple(address for address in recipients if address),
        arrival_date=_field(fields, "Arrival-Date") or _field(fields, "Received-Date"),
        reporting_mta=_typed(_field(fields, "Reporting-MTA")),
        source_ip=_field(fields, "Source-IP"),
        returned=returned,
    )


# --- the returned message --------------------------------------------------------------------------


def _returned_headers(part: Message) -> ReturnedHeaders | None:
    payload = part.get_payload()
    if not (isinstance(payload, list) and payload and isinstance(payload[0], Message)):
        return _headers_of(_text(part).lstrip())  # text/rfc822-headers: the text is the headers
    returned = _returned_from(payload[0])
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if returned is None and encoding in ("base64", "quoted-printable"):
        # Not allowed for message/* (RFC 2046), but some senders encode the returned message: the
        # parser then read the encoded text as a body without headers.
        carrier = Message()
        carrier["Content-Transfer-Encoding"] = encoding
        carrier.set_payload(str(payload[0].get_payload())[:MAX_PARSE_BYTES])
        return _headers_of(_text(carrier).lstrip())
    return returned


def _headers_of(text: str) -> ReturnedHeaders | None:
    return _returned_from(HeaderParser(policy=compat32).parsestr(text + "\n", headersonly=True))


def _returned_from(headers: Message) -> ReturnedHeaders | None:
    subject = _raw_field(headers, "Subject", MAX_SUBJECT * 4)
    returned = ReturnedHeaders(
        message_id=_field(headers, "Message-ID"),
        smtpplus_id=_field(headers, "X-SMTPPlus-ID"),
        from_=_field(headers, "From"),
        to=_field(headers, "To"),
        subject=None if subject is None else decode_subject(subject),
    )
    return None if returned == ReturnedHeaders(None, None, None, None, None) else returned


# --- plain-text bounces and auto-replies -----------------------------------------------------------

_QMAIL = re.compile(r"I'm afraid I wasn't able to deliver your message|I wasn't able to deliver your message")
_QMAIL_END = "--- Below this line is a copy of the message."
_EXIM = re.compile(r"could not be delivered to one or more of its\s+recipients", re.IGNORECASE)
_EXIM_END = re.compile(r"^-{3,} This is a copy of the message", re.MULTILINE)
_AUTO_SUBJECT = re.compile(
    r"^\s*(?:auto(?:matic)?[ -]?reply|out of (?:the )?office|abwesenheit|absence|vacation|r[eé]ponse automatique)\b",
    re.IGNORECASE,
)
_DAEMON = re.compile(r"\b(?:mailer-daemon|postmaster|mail delivery)", re.IGNORECASE)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery (?:status|failure|notification|has failed)|returned mail|failure notice|"
    r"mail delivery failed|non remis|unzustellbar|nicht zustellbar",
    re.IGNORECASE,
)


def _not_standard(message: Message) -> Report:
    subject = decode_subject(_raw_field(message, "Subject", MAX_SUBJECT * 4) or "")
    sender = _field(message, "From") or ""
    # Bounces carry "Auto-Submitted: auto-replied" too (RFC 3834), so the two plain-text bounce
    # formats are tried first, and a message that looks like any other bounce is never called an
    # auto-reply: it stays Unreadable, so ingest keeps it for a person.
    body = _first_text(message)
    if body is not None and _QMAIL.search(body):
        head, _, copy = body.partition(_QMAIL_END)
        report = _plain_bounce(head, copy, qmail=True)
        return report or Unreadable("qmail-style bounce without a recognisable recipient line")
    if body is not None and _EXIM.search(body):
        head, *rest = _EXIM_END.split(body, 1)
        report = _plain_bounce(head, rest[0].partition("\n")[2] if rest else "", qmail=False)
        return report or Unreadable("Exim-style bounce without a recognisable recipient line")
    described = (
        f"a {message.get_content_type()} from {_bounded(sender or 'no From', 80)!r}, Subject {_bounded(subject, 80)!r}"
    )
    if _DAEMON.search(sender) or _BOUNCE_SUBJECT.search(subject):
        return Unreadable(
            f"looks like a bounce, but in no format read here (no message/delivery-status part): {described}"
        )
    auto = (_field(message, "Auto-Submitted") or "").lower()
    if auto.startswith("auto-replied") or message.get("X-Autoreply") or message.get("X-Autorespond"):
        return NotAReport(f"an automatic reply (Auto-Submitted: {auto or 'absent'}): {described}")
    if _AUTO_SUBJECT.search(subject):
        return NotAReport(f"an automatic reply (by its Subject): {described}")
    return Unreadable(f"not a report: no message/delivery-status or message/feedback-report part ({described})")


def _plain_bounce(text: str, copy: str, *, qmail: bool) -> DeliveryReport | None:
    """Recipients of a qmail (``<addr>:`` paragraphs) or Exim (indented address, then the reason)
    bounce. Only lines in those fixed shapes count, so an address quoted in the reason does not."""
    entries: list[DeliveryEntry] = []
    lines = text.splitlines()
    for index, line in enumerate(lines[:5000]):
        if qmail:
            match = re.fullmatch(r"<([^<>\s]{3,320})>:", line.strip())
        else:
            match = re.fullmatch(r"  ([^<>\s@]{1,64}@[^<>\s]{1,255})", line.rstrip())
        if match is None or not _ADDRESS.fullmatch(match.group(1)):
            continue
        reason_lines = []
        for follow in lines[index + 1 : index + 12]:
            if not follow.strip() or (not qmail and not follow.startswith("    ")):
                break
            reason_lines.append(follow.strip())
        reason = _bounded(" ".join(reason_lines), MAX_DIAGNOSTIC) or None
        code = _CODE.search(reason or "")
        entries.append(
            DeliveryEntry(
                final_recipient=_bounded(match.group(1), MAX_FIELD),
                original_recipient=None,
                action="failed",
                status=code.group(1) if code else None,
                diagnostic=reason,
                remote_mta=None,
            )
        )
        if len(entries) >= MAX_RECIPIENTS:
            break
    if not entries:
        return None
    # The copy of the message follows its marker line: its headers are the returned headers.
    returned = _headers_of(copy.lstrip("\n")) if copy.strip() else None
    return DeliveryReport(None, None, None, tuple(entries), returned, standard=False)


def _first_text(message: Message) -> str | None:
    for part in _report_parts(message):
        if part.get_content_type() == "text/plain":
            return _text(part)
    return None


# --- field helpers ---------------------------------------------------------------------------------


def _text(part: Message) -> str:
    """A part's body as text: transfer encoding undone, its charset if known, else UTF-8 with
    replacement characters (a wrong or unknown charset never fails the report)."""
    payload = part.get_payload()
    if isinstance(payload, list):
        # The parser read a message/* body as a nested message: its bytes as they came.
        texts = (item.as_bytes().decode("utf-8", "replace") for item in payload if isinstance(item, Message))
        return "\n".join(texts).replace("\r\n", "\n")
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return str(payload)
    charset = part.get_content_charset() or "utf-8"
    try:
        text = data.decode(charset, "replace")
    except LookupError:
        text = data.decode("utf-8", "replace")
    return text.replace("\r\n", "\n")  # one line break, whatever the sender used


def _raw_field(message: Message, name: str, limit: int) -> str | None:
    """The first value of a header as written, cut to ``limit`` characters before anything reads
    it; raw 8-bit bytes are read as UTF-8 (replacement characters where they are not)."""
    lowered = name.lower()
    for key, value in message.raw_items():
        if key.lower() == lowered:
            text = str(value)[: limit * 2]
            text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            return _bounded(text, limit)
    return None


def _field(message: Message, name: str, limit: int = MAX_FIELD) -> str | None:
    """A structured field's value: unfolded, stripped, bounded; None when absent or empty."""
    value = _raw_field(message, name, limit)
    if value is None:
        return None
    value = " ".join(value.split())
    return value or None


def _all_fields(message: Message, name: str) -> list[str]:
    lowered = name.lower()
    values: list[str] = []
    for key, value in message.raw_items():
        if key.lower() == lowered and len(values) < MAX_RECIPIENTS:
            text = str(value)[: MAX_FIELD * 2].encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            values.append(_bounded(" ".join(text.split()), MAX_FIELD))
    return values


def _typed(value: str | None) -> str | None:
    """A DSN value without its type (``rfc822;``, ``smtp;``, ``dns;``): what follows the first ``;``."""
    if value is None:
        return None
    kind, separator, rest = value.partition(";")
    if separator and re.fullmatch(r"[A-Za-z0-9.-]{1,40}", kind.strip()):
        value = rest.strip()
    return value or None


def _address(value: str | None) -> str | None:
    """An address as the report gave it, without angle brackets or surrounding space."""
    if value is None:
        return None
    value = value.strip().removeprefix("<").removesuffix(">").strip()
    return value or None


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit]
