"""Summaries of repeated measurements: every figure a median with its spread, warm-ups excluded.

>>> s = summarize([0.003, 0.001, 0.002], warmup=1)
>>> s["median"], s["n"], s["warmup"]
(0.002, 3, 1)
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np


def summarize(xs, warmup: int = 0, keep: bool = False) -> dict:
    """``{median, p10, p90, p50, p99, min, max, n, warmup}`` of ``xs`` (seconds or any unit);
    ``keep=True`` also keeps every value (``values``), e.g. each decoded token's time."""
    a = np.asarray(list(xs), dtype=np.float64)
    if a.size == 0:
        return {"median": None, "n": 0, "warmup": warmup}
    q = np.percentile(a, [10, 50, 90, 99])
    out = {
        "median": float(q[1]),
        "p10": float(q[0]),
        "p90": float(q[2]),
        "p99": float(q[3]),
        "min": float(a.min()),
        "max": float(a.max()),
        "n": int(a.size),
        "warmup": int(warmup),
    }
    if keep:
        out["values"] = [float(x) for x in a]
    return out


def repeat(fn: Callable[[], float | None], reps: int, warmup: int = 1) -> dict:
    """Run ``fn`` ``warmup + reps`` times; each call returns its own figure, or None to be timed whole."""
    vals = []
    for i in range(warmup + reps):
        t = time.perf_counter()
        v = fn()
        v = time.perf_counter() - t if v is None else v
        if i >= warmup:
            vals.append(v)
    return summarize(vals, warmup)


def med(s: dict | None) -> float | None:
    """The median of a summary (None when absent)."""
    return None if not s else s.get("median")
