"""Fixtures shared by every test directory. Shared helpers that are not fixtures live in tests/support/."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
from structlog.testing import capture_logs


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """The structlog events emitted while the test runs (event name, level and fields, unrendered)."""
    with capture_logs() as captured:
        yield captured
