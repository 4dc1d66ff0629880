"""The editable install: one distribution, three folders, one import name; the CLI from anywhere."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO


@pytest.mark.parametrize("where", ["root", "elsewhere"])
def test_cli_and_subpackages_from_root_and_elsewhere(where, tmp_path):
    cwd = REPO if where == "root" else tmp_path
    r = subprocess.run([sys.executable, "-m", "edgeprompt", "--help"], cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0 and "train" in r.stdout and "bank" in r.stdout, r.stderr
    exe = Path(sys.executable).parent / "edgeprompt"
    entry = str(exe) if exe.exists() else shutil.which("edgeprompt")
    assert entry, "the edgeprompt entry point is not installed"
    r = subprocess.run([entry, "train", "--help"], cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0 and "--resume" in r.stdout
    code = "import edgeprompt.export as e, edgeprompt.runtimes as r; print(e.__file__); print(r.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True).stdout.split()
    assert Path(out[0]).parent == REPO / "export" and Path(out[1]).parent == REPO / "runtimes"


def test_runtime_extra_pulls_no_torch():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = meta["optional-dependencies"]["runtime"] + meta["dependencies"]
    heavy = [d for d in runtime if d.split("=")[0].split(">")[0].split("<")[0].strip().lower() in {"torch", "transformers", "peft"}]
    assert heavy == []
    assert "torch==2.13.0" in meta["optional-dependencies"]["train"]  # pinned: an unpinned torch is a CUDA download


def test_every_subcommand_has_help():
    from edgeprompt.cli import build_parser

    for argv in (
        ["train"],
        ["eval"],
        ["bank", "list"],
        ["bank", "show"],
        ["bank", "remove"],
        ["bank", "import-peft"],
        ["bank", "export-peft"],
        ["models", "list"],
        ["models", "convert"],
        ["export"],
        ["run"],
        ["serve"],
        ["verify"],
    ):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args([*argv, "--help"])
        assert e.value.code == 0
