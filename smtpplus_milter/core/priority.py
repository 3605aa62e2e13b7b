"""Message priority: read it, combine it with the user's, and plan the header edits.

Levels: 1 very high, 2 high, 3 normal, 4 low, 5 very low. The edits are values
(:class:`HeaderEdit`) that the milter adapter turns into ``chgheader``/``addheader`` at end of
message; nothing here talks to libmilter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

NORMAL = 3

X_PRIORITY_LABELS = MappingProxyType({1: "Highest", 2: "High", 3: "Normal", 4: "Low", 5: "Lowest"})
MSMAIL_LABELS = MappingProxyType({1: "High", 2: "High", 3: "Normal", 4: "Low", 5: "Low"})

# Header names we own: every one is written at the effective level, or removed.
PRIORITY_HEADERS = ("X-Priority", "X-MSMail-Priority", "Importance", "Priority")
QUEUE_HEADER = "X-SMTPPlus-Queue"
OWN_PREFIX = "x-smtpplus-"

_X_PRIORITY = re.compile(r"^\s*([1-5])(?:\s|\(|$)")
_WORDS = MappingProxyType({"high": 1, "normal": 3, "low": 5})
_PRIORITY_WORDS = MappingProxyType({"urgent": 1, "normal": 3, "non-urgent": 5})


@dataclass(frozen=True)
class PriorityReading:
    """What the message itself asks for, and where that came from."""

    level: int
    source: str  # the header that decided, or "default"
    carried: bool  # the message had any priority header at all
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class HeaderEdit:
    """One header change. ``index`` is 1-based among headers of that name (case-insensitive)."""

    action: str  # "change" | "delete" | "add"
    name: str
    value: str = ""
    index: int = 0


_PRIORITY_NAMES = frozenset(name.lower() for name in PRIORITY_HEADERS)


def _unfold(value: str) -> str:
    return re.sub(r"\r?\n[ \t]", " ", value).strip()


def _single(values: list[str], name: str, parse: Mapping[str, int] | None) -> tuple[int | None, str | None]:
    """(level, problem) for the values of one header name; (None, None) when the header is absent."""
    if not values:
        return None, None
    levels = set()
    for value in values:
        if parse is None:
            match = _X_PRIORITY.match(value)
            level = int(match.group(1)) if match else None
        else:
            level = parse.get(value.lower())
        if level is None:
            return NORMAL, f"{name}: {value[:40]!r} is not a valid priority; counted as {NORMAL}"
        levels.add(level)
    if len(levels) > 1:
        return (
            NORMAL,
            f"{len(values)} {name} headers disagree ({', '.join(v[:20] for v in values)}); counted as {NORMAL}",
        )
    return levels.pop(), None


def read_priority(headers: Sequence[tuple[str, str]]) -> PriorityReading:
    """The message's own priority: X-Priority, else X-MSMail-Priority/Importance, else Priority, else 3."""
    # One pass over the headers (this runs for every message; most carry no priority at all).
    found_values: dict[str, list[str]] = {}
    for key, value in headers:
        lowered = key.strip().lower()
        if lowered in _PRIORITY_NAMES:
            found_values.setdefault(lowered, []).append(_unfold(value))
    if not found_values:
        return PriorityReading(NORMAL, "default", False)
    for names, parse in (
        (("X-Priority",), None),
        (("X-MSMail-Priority", "Importance"), _WORDS),
        (("Priority",), _PRIORITY_WORDS),
    ):
        found = [(name, *_single(found_values.get(name.lower(), []), name, parse)) for name in names]
        present = [(name, level, problem) for name, level, problem in found if level is not None]
        if not present:
            continue
        problems = tuple(problem for _, _, problem in present if problem)
        valid = [(name, level) for name, level, problem in present if not problem]
        if len(valid) == 2 and valid[0][1] != valid[1][1]:
            problems += (f"{valid[0][0]} and {valid[1][0]} disagree; counted as {NORMAL}",)
            return PriorityReading(NORMAL, "+".join(names), True, problems)
        if valid:
            return PriorityReading(valid[0][1], valid[0][0], True, problems)
        return PriorityReading(NORMAL, present[0][0], True, problems)
    return PriorityReading(NORMAL, "default", True)


def effective_priority(user_priority: int, message_priority: int) -> int:
    """The higher of the two priorities, i.e. the numerically smaller level."""
    return min(user_priority, message_priority)


def desired_priority_headers(level: int) -> dict[str, str]:
    return {
        "X-Priority": f"{level} ({X_PRIORITY_LABELS[level]})",
        "X-MSMail-Priority": MSMAIL_LABELS[level],
        "Importance": MSMAIL_LABELS[level].lower(),
    }


def plan_header_edits(
    headers: Sequence[tuple[str, str]], *, effective: int, carried: bool, queue: str | None
) -> tuple[HeaderEdit, ...]:
    """Every edit that leaves the message with one consistent priority set and one queue header.

    Deletions of repeated headers go from the last occurrence to the first, so the index of a
    header still to be handled never shifts, whatever the MTA does with indices of deleted ones.
    """
    edits: list[HeaderEdit] = []
    by_name: dict[str, list[tuple[str, str]]] = {}
    for key, value in headers:
        by_name.setdefault(key.strip().lower(), []).append((key, value))

    # Client-supplied X-SMTPPlus-* headers go first: only we set those.
    for lowered, items in by_name.items():
        if lowered.startswith(OWN_PREFIX):
            edits += [HeaderEdit("delete", items[i][0], index=i + 1) for i in reversed(range(len(items)))]

    if effective != NORMAL or carried:
        for name, value in desired_priority_headers(effective).items():
            items = by_name.get(name.lower(), [])
            edits += [HeaderEdit("delete", items[i][0], index=i + 1) for i in reversed(range(1, len(items)))]
            if not items:
                edits.append(HeaderEdit("add", name, value))
            elif _unfold(items[0][1]) != value:
                edits.append(HeaderEdit("change", items[0][0], value, index=1))
        # RFC 2156 Priority: would contradict the rewritten set; it is not part of it.
        items = by_name.get("priority", [])
        edits += [HeaderEdit("delete", items[i][0], index=i + 1) for i in reversed(range(len(items)))]

    if queue is not None:
        edits.append(HeaderEdit("add", QUEUE_HEADER, queue))
    return tuple(edits)


@dataclass(frozen=True)
class PriorityPlan:
    """Everything the end of message needs: the levels (for the log and metrics) and the edits."""

    message: int
    user: int
    effective: int
    queue: str
    reading: PriorityReading
    edits: tuple[HeaderEdit, ...]


def plan_priority(headers: Sequence[tuple[str, str]], *, user_priority: int, queues: Mapping[int, str]) -> PriorityPlan:
    reading = read_priority(headers)
    # The user's priority is their *default*: a message that says nothing about its priority
    # gets it as is (docs/priority.md explains this reading of the rule).
    effective = effective_priority(user_priority, reading.level) if reading.carried else user_priority
    queue = queues[effective]
    edits = plan_header_edits(headers, effective=effective, carried=reading.carried, queue=queue)
    return PriorityPlan(reading.level, user_priority, effective, queue, reading, edits)
