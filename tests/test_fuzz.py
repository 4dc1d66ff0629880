"""The quick run of the fuzzing harness (``benchmarks/reliability/fuzz.py``; the full run takes 100,000 cases):
every parser and the HTTP layer answer hostile input with a typed error, never a traceback, a hang or a write."""

from __future__ import annotations

import sys

from .conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks" / "reliability"))

import fuzz  # noqa: E402

CASES = 1100  # ~100 per target: a minute on 2 cores


def test_fuzz_quick(bundle_of, capsys):
    out = fuzz.run(bundle_of("onnx", "fp32"), cases=CASES, seed_=1, log=lambda s: None)
    total = out["total"]
    with capsys.disabled():
        print(f"\nfuzz: {total['cases']} cases, {total['expected_errors']} typed errors, {total['unexpected']} unexpected, {total['hangs']} hangs")
    bad = {name: r["examples"] for name, r in out["targets"].items() if r["unexpected"] or r["hangs"]}
    assert bad == {} and total["writes_outside"] == 0, (bad, out["written"])
    assert total["cases"] >= CASES * 0.9  # hypothesis ran them all (it may stop early only on a tiny space)
    assert total["expected_errors"] > total["cases"] / 4  # the cases are hostile: most are refused
    assert all(r["cases"] > r["expected_errors"] for n, r in out["targets"].items() if n not in ("safetensors",))  # and some pass
