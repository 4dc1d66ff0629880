"""One bundle, profiled in this process: open, the arms, and the sweeps over P, text length and threads.

Memory is measured in child processes (:mod:`edgeprompt.profile.children`): an RSS figure of this process
would carry every earlier stage. Synthetic tasks (random tensors of the method's shape, for timing only)
are written to a scratch bank and added to the running runtime through ``add_task``, the path a user's
task takes; the report labels them ``synthetic``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from edgeprompt.core.bank import PromptBank
from edgeprompt.core.constants import ModelKeys, TaskFormKeys, TaskRecordKeys
from edgeprompt.core.methods import PrefixKind, all_methods, get_method
from edgeprompt.core.tasks import TaskSpec
from edgeprompt.profile.arms import ARMS, StockLlama, measure, run_request
from edgeprompt.profile.stats import repeat, summarize

#: The user's text: a tweet-like sentence, repeated and cut to each length in tokens.
USER_TEXT = (
    "Just got back from the beach and the sunset was amazing, can't wait to go again this weekend with everyone! "
    "The traffic on the way home was terrible though, two hours for twenty miles. "
)
SYNTHETIC_INSTRUCTION = "Classify the sentiment of the tweet as negative, neutral or positive.\n"
SYNTHETIC_SPEC = TaskSpec(template="Tweet: {text}\nSentiment:", instruction=SYNTHETIC_INSTRUCTION, labels=["negative", "neutral", "positive"])


def text_ids(rt, n: int) -> list[int]:
    ids = rt.encode(USER_TEXT)
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


def method_for(kind: PrefixKind) -> str:
    """The registered method of a prefix kind (the built-in one first)."""
    names = [m for m in all_methods() if get_method(m).prefix_kind == kind]
    for builtin in ("prompt_tuning", "prefix_tuning"):
        if builtin in names:
            return builtin
    return names[0]


def synthetic_tasks(rt, scratch: Path, Ps: list[int], seed: int = 0) -> dict[tuple[str, int], str]:
    """A scratch bank holding a task per (method kind, P), added to ``rt``: ``{(kind, P): task name}``."""
    info = rt.bundle.base_model
    bank = PromptBank(scratch / "synthetic-bank")
    rng = np.random.default_rng(seed)
    out = {}
    for kind in (PrefixKind.EMBEDDINGS, PrefixKind.KV):
        m = get_method(method_for(kind))
        for P in Ps:
            shape = [P if s is None else s for s in m.folded_shape(info)]
            name = f"synthetic-{m.name}-P{P}"
            if name not in bank.names():
                bank.add(name, m, {m.tensor_key: (0.02 * rng.standard_normal(shape)).astype(np.float32)}, SYNTHETIC_SPEC, info)
            rt.add_task(bank.task(name))
            out[(kind.value, P)] = name
    return out


def task_bytes(rt, name: str) -> dict:
    """Bytes of a task: on disk (its files in the bundle or bank) and resident (its prefix in the cache)."""
    e = rt.store.get(name)
    disk = len(e.read_tensors())
    rec = rt.bundle.tasks.get(name, {})
    forms = {k: v.get(TaskFormKeys.BYTES) for k, v in rec.get(TaskRecordKeys.FORMS, {}).items()}
    return {"tensors_file": disk, "forms": forms, "prefix_resident": rt.prefix(name).nbytes}


class BundleProfiler:
    """Profiles one opened runtime. ``log`` gets one line per step."""

    def __init__(self, rt, cfg, scratch: Path, log: Callable[[str], None]):
        self.rt, self.cfg, self.scratch, self.log = rt, cfg, scratch, log
        self.vocab = rt.vocab_size
        self.be = rt.backend

    # -- arms ---------------------------------------------------------------------------------------
    def arm(self, arm: str, task: str | None, ids: list[int], decode: int, reps: int | None = None) -> dict | None:
        """One arm on one task: ``reps`` requests after the warm-up(s), medians with spread."""
        cfg, rt, be, V = self.cfg, self.rt, self.be, self.vocab
        reps = cfg.reps if reps is None else reps
        e = rt.store.get(task) if task else None
        if arm == "plain":
            return measure(lambda: run_request(be, None, ids, decode, V), reps, cfg.warmup)
        if arm == "hard_prompt":
            pre = self.hard_prompt_ids(e)
            return measure(lambda: run_request(be, None, ids, decode, V, pre_ids=pre), reps, cfg.warmup)
        if arm in ("prompt_warm", "prefix_warm"):
            p = rt.prefix(task)  # computed once, cached
            return measure(lambda: run_request(be, p, ids, decode, V), reps, cfg.warmup)

        def cold(make: Callable[[], object]) -> dict:
            """Requests whose prefix ``make()`` builds each time: its time is the request's prefix work."""

            def one():
                t = time.perf_counter()
                p = make()
                return run_request(be, p, ids, decode, V, prefix_s=time.perf_counter() - t)

            return measure(one, reps, cfg.warmup)

        if arm == "prompt_cold":
            rows = e.method.prefix_array(rt.store.tensors(e))
            return cold(lambda: rt.store.prefill(rows))
        if arm == "prompt_disk":
            blob = self.scratch / f"{task}{be.prefix_suffix}"
            if not blob.exists():
                blob.write_bytes(be.prefix_to_bytes(rt.prefix(task)))
            return cold(lambda: be.prefix_from_bytes(blob.read_bytes(), e.num_virtual_tokens))
        if arm == "shipped_kv":
            if e is None or e.shipped is None or e.method.prefix_kind != PrefixKind.EMBEDDINGS:
                return None
            return cold(lambda: be.prefix_from_bytes(e.shipped(), e.num_virtual_tokens))
        if arm == "prefix_cold":
            return cold(lambda: rt.store.compute_prefix(e))  # read (sha256 checked), shape-checked, into the backend
        raise KeyError(arm)

    def hard_prompt_ids(self, e) -> list[int]:
        """The hard-prompt arm's prefix: the task's instruction as text (a synthetic one without a task)."""
        spec = e.spec if e else SYNTHETIC_SPEC
        return self.rt.encode(spec.instruction or SYNTHETIC_INSTRUCTION)

    def virtual_tokens(self, task: str, ids: list[int], decode: int) -> dict | None:
        vt = (self.rt.bundle.model.get(ModelKeys.VIRTUAL_TOKENS) or {}).get(task)
        if not vt:
            return None
        try:
            stock = StockLlama(self.rt.bundle.model_file, self.be.n_ctx, self.cfg.threads_main, self.rt.bundle.model.get(ModelKeys.LOGIT_MASK) or [])
        except ImportError:
            return None
        try:
            return measure(lambda: stock.request(vt, ids, decode), self.cfg.reps, self.cfg.warmup)
        finally:
            stock.close()

    def arms(self, tasks_by_kind: dict[str, list[tuple[str, bool]]]) -> dict:
        """Every arm on the main text length: real tasks where the bundle has them, else synthetic."""
        cfg = self.cfg
        ids = text_ids(self.rt, cfg.text_main)
        for _ in range(cfg.global_warmup):  # page the weights in and let the clocks settle before the first arm
            run_request(self.be, None, ids, cfg.decode, self.vocab)
        out: dict[str, list[dict]] = {}
        for name, arm in ARMS.items():
            if arm.kind is None:
                pool = [(None, False)] if name == "plain" else (tasks_by_kind.get("embeddings") or tasks_by_kind.get("kv") or [(None, True)])[:1]
            else:
                pool = tasks_by_kind.get(arm.kind.value, [])
            for task, synthetic in pool:
                self.log(f"  arm {name} on {task or 'no task'} ...")
                if name == "virtual_tokens":
                    r = self.virtual_tokens(task, ids, cfg.decode) if not synthetic else None
                    why = "the bundle has no virtual tokens for it (export --virtual-tokens, GGUF)"
                else:
                    r = self.arm(name, task, ids, cfg.decode)
                    why = "the bundle ships no KV for it (export --with-kv)"
                rec = {"task": task, "synthetic": synthetic, "text_tokens": len(ids), "decode_tokens": cfg.decode}
                if task:
                    rec["P"] = self.rt.store.get(task).num_virtual_tokens
                if name == "hard_prompt":
                    rec["hard_prompt_tokens"] = len(self.hard_prompt_ids(self.rt.store.get(task) if task else None))
                if r is None:
                    rec["skipped"] = why
                else:
                    rec.update(r)
                out.setdefault(name, []).append(rec)
        return out

    # -- sweeps -------------------------------------------------------------------------------------
    def p_sweep(self, synth: dict) -> list[dict]:
        """Swap and TTFT against P for both methods (synthetic tasks), cold and warm; bytes per task."""
        ids = text_ids(self.rt, self.cfg.text_main)
        rows = []
        for (kind, P), task in sorted(synth.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            arms = ("prompt_cold", "prompt_disk", "prompt_warm") if kind == PrefixKind.EMBEDDINGS.value else ("prefix_cold", "prefix_warm")
            rec = {"kind": kind, "method": self.rt.store.get(task).method.name, "P": P, "synthetic": True, **task_bytes(self.rt, task)}
            for a in arms:
                r = self.arm(a, task, ids, self.cfg.decode_sweep)
                rec[a] = {k: r[k] for k in ("prefix_s", "restore_s", "prefill_s", "ttft_s", "decode_tok_s")}
            rec["swap"] = self.swaps(task)
            self.log(f"  P sweep: {rec['method']} P={P}")
            rows.append(rec)
        return rows

    def swaps(self, task: str) -> dict:
        """The swap alone, many times (it is milliseconds; a request's spread would hide it): warm = restoring
        the cached prefix into a sequence; cold = making the prefix (a prefill, or the KV read into the
        backend) and restoring it; from a file = a computed prefix read back (prompt tuning)."""
        rt, be, cfg = self.rt, self.be, self.cfg
        e = rt.store.get(task)
        p = rt.prefix(task)

        def restore():
            with be.sequence(p):
                pass

        out = {"warm_s": repeat(restore, cfg.reps_swap, warmup=2)}
        if e.method.prefix_kind == PrefixKind.EMBEDDINGS:
            rows = e.method.prefix_array(rt.store.tensors(e))
            make = lambda: rt.store.prefill(rows)  # noqa: E731
            blob = be.prefix_to_bytes(p)
            path = self.scratch / f"{task}-swap{be.prefix_suffix}"
            path.write_bytes(blob)

            def from_file():
                with be.sequence(be.prefix_from_bytes(path.read_bytes(), e.num_virtual_tokens)):
                    pass

            out["file_s"] = repeat(from_file, cfg.reps_swap, warmup=2)
        else:
            make = lambda: rt.store.compute_prefix(e)  # noqa: E731

        def cold():
            with be.sequence(make()):
                pass

        out["cold_s"] = repeat(cold, max(cfg.reps_swap // 3, 3), warmup=1)
        return out

    def text_sweep(self, warm: dict[str, str]) -> list[dict]:
        rows = []
        for n in self.cfg.text_lengths:
            ids = text_ids(self.rt, n)
            rec = {"text_tokens": len(ids), "plain": self.arm("plain", None, ids, self.cfg.decode_sweep)}
            for arm, task in warm.items():
                rec[arm] = self.arm(arm, task, ids, self.cfg.decode_sweep)
                rec[arm]["task"] = task
            for k in list(rec):
                if isinstance(rec[k], dict):
                    rec[k].get("token_s", {}).pop("values", None)
            self.log(f"  text sweep: {n} tokens")
            rows.append(rec)
        return rows

    def kv_growth(self, P: int) -> list[dict]:
        """KV bytes one sequence holds as its context grows (a snapshot's size), and a P-row prefix's share."""
        rows = []
        n_ctx = self.be.n_ctx or 4096
        ctxs = [c for c in (16, 64, 256, 1024, 2048) if c <= n_ctx - 8]
        ids = text_ids(self.rt, max(ctxs))
        with self.be.sequence(None) as seq:
            done = 0
            for c in ctxs:
                seq.feed_ids(ids[done:c])
                done = c
                b = seq.snapshot().nbytes
                # a task's sequence holds its P prefix positions and these c: the prefix's share of its KV
                rows.append({"context": c, "kv_bytes": b, "bytes_per_position": b / c, "prefix_bytes_at_P": P * b / c, "prefix_share_at_P": P / (P + c)})
        return rows

    def open_times(self, path: Path, open_fn) -> dict:
        def once():
            t = time.perf_counter()
            r = open_fn(path)
            dt = time.perf_counter() - t
            r.close()
            return dt

        return repeat(once, self.cfg.reps_open, warmup=1)


def threads_sweep(path: Path, cfg, open_fn, log) -> list[dict]:
    """Plain prefill and decode per thread count (a runtime opened per count)."""
    rows = []
    for T in cfg.threads:
        rt = open_fn(path, threads=T)
        try:
            ids = text_ids(rt, cfg.text_main)
            r = measure(lambda rt=rt: run_request(rt.backend, None, ids, cfg.decode, rt.vocab_size), cfg.reps, cfg.warmup)
            r["token_s"].pop("values", None)
            rows.append({"threads": T, "plain": r})
            log(f"  threads {T}: decode {r['decode_tok_s']:.1f} tok/s")
        finally:
            rt.close()
    return rows


def accuracy(rt, eval_n: int = 0, log: Callable[[str], None] = lambda s: None) -> dict:
    """Per task: the bundle's parity record (the export's accuracy through torch and through this quant) and,
    with ``eval_n``, accuracy and macro-F1 of ``eval_n`` test examples classified by this runtime (the task's
    data rebuilt from its manifest's record)."""
    from edgeprompt.core.constants import TaskKind
    from edgeprompt.core.data import dataset_for_task
    from edgeprompt.core.errors import EdgePromptError
    from edgeprompt.core.metrics import classification_report

    out = {}
    for task, r in rt.bundle.parity().items():
        out[task] = {
            "quant": rt.bundle.quant,
            "probes": r.probes,
            "accuracy_reference": r.accuracy_reference,
            "accuracy_export": r.accuracy_export,
            "top1_agreement": r.top1_agreement,
            "max_abs_logit_diff": r.max_abs_logit_diff,
        }
    if eval_n > 0:
        bank = rt.bundle.bank
        for task in rt.bundle.tasks:
            t = bank.task(task)
            rec = out.setdefault(task, {"quant": rt.bundle.quant})
            if t.spec.kind != TaskKind.CLASSIFICATION:
                rec["eval"] = {"skipped": "a generation task: no labels to score"}
                continue
            try:
                test = dataset_for_task(t).test[:eval_n]
            except EdgePromptError as e:
                rec["eval"] = {"skipped": str(e)}
                continue
            log(f"  eval: {len(test)} test examples of {task} through the runtime ...")
            labels = t.spec.labels
            gold = np.array([labels.index(ex.label) for ex in test])
            pred = np.array([labels.index(rt.classify(task, ex.text, truncate=True).label) for ex in test])
            rep = classification_report(gold, pred, labels)
            rec["eval"] = {"n": len(test), "accuracy": rep.accuracy, "macro_f1": rep.macro_f1}
    return out


__all__ = ["BundleProfiler", "accuracy", "summarize", "synthetic_tasks", "text_ids", "threads_sweep"]
