"""The layers of docs/ARCHITECTURE.md, checked by import-linter's contracts in pyproject.toml.

import-linter walks a package's folder; ours maps four folders under one import name (setuptools
package-dir), so the check runs on a mirror laid out as the import names are.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _mirror(dest: Path) -> Path:
    shutil.copytree(ROOT / "edgeprompt", dest / "edgeprompt", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "export", dest / "edgeprompt" / "export", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "runtimes", dest / "edgeprompt" / "runtimes", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "android_demo", dest / "edgeprompt" / "android_demo", ignore=shutil.ignore_patterns("__pycache__", "node_modules", "web", "tests"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def _lint(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=tree, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)


@pytest.mark.skipif(not LINT.exists(), reason="import-linter is in the dev extra")
def test_import_contracts_hold(tmp_path):
    out = _lint(_mirror(tmp_path))
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
