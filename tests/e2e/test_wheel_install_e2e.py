"""A production install: ``pip install .`` (no extras) into a fresh virtualenv.

The command must work and every module of the installed package must import, with nothing of
the test extra (pytest, hypothesis) and nothing from the repository on ``sys.path``. aiosmtpd is a
runtime dependency (the LMTP servers of ``ingest --serve`` and ``fanout``): it must be there.
Needs the package index (as the bootstrap does); a copy of the source tree is installed so no
build directory is left in the repository.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]

IMPORT_ALL = r"""
import importlib, importlib.util, pkgutil, sys
import smtpplus_milter
assert "site-packages" in smtpplus_milter.__file__, smtpplus_milter.__file__
for extra in ("pytest", "hypothesis", "lab", "tests"):
    assert importlib.util.find_spec(extra) is None, f"{extra} is importable in a production install"
assert importlib.util.find_spec("aiosmtpd") is not None, "aiosmtpd (a runtime dependency) is missing"
names = [m.name for m in pkgutil.walk_packages(smtpplus_milter.__path__, "smtpplus_milter.")]
for name in names:
    if not name.endswith("__main__"):
        importlib.import_module(name)
print(len(names))
"""


def test_pip_install_without_extras_gives_a_working_command(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"),
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    helped = subprocess.run(
        [str(venv / "bin" / "smtpplus-milter"), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert helped.returncode == 0, helped.stderr
    for command in ("run", "check-config", "postfix-config", "explain", "users", "verify", "setup", "ingest", "fanout"):
        assert command in helped.stdout
    imported = subprocess.run(
        [str(python), "-c", IMPORT_ALL], capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path
    )
    assert imported.returncode == 0, imported.stderr
    assert int(imported.stdout) > 30
