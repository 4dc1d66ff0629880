"""Sampling and stop strings for generation (numpy; the same on every backend)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def partial_stop(text: str, stop: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is the start of a stop string (held back)."""
    best = 0
    for x in stop:
        for k in range(min(len(x) - 1, len(text)), best, -1):
            if text.endswith(x[:k]):
                best = k
                break
    return best


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def sample(logits: np.ndarray, temperature: float, top_k: int, top_p: float, rng) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    x = logits.astype(np.float64) / temperature
    if top_k and top_k < x.shape[0]:
        kth = np.partition(x, -top_k)[-top_k]
        x = np.where(x < kth, -np.inf, x)
    p = np.exp(x - x.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p)
        cum = np.cumsum(p[order])
        cut = order[cum - p[order] > top_p]
        p[cut] = 0.0
        p /= p.sum()
    return int(rng.choice(p.shape[0], p=p))
