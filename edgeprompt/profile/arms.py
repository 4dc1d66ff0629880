"""The profiler's arms: one way each of starting a request, measured the same way.

An arm turns a task into the state a request starts from (its *prefix work*), then the request
restores that state into a sequence, prefills the user's text and decodes greedily. Every arm runs
through the runtime's own :class:`~edgeprompt.runtimes.backend.Backend` (the stock-llama.cpp arm
through ``llama_cpp.Llama``), so what is timed is what a device runs.

==================  ==========================================================================
arm                 prefix work
==================  ==========================================================================
plain               none: the text alone
hard_prompt         the task's instruction as text, prefilled before the user's text
prompt_cold         prompt tuning: the P rows prefilled through the model (a cold swap)
prompt_disk         prompt tuning: the computed prefix read back from a file (``prefix_dir``)
prompt_warm         prompt tuning: the cached prefix (a warm swap: a restore only)
virtual_tokens      prompt tuning on stock ``llama_cpp.Llama``: the P virtual-token ids prefilled
shipped_kv          prompt tuning: the KV shipped in the bundle (``--with-kv``), read
prefix_cold         prefix tuning: the task's KV read from the bank into the backend
prefix_warm         prefix tuning: the cached prefix
==================  ==========================================================================
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from edgeprompt.core.methods import PrefixKind
from edgeprompt.profile.stats import summarize


@dataclass(frozen=True)
class Arm:
    name: str
    title: str  # for people: the report's arms table
    kind: PrefixKind | None  # the method kind it needs (None: no task method)


ARMS: dict[str, Arm] = {
    a.name: a
    for a in (
        Arm("plain", "plain model", None),
        Arm("hard_prompt", "hard prompt (instruction as text)", None),
        Arm("prompt_cold", "prompt tuning, cold (prefill of P rows)", PrefixKind.EMBEDDINGS),
        Arm("prompt_disk", "prompt tuning, cold from a prefix file", PrefixKind.EMBEDDINGS),
        Arm("prompt_warm", "prompt tuning, warm (cached)", PrefixKind.EMBEDDINGS),
        Arm("virtual_tokens", "prompt tuning as virtual tokens, stock llama.cpp", PrefixKind.EMBEDDINGS),
        Arm("shipped_kv", "prompt tuning, shipped KV (--with-kv)", PrefixKind.EMBEDDINGS),
        Arm("prefix_cold", "prefix tuning, cold (KV read into the backend)", PrefixKind.KV),
        Arm("prefix_warm", "prefix tuning, warm (cached)", PrefixKind.KV),
    )
}


@dataclass
class Request:
    """One request's timings, seconds: its prefix work, the restore, the text prefill, each token."""

    prefix_s: float
    restore_s: float
    prefill_s: float
    tokens_s: list[float]

    @property
    def ttft_s(self) -> float:
        return self.prefix_s + self.restore_s + self.prefill_s


def run_request(backend, prefix, text_ids: list[int], decode: int, vocab: int, prefix_s: float = 0.0, pre_ids: list[int] | None = None) -> Request:
    """Restore ``prefix`` (None: empty), optionally prefill ``pre_ids`` (a hard prompt, counted as prefix
    work), prefill the text, then decode ``decode`` tokens greedily, timing each."""
    t0 = time.perf_counter()
    with backend.sequence(prefix) as seq:
        t1 = t2 = time.perf_counter()
        if pre_ids:
            seq.feed_ids(pre_ids)
            t2 = time.perf_counter()
        logits = seq.feed_ids(text_ids)
        t3 = time.perf_counter()
        toks = []
        for _ in range(decode):
            tok = int(np.argmax(logits[:vocab]))
            t = time.perf_counter()
            logits = seq.feed_ids([tok])
            toks.append(time.perf_counter() - t)
    return Request(prefix_s + (t2 - t1), t1 - t0, t3 - t2, toks)


class StockLlama:
    """Stock ``llama_cpp.Llama`` on the bundle's GGUF: the virtual-tokens arm, nothing of ours in the loop."""

    def __init__(self, model_file, n_ctx: int, threads: int, mask: list[int]):
        import llama_cpp

        self._lc = llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(model_file), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, logits_all=False, verbose=False)
        self.mask = np.asarray(mask, dtype=np.int64)

    def _logits(self) -> np.ndarray:
        out = np.ctypeslib.as_array(self._lc.llama_get_logits_ith(self.llm.ctx, -1), shape=(self.llm.n_vocab(),)).copy()
        out[self.mask] = -np.inf  # the manifest's logit mask: virtual tokens are never sampled
        return out

    def request(self, vt_ids: list[int], text_ids: list[int], decode: int) -> Request:
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(list(vt_ids))
        t1 = time.perf_counter()
        self.llm.eval(list(text_ids))
        logits = self._logits()
        t2 = time.perf_counter()
        toks = []
        for _ in range(decode):
            tok = int(np.argmax(logits))
            t = time.perf_counter()
            self.llm.eval([tok])
            logits = self._logits()
            toks.append(time.perf_counter() - t)
        return Request(t1 - t0, 0.0, t2 - t1, toks)

    def close(self) -> None:
        self.llm.close()


def summarize_requests(reqs: list[Request], warmup: int) -> dict:
    """Medians with spread of each part; decode tokens/s from the median token time; every token kept."""
    toks = [t for r in reqs for t in r.tokens_s]
    tok = summarize(toks, keep=True)
    return {
        "reps": len(reqs),
        "warmup": warmup,
        "prefix_s": summarize([r.prefix_s for r in reqs], warmup),
        "restore_s": summarize([r.restore_s for r in reqs], warmup),
        "prefill_s": summarize([r.prefill_s for r in reqs], warmup),
        "ttft_s": summarize([r.ttft_s for r in reqs], warmup),
        "token_s": tok,
        "decode_tok_s": (1.0 / tok["median"]) if tok.get("median") else None,  # from the median token time
        "decode_tok_s_mean": (len(toks) / sum(toks)) if toks else None,  # tokens over their total time
    }


def measure(one: Callable[[], Request], reps: int, warmup: int) -> dict:
    reqs = []
    for i in range(warmup + reps):
        r = one()
        if i >= warmup:
            reqs.append(r)
    return summarize_requests(reqs, warmup)
