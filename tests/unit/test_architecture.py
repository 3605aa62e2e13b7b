"""The package's shape, as docs/design.md draws it: arrows point inward, no cycles, no module state.

Read from the source (every import, also those inside functions), so a new module is checked the
moment it exists.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

import smtpplus_milter

PACKAGE = Path(smtpplus_milter.__file__).parent
REPO = PACKAGE.parent

# Rooms and their depth: a module may import its own room and rooms of lower depth only.
# (mime is the innermost: the core's session asks it to add a banner, never the other way.)
DEPTH = {
    "mime": 0,
    "core": 1,
    "config": 2,
    "infra": 3,
    "observe": 4,
    "admin": 4,
    "daemon": 4,
    "services": 5,
    "cli": 6,
    "__main__": 7,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(name: str) -> Iterator[str]:
    """The package modules *name* imports, wherever in the module the import is."""
    for node in ast.walk(ast.parse(MODULES[name].read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("smtpplus_milter"):
            for target in (node.module, *(f"{node.module}.{alias.name}" for alias in node.names)):
                if target in MODULES and target != name:
                    yield target
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name in MODULES and alias.name != name)


def _room(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None  # the package itself (its version) is everyone's


GRAPH = {name: set(_imports(name)) for name in MODULES}


def test_every_module_is_in_a_room() -> None:
    assert {_room(name) for name in MODULES} - {None} <= set(DEPTH)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_arrows_point_inward(name: str) -> None:
    room = _room(name)
    if room is None:
        return
    wrong = sorted(
        target
        for target in GRAPH[name]
        if (other := _room(target)) is not None and other != room and DEPTH[other] >= DEPTH[room]
    )
    assert not wrong, f"{name} ({room}) must not import {wrong}: see docs/design.md"


def test_no_import_cycle() -> None:
    # Tarjan's strongly connected components over the import graph.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            # A package's __init__ importing its own submodules is how re-exports work.
            if target.startswith(node + "."):
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    assert not cycles


def test_no_mutable_state_at_module_level() -> None:
    found = []
    names = [m.name for m in pkgutil.walk_packages(smtpplus_milter.__path__, "smtpplus_milter.")]
    for name in names:
        if name.endswith("__main__"):
            continue
        module = importlib.import_module(name)
        for attribute, value in vars(module).items():
            if attribute.startswith("__") or isinstance(value, types.ModuleType):
                continue
            if isinstance(value, list | dict | set | bytearray):
                found.append(f"{name}.{attribute}")
    assert not found, f"module-level mutable containers (use a tuple, frozenset or MappingProxyType): {found}"


def test_no_reference_to_documents_outside_the_repository() -> None:
    # The contract, field notes and style guide the team works from are not in this repository:
    # the rules the code relies on are stated in docs/ instead. (Spelled in pieces so this file
    # does not name them itself.)
    outside = tuple(
        re.compile(pattern)
        for pattern in ("PRODUCT" + r"(\.md)? ?§", "PRODUCT" + r"\.md", "FIELD" + "-NOTES", "STYLE" + r"\.md")
    )
    checked = [*REPO.glob("*.md"), *(REPO / "docs").rglob("*.md"), *PACKAGE.rglob("*.py")]
    checked += [*(REPO / "deploy").rglob("*"), *(REPO / "lab").rglob("*.py"), *(REPO / "bench").rglob("*.py")]
    hits = [
        str(path.relative_to(REPO))
        for path in checked
        if path.is_file() and any(word.search(path.read_text(encoding="utf-8", errors="replace")) for word in outside)
    ]
    assert not hits
