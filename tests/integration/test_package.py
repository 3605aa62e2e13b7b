"""The installed package needs nothing from the test extra (the lab lives outside it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Runs in a child whose imports of the test extra fail, as in a production install.
CHILD = r"""
import importlib, importlib.abc, pkgutil, sys

class NoTestExtra(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        # aiosmtpd is a runtime dependency (ingest --serve, fanout), not part of the test extra.
        if name.split(".")[0] in {"pytest", "hypothesis", "lab", "tests"}:
            raise ImportError(f"{name} is not installed in production")
        return None

sys.meta_path.insert(0, NoTestExtra())
import smtpplus_milter
from smtpplus_milter import cli
names = [m.name for m in pkgutil.walk_packages(smtpplus_milter.__path__, "smtpplus_milter.")]
for name in names:
    if not name.endswith("__main__"):
        importlib.import_module(name)
assert "COMMAND" in cli.build_parser().format_help()
print(len(names))
"""


def test_every_module_imports_without_the_test_extra() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, cwd="/", timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) > 25


def test_the_lab_is_not_in_the_package() -> None:
    assert not (REPO / "smtpplus_milter" / "lab").exists()
    assert (REPO / "lab" / "harness.py").exists()
