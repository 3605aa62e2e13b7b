"""Reading Postfix's log lines: what happened to which queue id (values in, values out; no I/O).

The follower hands each line of Postfix's ``maillog_file`` (postlogd) or of a syslog file to
:func:`parse_line`, which returns the events in it that delivery tracking uses:

* :class:`Delivery`: one attempt for one recipient (``QID: to=<r>, ..., status=sent (reply)``),
  from any delivery agent (``smtp``, ``lmtp``, ``local``, ``virtual``, ``pipe``, ``error``,
  ``discard``...) and from ``qmgr`` itself (it defers or bounces recipients without an agent);
* :class:`Link`: the message goes on under another queue id: ``queued as NEWQID`` in a sent
  reply (re-injection through a content filter) or ``sender non-delivery notification: NEWQID``
  from ``bounce`` (the notification Postfix made);
* :class:`Expired`: ``qmgr`` gave up on the whole message (``from=<s>, status=expired, returned
  to sender``; Postfix names no recipient there: every recipient still deferred has expired);
* :class:`Removed`: the queue file is gone (``qmgr`` after the last recipient, or ``postsuper``);
* :class:`Active`: ``qmgr`` took the message into the active queue (sender, size, recipients).

Everything else (connections, warnings, other programs) gives ``()``. A line is first matched
against one header expression (time, host, program, queue id); :func:`peek_queue_id` stops there,
so a follower that knows which queue ids it tracks skips most lines of a busy host without reading
their fields.

Two time formats are read: the classic ``Mon DD HH:MM:SS`` (postlogd in Postfix 3.7 writes
``Dec 01 03:39:12``, syslog ``Dec  1 03:39:12``; no year and no zone, so the caller's ``now`` and
zone fill them in, a December line read in January being last year's) and RFC 3339
(``2026-12-01T02:35:20.123456+00:00``, from rsyslog's high-precision format or newer postlogd).
"""

from __future__ import annotations

import re
from collections.abc import Container
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from types import MappingProxyType

# The 52-character alphabet of long queue ids (digits and letters without vowels); the last 'z'
# separates the time part (at least ten characters) from the inode part, which never has a 'z'.
_SAFE = "0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z"
_SAFE_NO_Z = "0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-y"
QUEUE_ID = rf"(?:[0-9A-F]{{6,20}}|[{_SAFE}]{{10,}}z[{_SAFE_NO_Z}]+)"

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# Time, host, program[pid], an optional Solaris-style "[ID 197553 mail.info] " tag, queue id.
_HEADER = re.compile(
    r"(?:(?P<mon>[A-Z][a-z]{2}) (?P<day>[ \d]\d) (?P<clock>\d\d:\d\d:\d\d)(?:\.\d+)?"
    r"|(?P<iso>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?))"
    r" \S+ (?P<prog>[^\s\[:/]+(?:/[^\s\[:/]+)*/(?P<svc>[^\s\[:/]+))(?:\[\d+\])?:"
    r" (?:\[ID \d+ [\w.]+\] )?"
    rf"(?P<qid>{QUEUE_ID}): "
)
# One key=value field of a delivery line; a value holds ',' only inside <...> or [...].
_FIELD = re.compile(r"([a-z_]+)=((?:<[^>]*>|\[[^\]]*\]|[^,<\[])*)(?:, |\Z)")
_STATUS = re.compile(r"status=([A-Za-z]+)")
_QUEUED_AS = re.compile(rf"\bqueued as ({QUEUE_ID})\b")
_NOTIFICATION = re.compile(rf"(sender|postmaster) (non-delivery|delay|delivery status) notification: ({QUEUE_ID})\Z")
_ACTIVE = re.compile(r"from=<(.*)>, size=(\d+), nrcpt=(\d+) \(queue active\)\Z")
_EXPIRED = re.compile(r"from=<(.*)>, status=expired, returned to sender\Z")

# Postfix's words for a recipient's status, to ours. SOFTBOUNCE (soft_bounce = yes) keeps the
# recipient queued, which is a deferral; "deliverable"/"undeliverable" answer address-verification
# probes (not mail anyone sent) and are left out.
_STATUSES = MappingProxyType(
    {"sent": "sent", "deferred": "deferred", "bounced": "bounced", "expired": "expired", "SOFTBOUNCE": "deferred"}
)


@dataclass(frozen=True, slots=True)
class Delivery:
    at: datetime
    queue_id: str
    recipient: str
    orig_recipient: str | None
    status: str  # sent | deferred | bounced | expired
    dsn: str | None
    relay: str | None
    delay: float | None
    reply: str  # the parenthesised text after the status: the remote reply or Postfix's reason
    service: str  # the part after the last '/' of the program name: smtp, lmtp, local, qmgr...
    program: str  # the whole program name: postfix/relay/smtp, postfix-out/smtp...
    delays: str | None = None
    tls: str | None = None  # Postfix 3.11's per-feature TLS summary, as written


@dataclass(frozen=True, slots=True)
class Link:
    at: datetime
    queue_id: str
    new_queue_id: str
    kind: str  # "queued_as" (re-injected), or "bounce" / "delay" / "dsn" (a notification)
    relay: str | None = None  # for "queued_as": who said it (a remote host's ids mean nothing here)


@dataclass(frozen=True, slots=True)
class Expired:
    at: datetime
    queue_id: str
    sender: str


@dataclass(frozen=True, slots=True)
class Removed:
    at: datetime
    queue_id: str


@dataclass(frozen=True, slots=True)
class Active:
    at: datetime
    queue_id: str
    sender: str
    size: int
    nrcpt: int


Event = Delivery | Link | Expired | Removed | Active

_NOTIFICATION_KIND = MappingProxyType({"non-delivery": "bounce", "delay": "delay", "delivery status": "dsn"})
_MONTH = MappingProxyType({name: number for number, name in enumerate(_MONTHS, start=1)})


def peek_queue_id(line: str) -> str | None:
    """The queue id a Postfix line is about, or None (another program, or no queue id)."""
    m = _HEADER.match(line)
    return m.group("qid") if m else None


def parse_line(
    line: str,
    *,
    now: datetime,
    zone: tzinfo = UTC,
    wanted: Container[str] | None = None,
) -> tuple[Event, ...]:
    """The tracking events in one log line (usually zero or one).

    *now* (aware) supplies the year of a classic timestamp; *zone* is the zone such a timestamp
    was written in (Postfix writes local time). With *wanted*, a line about a queue id not in it
    is dropped before its fields are read.
    """
    m = _HEADER.match(line)
    if m is None:
        return ()
    qid = m.group("qid")
    if wanted is not None and qid not in wanted:
        return ()
    at = _time(m, now, zone)
    if at is None:
        return ()
    rest = line[m.end() :]
    if rest.startswith("to=<"):
        return _delivery(m, at, qid, rest)
    svc = m.group("svc")
    if rest == "removed":
        return (Removed(at, qid),)
    if svc == "qmgr" and rest.startswith("from=<"):
        if (a := _ACTIVE.match(rest)) is not None:
            return (Active(at, qid, a.group(1), int(a.group(2)), int(a.group(3))),)
        if (e := _EXPIRED.match(rest)) is not None:
            return (Expired(at, qid, e.group(1)),)
        return ()
    if svc == "bounce" and (n := _NOTIFICATION.match(rest)) is not None:
        return (Link(at, qid, n.group(3), _NOTIFICATION_KIND[n.group(2)]),)
    return ()


def _delivery(m: re.Match[str], at: datetime, qid: str, rest: str) -> tuple[Event, ...]:
    fields: dict[str, str] = {}
    pos = 0
    end = len(rest)
    while pos < end and not rest.startswith("status=", pos):
        f = _FIELD.match(rest, pos)
        if f is None or f.end() == pos:
            return ()  # not the shape of a delivery line (or cut before its status)
        fields[f.group(1)] = f.group(2)
        pos = f.end()
    s = _STATUS.match(rest, pos)
    if s is None:
        return ()
    status = _STATUSES.get(s.group(1))
    to = fields.get("to")
    if status is None or to is None:
        return ()
    # What follows the status word: " (text)" (the text may hold anything, parentheses too; a
    # cut line may lack the closing one) or ", returned to sender".
    after = rest[s.end() :]
    if after.startswith(" ("):
        reply = after[2:-1] if after.endswith(")") else after[2:]
    else:
        reply = after.removeprefix(", ")
    orig = fields.get("orig_to")
    relay = fields.get("relay")
    delivery = Delivery(
        at=at,
        queue_id=qid,
        recipient=to[1:-1],
        orig_recipient=orig[1:-1] if orig else None,
        status=status,
        dsn=fields.get("dsn"),
        relay=relay,
        delay=_number(fields.get("delay")),
        reply=reply,
        service=m.group("svc"),
        program=m.group("prog"),
        delays=fields.get("delays"),
        tls=fields.get("tls"),
    )
    if status == "sent" and "queued as" in reply and (q := _QUEUED_AS.search(reply)) is not None:
        return (delivery, Link(at, qid, q.group(1), "queued_as", relay))
    return (delivery,)


def _number(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _time(m: re.Match[str], now: datetime, zone: tzinfo) -> datetime | None:
    """The line's time, aware; None for a date that does not exist (a garbled line)."""
    iso = m.group("iso")
    if iso is not None:
        try:
            at = datetime.fromisoformat(iso.replace(" ", "T", 1))
        except ValueError:
            return None
        return at if at.tzinfo is not None else at.replace(tzinfo=zone)
    month = _MONTH.get(m.group("mon"))
    if month is None:
        return None
    clock = m.group("clock")
    day = int(m.group("day"))
    here = now.astimezone(zone)
    latest = here + timedelta(days=1)  # slack for clocks and zones
    # No year in the line: it is the latest year that does not put the line in the future, so a
    # December line read in January is last year's (and 29 February is the last leap year's).
    for year in range(here.year + 1, here.year - 8, -1):
        try:
            at = datetime(year, month, day, int(clock[0:2]), int(clock[3:5]), int(clock[6:8]), tzinfo=zone)
        except ValueError:
            continue  # 29 February of a common year, or no such day at all
        if at <= latest:
            return at
    return None
