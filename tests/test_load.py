"""The quick run of the load harness (``benchmarks/reliability/load.py``; the full run adds a 10-minute soak):
32 clients at once on each backend get exactly the answers each request gets alone, none is reset, and past the
queue the server answers 503 instead of dropping connections."""

from __future__ import annotations

import sys

import pytest

from .conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks" / "reliability"))

import load  # noqa: E402
from common import Served  # noqa: E402


@pytest.mark.parametrize("fmt,quant", [("onnx", "fp32"), ("gguf", "f32")], ids=["onnx", "llamacpp"])
def test_load_quick(bundle_of, fmt, quant, capsys):
    b = bundle_of(fmt, quant)
    with Served(b, "--queue", "64") as s:
        r = load.burst(s.port, clients=32, rounds=1)
        soak = load.soak(s, clients=4, seconds=6, sample_s=1)
    with capsys.disabled():
        print(f"\n{fmt}: {r}\nsoak: {soak['requests']} requests, p50 {soak['p50_ms']} ms, p99 {soak['p99_ms']} ms")
    assert r["requests"] == 32 * len(load.REQUESTS) and r["wrong"] == r["reset"] == r["other"] == r["503"] == 0, r
    assert soak["errors"] == 0 and soak["requests"] > 0, soak
    with Served(b, "--queue", "4") as s:
        r = load.burst(s.port, clients=32, rounds=1, seed=1)
    assert r["503"] > 0 and r["wrong"] == r["reset"] == r["other"] == 0 and r["ok"] > 0, r
