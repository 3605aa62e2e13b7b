"""The command modules stay independent: a cli module imports no other cli module but ``cli.common``
(``cli/__init__`` assembles the parser), and nothing in ``admin/`` imports from ``cli/``.

An import between two command modules is how the users/verify import cycle started.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "smtpplus_milter"


def imported(path: Path) -> set[str]:
    """Every module *path* imports, as dotted names (``from a import b`` counts as ``a`` and ``a.b``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


CLI_MODULES = sorted(path for path in (PACKAGE / "cli").glob("*.py") if path.name != "__init__.py")
ADMIN_MODULES = sorted((PACKAGE / "admin").glob("*.py"))


@pytest.mark.parametrize("path", CLI_MODULES, ids=lambda path: path.stem)
def test_a_command_module_imports_no_other_command_module(path: Path) -> None:
    others = {f"smtpplus_milter.cli.{p.stem}" for p in CLI_MODULES if p.stem not in ("common", path.stem)}
    assert not imported(path) & others


@pytest.mark.parametrize("path", ADMIN_MODULES, ids=lambda path: path.stem)
def test_no_use_case_imports_the_command_line(path: Path) -> None:
    assert not {name for name in imported(path) if name.split(".")[:2] == ["smtpplus_milter", "cli"]}


def test_the_check_sees_an_import_between_command_modules(tmp_path: Path) -> None:
    module = tmp_path / "users.py"
    module.write_text("from smtpplus_milter.cli import verify\nfrom smtpplus_milter.cli.common import err\n")
    assert "smtpplus_milter.cli.verify" in imported(module)
