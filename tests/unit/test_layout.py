"""The test tree's own layout: shared code lives in tests/support/ and tests/conftest.py, and
tests that start processes, servers or sockets are under tests/integration/ (or e2e, hostile)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"

# `tests.x.test_y`, imported as a module or from its package; bench/callback_cpu.py imports in
# the source text of its child process, so the text is searched, not only the syntax tree.
_TEST_MODULE_IMPORT = re.compile(
    r"^\s*(?:from\s+tests(?:\.\w+)*\.test_\w+\s+import|import\s+tests(?:\.\w+)*\.test_\w+"
    r"|from\s+tests(?:\.\w+)*\s+import\s+(?:\(\s*)?(?:[\w ,]*,\s*)?test_\w+)",
    re.MULTILINE,
)


# What starts a process, a server or a socket from a test.
_OUTSIDE_THE_PROCESS = {
    "subprocess",
    "socket",
    "socketserver",
    "http.server",
    "aiosmtpd",
    "lab",
    "tests.support.webhook",
}


def _python_files() -> list[Path]:
    files = [*TESTS.rglob("*.py"), *(REPO / "bench").glob("*.py"), *(REPO / "lab").rglob("*.py")]
    return sorted(path for path in files if "__pycache__" not in path.parts)


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize(
    ("text", "found"),
    [
        pytest.param("from tests.milter.test_milter import Session\n", True, id="from-test-module"),
        pytest.param("import tests.unit.test_footer\n", True, id="import-test-module"),
        pytest.param("from tests.unit import test_footer\n", True, id="from-package-import-module"),
        pytest.param("    from tests.unit import helpers, test_footer\n", True, id="indented-second-name"),
        pytest.param("from tests.support.milterctx import Session\n", False, id="support"),
        pytest.param("from tests.support.builders import config_with\n", False, id="builders"),
        pytest.param("# tests/milter/test_milter.py drives the adapter\n", False, id="a-path-in-a-comment"),
    ],
)
def test_the_import_pattern(text: str, found: bool) -> None:
    assert bool(_TEST_MODULE_IMPORT.search(text)) is found


def test_no_module_imports_a_test_module() -> None:
    offenders = [
        f"{path.relative_to(REPO)}: {match.group(0).strip()}"
        for path in _python_files()
        for match in _TEST_MODULE_IMPORT.finditer(path.read_text(encoding="utf-8"))
    ]
    assert offenders == [], "import shared test code from tests/support/ (fixtures: tests/conftest.py)"


def test_unit_tests_stay_in_the_process() -> None:
    offenders = {
        path.name: sorted(
            name
            for name in _imported_modules(path)
            if name.split(".")[0] in _OUTSIDE_THE_PROCESS or name in _OUTSIDE_THE_PROCESS
        )
        for path in sorted((TESTS / "unit").glob("test_*.py"))
    }
    assert {name: found for name, found in offenders.items() if found} == {}, "move these to tests/integration/"


def test_test_module_basenames_are_unique() -> None:
    # pytest imports test modules by basename (rootdir import mode, no __init__.py in the test
    # directories): a second tests/*/test_x.py stops the whole collection.
    seen: dict[str, Path] = {}
    twice = []
    for path in sorted(TESTS.rglob("test_*.py")):
        if path.name in seen:
            twice.append(f"{seen[path.name].relative_to(TESTS)} and {path.relative_to(TESTS)}")
        seen.setdefault(path.name, path)
    assert not twice, "rename one of: " + "; ".join(twice)
