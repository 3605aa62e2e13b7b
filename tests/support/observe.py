"""Reading what the milter reports: Prometheus samples from a runtime's registry and captured log events."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from smtpplus_milter.services.runtime import Runtime


def metric_value(runtime: Runtime, name: str, **labels: str) -> float:
    """The current value of one sample in *runtime*'s registry (0 when it has not been created yet)."""
    return runtime.metrics.registry.get_sample_value(name, labels) or 0.0


def events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    """The captured log entries whose event is *name*, in order."""
    return [entry for entry in logs if entry["event"] == name]
