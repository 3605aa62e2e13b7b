"""The failure classes: one golden row per enhanced status code the class table names."""

from __future__ import annotations

import pytest

from smtpplus_milter.core.failures import BLOCKED, HARD, SOFT, classify

GOLDEN = [
    # hard: the address does not exist or is disabled
    ("bounced", "5.1.0", HARD),
    ("bounced", "5.1.1", HARD),
    ("bounced", "5.1.2", HARD),
    ("bounced", "5.1.3", HARD),
    ("bounced", "5.1.4", HARD),
    ("bounced", "5.1.6", HARD),
    ("bounced", "5.1.10", HARD),
    ("bounced", "5.2.1", HARD),
    # soft: may work later
    ("bounced", "5.2.2", SOFT),
    ("bounced", "5.3.4", SOFT),
    ("bounced", "5.4.0", SOFT),
    ("bounced", "5.4.4", SOFT),
    ("bounced", "5.4.6", SOFT),
    ("deferred", "4.0.0", SOFT),
    ("deferred", "4.2.0", SOFT),
    ("deferred", "4.4.1", SOFT),
    ("deferred", "4.7.1", SOFT),
    ("bounced", "4.4.7", SOFT),
    ("expired", None, SOFT),
    ("expired", "4.4.7", SOFT),
    # permanent codes the table does not name: soft, never a suppression on their own
    ("bounced", "5.0.0", SOFT),
    ("bounced", "5.1.5", SOFT),
    ("bounced", "5.1.7", SOFT),
    ("bounced", "5.2.0", SOFT),
    ("bounced", "5.2.3", SOFT),
    ("bounced", "5.3.0", SOFT),
    ("bounced", "5.5.0", SOFT),
    ("bounced", "5.6.0", SOFT),
    # blocked: policy, reputation, spam
    ("bounced", "5.7.0", BLOCKED),
    ("bounced", "5.7.1", BLOCKED),
    ("bounced", "5.7.26", BLOCKED),
    ("bounced", "5.7.509", BLOCKED),
    # a delivery has no class
    ("sent", "2.0.0", None),
    ("sent", None, None),
]


@pytest.mark.parametrize(("status", "dsn", "expected"), [pytest.param(*row, id=f"{row[0]}-{row[1]}") for row in GOLDEN])
def test_class_by_enhanced_status_code(status: str, dsn: str | None, expected: str | None) -> None:
    assert classify(status, dsn) == expected


@pytest.mark.parametrize(
    "dsn",
    [
        pytest.param(None, id="none"),
        pytest.param("", id="empty"),
        pytest.param("550", id="basic-code-only"),
        pytest.param("5.1", id="two-parts"),
        pytest.param("5.1.1.1", id="four-parts"),
        pytest.param("6.1.1", id="bad-class"),
        pytest.param("5.1.1 ", id="trailing-blank"),
        pytest.param("x.y.z", id="letters"),
    ],
)
def test_a_bounce_without_a_usable_code_is_soft(dsn: str | None) -> None:
    # Never a suppression on a code nobody can read.
    assert classify("bounced", dsn) == SOFT
