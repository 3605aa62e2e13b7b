"""Priority: reading every header form, the effective level, and the header edits."""

from __future__ import annotations

import pytest

from smtpplus_milter.core.priority import (
    HeaderEdit,
    effective_priority,
    plan_header_edits,
    plan_priority,
    read_priority,
)
from tests.support.builders import QUEUES

H = list[tuple[str, str]]

READ_CASES = [
    pytest.param([], 3, "default", False, 0, id="none"),
    pytest.param([("X-Priority", "1")], 1, "X-Priority", True, 0, id="x-priority-1"),
    pytest.param([("X-Priority", "1 (Highest)")], 1, "X-Priority", True, 0, id="x-priority-highest"),
    pytest.param([("X-Priority", "2 (High)")], 2, "X-Priority", True, 0, id="x-priority-high"),
    pytest.param([("X-Priority", " 5")], 5, "X-Priority", True, 0, id="x-priority-leading-space"),
    pytest.param([("X-Priority", "urgent")], 3, "X-Priority", True, 1, id="x-priority-word-invalid"),
    pytest.param([("X-Priority", "0")], 3, "X-Priority", True, 1, id="x-priority-0"),
    pytest.param([("X-Priority", "9")], 3, "X-Priority", True, 1, id="x-priority-9"),
    pytest.param([("X-Priority", "")], 3, "X-Priority", True, 1, id="x-priority-empty"),
    pytest.param([("X-Priority", "12")], 3, "X-Priority", True, 1, id="x-priority-12"),
    pytest.param([("x-priority", "4")], 4, "X-Priority", True, 0, id="lowercase-name"),
    pytest.param([("X-PRIORITY", "2\n (High)")], 2, "X-Priority", True, 0, id="folded-uppercase"),
    pytest.param([("X-Priority", "1"), ("X-Priority", "5")], 3, "X-Priority", True, 1, id="two-conflicting"),
    pytest.param([("X-Priority", "1"), ("X-Priority", "1 (Highest)")], 1, "X-Priority", True, 0, id="two-agreeing"),
    pytest.param([("X-MSMail-Priority", "High")], 1, "X-MSMail-Priority", True, 0, id="msmail-high"),
    pytest.param([("X-MSMail-Priority", "low")], 5, "X-MSMail-Priority", True, 0, id="msmail-low"),
    pytest.param([("Importance", "high")], 1, "Importance", True, 0, id="importance-high"),
    pytest.param([("Importance", "Normal")], 3, "Importance", True, 0, id="importance-normal"),
    pytest.param([("Importance", "LOW")], 5, "Importance", True, 0, id="importance-low-upper"),
    pytest.param([("Importance", "very")], 3, "Importance", True, 1, id="importance-invalid"),
    pytest.param(
        [("Importance", "high"), ("X-MSMail-Priority", "High")],
        1,
        "X-MSMail-Priority",
        True,
        0,
        id="msmail-and-importance",
    ),
    pytest.param(
        [("Importance", "low"), ("X-MSMail-Priority", "High")],
        3,
        "X-MSMail-Priority+Importance",
        True,
        1,
        id="msmail-importance-disagree",
    ),
    pytest.param([("Priority", "urgent")], 1, "Priority", True, 0, id="priority-urgent"),
    pytest.param([("Priority", "non-urgent")], 5, "Priority", True, 0, id="priority-non-urgent"),
    pytest.param([("Priority", "normal")], 3, "Priority", True, 0, id="priority-normal"),
    pytest.param([("Priority", "bulk")], 3, "Priority", True, 1, id="priority-invalid"),
    pytest.param([("X-Priority", "5"), ("Importance", "high")], 5, "X-Priority", True, 0, id="x-priority-wins"),
    pytest.param(
        [("Importance", "high"), ("Priority", "non-urgent")], 1, "Importance", True, 0, id="importance-over-priority"
    ),
    pytest.param(
        [("X-Priority", "bogus"), ("Importance", "high")], 3, "X-Priority", True, 1, id="invalid-x-priority-counts-as-3"
    ),
]


@pytest.mark.parametrize(("headers", "level", "source", "carried", "problems"), READ_CASES)
def test_read_priority(headers: H, level: int, source: str, carried: bool, problems: int) -> None:
    reading = read_priority(headers)
    assert (reading.level, reading.source, reading.carried, len(reading.problems)) == (level, source, carried, problems)


@pytest.mark.parametrize("user", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("message", [1, 2, 3, 4, 5])
def test_effective_is_the_higher_priority(user: int, message: int) -> None:
    assert effective_priority(user, message) == min(user, message)


def _apply(headers: H, edits: tuple[HeaderEdit, ...]) -> H:
    """A model of the MTA: indices count headers of that name, case-insensitively, at that moment."""
    result = list(headers)
    for edit in edits:
        if edit.action == "add":
            result.append((edit.name, edit.value))
            continue
        positions = [i for i, (key, _) in enumerate(result) if key.lower() == edit.name.lower()]
        position = positions[edit.index - 1]
        if edit.action == "delete":
            del result[position]
        else:
            result[position] = (result[position][0], edit.value)
    return result


def _priority_set(headers: H) -> list[tuple[str, str]]:
    names = {"x-priority", "x-msmail-priority", "importance", "priority", "x-smtpplus-queue"}
    return sorted((key.lower(), value) for key, value in headers if key.lower() in names)


EDIT_CASES = [
    pytest.param(3, [("Subject", "hi")], [("x-smtpplus-queue", "normal")], id="normal-untouched-but-queue"),
    pytest.param(
        3,
        [("X-Priority", "1")],
        [
            ("importance", "high"),
            ("x-msmail-priority", "High"),
            ("x-priority", "1 (Highest)"),
            ("x-smtpplus-queue", "high"),
        ],
        id="user3-msg1",
    ),
    pytest.param(
        1,
        [("Subject", "x")],
        [
            ("importance", "high"),
            ("x-msmail-priority", "High"),
            ("x-priority", "1 (Highest)"),
            ("x-smtpplus-queue", "high"),
        ],
        id="user1-no-header",
    ),
    pytest.param(
        5,
        [("Priority", "non-urgent")],
        [
            ("importance", "low"),
            ("x-msmail-priority", "Low"),
            ("x-priority", "5 (Lowest)"),
            ("x-smtpplus-queue", "low"),
        ],
        id="priority-header-replaced",
    ),
    pytest.param(
        2,
        [("X-Priority", "5"), ("x-priority", "4"), ("Importance", "low"), ("IMPORTANCE", "low")],
        [
            ("importance", "high"),
            ("x-msmail-priority", "High"),
            ("x-priority", "2 (High)"),
            ("x-smtpplus-queue", "high"),
        ],
        id="duplicates-collapsed",
    ),
    pytest.param(
        3,
        [("X-Priority", "3 (Normal)")],
        [
            ("importance", "normal"),
            ("x-msmail-priority", "Normal"),
            ("x-priority", "3 (Normal)"),
            ("x-smtpplus-queue", "normal"),
        ],
        id="explicit-normal-completed",
    ),
    pytest.param(
        3,
        [("Priority", "non-urgent")],
        [
            ("importance", "normal"),
            ("x-msmail-priority", "Normal"),
            ("x-priority", "3 (Normal)"),
            ("x-smtpplus-queue", "normal"),
        ],
        id="user-default-beats-lower-message",
    ),
    pytest.param(
        5,
        [("Subject", "news")],
        [
            ("importance", "low"),
            ("x-msmail-priority", "Low"),
            ("x-priority", "5 (Lowest)"),
            ("x-smtpplus-queue", "low"),
        ],
        id="user5-no-header-uses-default",
    ),
    pytest.param(
        4,
        [("X-SMTPPlus-Queue", "high"), ("x-smtpplus-queue", "high"), ("X-SMTPPlus-Other", "1")],
        [("importance", "low"), ("x-msmail-priority", "Low"), ("x-priority", "4 (Low)"), ("x-smtpplus-queue", "low")],
        id="forged-queue-removed",
    ),
]


@pytest.mark.parametrize(("user", "headers", "expected"), EDIT_CASES)
def test_header_edits_leave_one_consistent_set(user: int, headers: H, expected: list[tuple[str, str]]) -> None:
    plan = plan_priority(headers, user_priority=user, queues=QUEUES)
    after = _apply(headers, plan.edits)
    assert _priority_set(after) == sorted(expected)
    assert [key for key, _ in after if key.lower().startswith("x-smtpplus-") and key != "X-SMTPPlus-Queue"] == []


def test_no_edit_when_already_consistent() -> None:
    headers = [("X-Priority", "1 (Highest)"), ("X-MSMail-Priority", "High"), ("Importance", "high")]
    edits = plan_header_edits(headers, effective=1, carried=True, queue=None)
    assert edits == ()


def test_deletions_run_last_to_first() -> None:
    headers = [("X-Priority", "1"), ("X-Priority", "2"), ("X-Priority", "3")]
    edits = [e for e in plan_header_edits(headers, effective=1, carried=True, queue=None) if e.name == "X-Priority"]
    assert [(e.action, e.index) for e in edits] == [("delete", 3), ("delete", 2), ("change", 1)]
