"""The test tree's own layout: shared code lives in tests/support/ and tests/conftest.py."""

from __future__ import annotations

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


def _python_files() -> list[Path]:
    files = [*TESTS.rglob("*.py"), *(REPO / "bench").glob("*.py"), *(REPO / "lab").rglob("*.py")]
    return sorted(path for path in files if "__pycache__" not in path.parts)


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
