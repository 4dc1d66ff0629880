"""The layers of docs/ARCHITECTURE.md, checked by import-linter's contracts in pyproject.toml.

import-linter walks a package's folder; ours maps four folders under one import name (setuptools
package-dir), so ``edgeprompt/`` holds a symlink to each of the other three (``export``, ``runtimes``,
``android_demo``) and a bare ``lint-imports`` in the checkout sees the tree as the import names lay it out.
A planted violation is written in a copy of that layout, never in the checkout.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
MAPPED = ("export", "runtimes", "android_demo")  # package-dir folders, linked into edgeprompt/


def _mirror(dest: Path) -> Path:
    skip = shutil.ignore_patterns("__pycache__", "node_modules", "web", "tests")
    shutil.copytree(ROOT / "edgeprompt", dest / "edgeprompt", symlinks=True, ignore=skip)  # the links stay links
    for name in MAPPED:
        shutil.copytree(ROOT / name, dest / name, ignore=skip)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def _lint(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=tree, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)


@pytest.mark.skipif(not LINT.exists(), reason="import-linter is in the dev extra")
def test_import_contracts_hold():
    for name in MAPPED:  # what lets a bare lint-imports see edgeprompt.export, .runtimes and .android_demo
        link = ROOT / "edgeprompt" / name
        assert link.is_symlink() and link.resolve() == (ROOT / name).resolve(), link
    out = _lint(ROOT)  # the checkout itself, as a developer runs it
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


@pytest.mark.skipif(not LINT.exists(), reason="import-linter is in the dev extra")
@pytest.mark.parametrize(
    "where, line",
    [("edgeprompt/core/_planted.py", "import torch"), ("edgeprompt/runtimes/_planted.py", "from edgeprompt.train import models")],
)
def test_a_planted_violation_breaks_a_contract(tmp_path, where, line):
    tree = _mirror(tmp_path)
    (tree / where).write_text(line + "\n")
    out = _lint(tree)
    assert out.returncode != 0 and "BROKEN" in out.stdout
