"""The editable install: one distribution, four folders, one import name; the CLI from anywhere."""

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
    code = "import edgeprompt.export as e, edgeprompt.runtimes as r, edgeprompt.android_demo as a; print(e.__file__); print(r.__file__); print(a.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True).stdout.split()
    # the mapped folders' own files (edgeprompt/ links each of them for import-linter: the same files, resolved)
    got = [Path(x).resolve().parent for x in out]
    assert got == [(REPO / name).resolve() for name in ("export", "runtimes", "android_demo")], got


def _closure(dist: str, extras: frozenset[str] = frozenset(), seen: dict | None = None) -> dict[str, str]:
    """Every distribution ``dist[extras]`` pulls, resolved through the installed metadata (markers and
    extras evaluated): ``{name: who required it}``."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen = {} if seen is None else seen
    for line in metadata.distribution(dist).requires or []:
        req = Requirement(line)
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen[name] = dist
        _closure(name, frozenset(req.extras), seen)
    return seen


def test_runtime_extra_pulls_no_torch():
    """Resolved, not read: the runtime, llamacpp and serve extras' whole dependency tree (as installed here)."""
    pulled = _closure("edgeprompt", frozenset({"runtime", "llamacpp", "serve"}))
    assert {"onnxruntime", "tokenizers", "llama-cpp-python", "numpy", "starlette", "uvicorn", "jinja2"} <= set(pulled)  # the resolution works
    heavy = {n: by for n, by in pulled.items() if n in {"torch", "transformers", "peft", "onnx", "optimum", "triton"}}
    assert heavy == {}, f"the on-device install pulls {heavy} (name: required by)"
    train = _closure("edgeprompt", frozenset({"train"}))
    assert "torch" in train  # the check can fail: the train extra does pull torch
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "torch==2.13.0" in meta["optional-dependencies"]["train"]  # pinned: an unpinned torch is a CUDA download


def _leaf_commands(parser, prefix=()) -> list[list[str]]:
    """Every runnable command of the parser (walked, so a new subcommand is covered without listing it)."""
    import argparse

    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [list(prefix)]
    return [c for name, p in subs[0].choices.items() for c in _leaf_commands(p, (*prefix, name))]


def test_every_subcommand_has_help(capsys):
    from edgeprompt.cli import build_parser

    commands = _leaf_commands(build_parser())
    assert len(commands) >= 15 and ["profile"] in commands and ["demo"] in commands
    for argv in commands:
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args([*argv, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        # the subcommand's own help (not the top level's), saying what it does
        assert out.startswith(f"usage: edgeprompt {' '.join(argv)}"), (argv, out[:200])
        said = out.split("options:")[0].split("\n\n", 1)[-1].strip()
        assert len(said) > 15, (argv, out)


def test_readme_python_imports_resolve():
    """Every import in the README's Python examples names a module and a name that exist."""
    import re

    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    lines = [ln for b in blocks for ln in b.splitlines() if re.match(r"(from \S+ )?import ", ln)]
    assert len(lines) >= 6
    for ln in lines:
        exec(ln, {})
