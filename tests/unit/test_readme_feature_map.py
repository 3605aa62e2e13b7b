"""README's feature map: every SMTP+ feature an operator looks for has a row, and every command,
config key, file and section a row names exists."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from smtpplus_milter.cli import build_parser
from smtpplus_milter.config.schema import ListSection, Settings, UserEntry

REPO = Path(__file__).resolve().parents[2]


def _rows() -> dict[str, list[str]]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Feature map\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 4 and cells[0] not in ("Feature", "---"):
            rows[cells[0]] = cells[1:]
    return rows


def _commands() -> frozenset[str]:
    [commands] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return frozenset(commands.choices)


def _key_exists(model: type[BaseModel], path: list[str]) -> bool:
    name, rest = path[0], path[1:]
    fields = {(info.alias or field): info for field, info in model.model_fields.items()}
    if name not in fields:
        return False
    if not rest:
        return True
    inner = [arg for arg in getattr(fields[name].annotation, "__args__", ()) if isinstance(arg, type)]
    annotation = fields[name].annotation
    candidates = [annotation, *inner] if isinstance(annotation, type) else inner
    return any(issubclass(c, BaseModel) and _key_exists(c, rest) for c in candidates)


def _config_exists(key: str) -> bool:
    if key.startswith("users.yaml: "):
        return _key_exists(UserEntry, key.removeprefix("users.yaml: ").split("."))
    if key.startswith("lists.NAME."):
        return _key_exists(ListSection, key.removeprefix("lists.NAME.").split("."))
    return _key_exists(Settings, key.split("."))


@pytest.mark.parametrize(
    ("feature", "where"),
    [
        pytest.param("Sender authorization", "users", id="authorization"),
        pytest.param("Sender verification", "docs/verification.md", id="verification"),
        pytest.param("Priority (and preemption)", "priority.preempt", id="priority"),
        pytest.param("Header/footer", "docs/footer.md", id="footer"),
        pytest.param("Statistics", "smtpplus-milter stats", id="statistics"),
        pytest.param("Delivery tracking", "docs/tracking.md", id="tracking"),
        pytest.param("Recipients database", "smtpplus-milter recipients", id="recipients"),
        pytest.param("Bounces and notifications", "docs/bounces.md", id="bounces"),
        pytest.param("Unsubscribe (one-click)", "docs/unsubscribe.md", id="unsubscribe"),
        pytest.param("Feedback loops (complaints)", "notify.complaints", id="complaints"),
        pytest.param("BCC copies with their own To:", "lists.NAME.bcc_in_to", id="bcc"),
        pytest.param("Attachments up to 20 MB", "limits.max_message_bytes", id="attachments"),
        pytest.param("Ports 25, 587, 1025-5000 (STARTTLS on all)", "smtpplus-ports.nft", id="ports"),
        pytest.param("Sending limits", "docs/limits.md", id="limits"),
        pytest.param("Doctor", "smtpplus-milter doctor", id="doctor"),
    ],
)
def test_every_feature_has_a_row_that_says_where_it_lives(feature: str, where: str) -> None:
    rows = _rows()
    assert feature in rows, f"no row for {feature!r} in README's feature map"
    assert where in " ".join(rows[feature])


def test_the_size_the_map_promises_is_the_default() -> None:
    assert Settings().limits.max_message_bytes == 20 * 1024 * 1024


def test_every_command_in_the_map_exists() -> None:
    named = {c for cells in _rows().values() for c in re.findall(r"`smtpplus-milter ([a-z-]+)", cells[0])}
    assert {"users", "stats", "fanout", "policyd"} <= named  # the pattern reads the column
    assert named - _commands() == set()


def test_every_config_key_in_the_map_exists() -> None:
    keys = {k for cells in _rows().values() for k in re.findall(r"`([^`]+)`", cells[1])}
    assert {"limits.max_message_bytes", "lists.NAME.bcc_in_to", "users.yaml: authorized_domains"} <= keys
    assert sorted(k for k in keys if not _config_exists(k)) == []


@pytest.mark.parametrize(
    ("key", "exists"),
    [
        pytest.param("notify.complaints", True, id="nested"),
        pytest.param("priority.preempt", True, id="optional-section"),
        pytest.param("notify.complaint", False, id="misspelt"),
        pytest.param("lists.NAME.bcc_in_cc", False, id="list-misspelt"),
        pytest.param("users.yaml: authorised_domains", False, id="user-misspelt"),
    ],
)
def test_the_key_check_can_say_no(key: str, exists: bool) -> None:
    assert _config_exists(key) is exists


def test_every_file_and_section_in_the_map_exists() -> None:
    docs = " ".join(cells[2] for cells in _rows().values())
    paths = set(re.findall(r"(?:docs|deploy|systemd)/[\w./-]+|README\.md", docs))
    assert {"docs/fanout.md", "deploy/nftables/smtpplus-ports.nft", "README.md"} <= paths
    assert sorted(p for p in paths if not (REPO / p).exists()) == []
    for path, title in re.findall(r"([\w./-]+\.md) \"([^\"]+)\"", docs):
        assert f"\n## {title}\n" in (REPO / path).read_text(encoding="utf-8"), f"{path} has no section {title!r}"
