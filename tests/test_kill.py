"""A quick run of the kill -9 trials (benchmarks/reliability/kill.py; issue 10): a few SIGKILLs per write,
each landing at a random moment of it; afterwards the old state or the new one opens, never a torn one.

The full run: ``python benchmarks/reliability/kill.py --trials 50``.
"""

from __future__ import annotations

import shutil
import sys

import pytest

from edgeprompt.core.bank import PromptBank
from edgeprompt.core.errors import EdgePromptError

from .conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks" / "reliability"))
import kill  # noqa: E402


def _check(results: dict) -> None:
    for name, r in results.items():
        assert r["errors"] == 0, (name, r["examples"])
        assert r["torn"] == 0, (name, r["examples"])
        assert r["outcomes"]["old"] + r["outcomes"]["new"] == r["trials"], (name, r)
    # the trials prove something only if some kills cut a write (leftovers were found beside its target)
    assert sum(r["kills_in_window"] for r in results.values()) >= 1, results


def test_kill_during_bank_writes_and_checkpoints(tmp_path):
    _check(kill.run(trials=5, ops=("bank_add", "bank_remove", "import_peft", "checkpoint"), seed=1, workdir=tmp_path, log=lambda s: None))


def test_kill_during_export(tmp_path):
    _check(kill.run(trials=4, ops=("export",), seed=2, workdir=tmp_path, log=lambda s: None))


def test_the_checker_tells_old_new_and_torn_apart(tmp_path):
    """The harness would pass a torn state it cannot see: a task mixing two versions, or unreadable, is torn."""
    op = kill.BankAdd(tmp_path / "op", kill.Context(tmp_path, log=lambda s: None))
    op.work.mkdir()
    op.prepare()
    new = tmp_path / "new"
    op.fresh(new)
    bank = PromptBank(new / "bank")
    bank.add(kill.TASK, "prefix_tuning", op.v2, kill._spec(), bank.base_model(), extra={"kill_version": 2}, overwrite=True)
    op.learn_new(new)
    assert op.classify(new) == ("new", "")
    mixed = tmp_path / "mixed"
    op.fresh(mixed)
    assert op.classify(mixed) == ("old", "")
    shutil.copy(op.target(new) / "manifest.json", op.target(mixed) / "manifest.json")  # v2's manifest over v1's tensors
    outcome, detail = op.classify(mixed)
    assert outcome == "torn" and "v2" in detail and "v1" in detail, detail
    cut = tmp_path / "cut"
    op.fresh(cut)
    f = op.target(cut) / "prefix.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(EdgePromptError):  # run() counts a state that does not open as torn
        op.classify(cut)
