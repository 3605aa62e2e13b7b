"""deploy/prometheus: the rules and the dashboard only use metrics the milter exports, and promtool agrees."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from smtpplus_milter.observe.metrics import FollowerMetrics, Metrics, PolicyMetrics

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = PROMETHEUS / "smtpplus-rules.yml"
RULES_TEST = PROMETHEUS / "smtpplus-rules.test.yml"
DASHBOARD = PROMETHEUS / "smtpplus-dashboard.json"

# Series Prometheus makes itself, not the milter.
EXTERNAL = {"up"}

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring"}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<expr>.*),\s*)?(?P<label>\w+)\s*\)\s*$")


def exported_names() -> set[str]:
    """Every series name metrics.py exposes (the milter's, the follower's and the policy daemon's), suffixes included."""
    names: set[str] = set()
    policy = Metrics()
    PolicyMetrics(policy.registry)
    families = [*Metrics().registry.collect(), *FollowerMetrics().registry.collect(), *policy.registry.collect()]
    for family in families:
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        elif family.type == "summary":
            names.update({family.name, f"{family.name}_sum", f"{family.name}_count"})
        elif family.type == "info":
            names.add(f"{family.name}_info")
        else:
            names.add(family.name)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana label_values() query) selects."""
    match = _LABEL_VALUES.match(expr)
    if match:
        expr = match.group("expr") or ""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges, $__rate_interval included
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\$\w+", " ", text)
    found = set()
    for token in _NAME.finditer(text):
        rest = text[token.end() :].lstrip()
        if rest.startswith("(") or token.group().lower() in _KEYWORDS:
            continue  # a function or an operator keyword
        if re.fullmatch(r"\d+[smhdwy]", token.group()):
            continue
        found.add(token.group())
    return found


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def rule_expressions() -> list[str]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [value for key, value in _walk(dashboard["panels"]) if key == "expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        pytest.param('up{job="smtpplus"} == 0', {"up"}, id="selector"),
        pytest.param(
            'sum by (user, result) (rate(smtpplus_messages_total{user=~"$user"}[$__rate_interval]))',
            {"smtpplus_messages_total"},
            id="grouping-labels-are-not-metrics",
        ),
        pytest.param(
            "histogram_quantile(0.95, sum by (le) (rate(smtpplus_processing_seconds_bucket[5m])))",
            {"smtpplus_processing_seconds_bucket"},
            id="histogram",
        ),
        pytest.param("a / on(instance) group_left(version) b > 0.2 and c", {"a", "b", "c"}, id="matching"),
        pytest.param("label_values(smtpplus_build_info, instance)", {"smtpplus_build_info"}, id="grafana-variable"),
        pytest.param('rate(x{path="smtpplus_fake_total"}[1m])', {"x"}, id="strings-ignored"),
    ],
)
def test_metric_name_extraction(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_exported_names_have_their_suffixes() -> None:
    exported = exported_names()
    assert {"smtpplus_messages_total", "smtpplus_processing_seconds_bucket", "smtpplus_build_info"} <= exported
    # What a query must never use: the bare counter name, a histogram without suffix, *_created.
    assert not {"smtpplus_messages", "smtpplus_processing_seconds", "smtpplus_messages_created"} & exported


@pytest.mark.parametrize(
    "source", [pytest.param(rule_expressions, id="rules"), pytest.param(dashboard_expressions, id="dashboard")]
)
def test_every_metric_used_is_exported(source: Any) -> None:
    exported = exported_names() | EXTERNAL
    expressions = source()
    assert expressions
    for expr in expressions:
        used = metric_names(expr)
        assert used, f"no metric found in {expr!r}"
        assert used <= exported, (
            f"{sorted(used - exported)} in {expr!r} are not defined in smtpplus_milter/observe/metrics.py"
        )


def test_dashboard_covers_the_issue() -> None:
    used = set().union(*(metric_names(expr) for expr in dashboard_expressions()))
    assert {
        "smtpplus_messages_total",
        "smtpplus_unauthorized_total",
        "smtpplus_priority_total",
        "smtpplus_queue_total",
        "smtpplus_footer_total",
        "smtpplus_processing_seconds_bucket",
        "smtpplus_alerts_total",
    } <= used
    assert any("histogram_quantile" in expr for expr in dashboard_expressions())


def test_rules_cover_the_issue() -> None:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    names = {rule["alert"] for group in groups for rule in group["rules"]}
    assert names == {
        "SMTPPlusMilterDown",
        "SMTPPlusUnauthorizedSenders",
        "SMTPPlusDisplayNameSpoofingSeen",
        "SMTPPlusHighRejectRatio",
        "SMTPPlusConfigReloadFailed",
        "SMTPPlusAlertSinkFailing",
        "SMTPPlusBounceRateHigh",
        "SMTPPlusUserAtSendingLimit",
        "SMTPPlusLimitStoreUnavailable",
    }


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not installed: apt-get install --no-install-recommends prometheus")
    return found


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["check", "rules", RULES.name], id="check-rules"),
        pytest.param(["test", "rules", RULES_TEST.name], id="test-rules"),
        pytest.param(["check", "config", "prometheus.yml.example"], id="check-config"),
    ],
)
def test_promtool(args: list[str]) -> None:
    done = subprocess.run([_promtool(), *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
