"""The on-device runtime: one frozen model in memory, many task prompts, swapped per request.

>>> rt = open_bundle("tweets-bundle")                                  # doctest: +SKIP
>>> rt.classify("tweets", "what a lovely morning").label               # doctest: +SKIP
'positive'
>>> "".join(rt.generate(None, "The capital of France is", max_new_tokens=8))   # doctest: +SKIP

Imports numpy, tokenizers, safetensors and one of onnxruntime / llama-cpp-python; never torch
or transformers.

A request for task ``T`` runs: the prefix of ``T`` (from the LRU cache when warm; else computed
once: a prompt-tuning prompt ``[P, d]`` prefilled through the model, a prefix-tuning KV used as
is, or a KV shipped in the bundle), then the templated text, then the label scores or decoding.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from edgeprompt.bank import BankTask, PromptBank
from edgeprompt.bundle import Bundle
from edgeprompt.constants import (
    BACKENDS,
    BANK_FILE,
    FULL_PRECISION_QUANTS,
    PARITY_FP32_MAX_ABS,
    TASK_MANIFEST_FILE,
    TENSOR_KV_PREFIX,
    TENSOR_PROMPT_EMBEDDINGS,
    Method,
    ModelFormat,
    ModelKeys,
    TaskForm,
    TaskFormKeys,
    TaskKind,
    TaskRecordKeys,
    TokenizerKeys,
)
from edgeprompt.io import EdgePromptError, read_json, read_safetensors
from edgeprompt.parity import PLAIN, ParityResult, Probe, compare
from edgeprompt.tasks import TaskSpec

from .backends import LlamaCppBackend, OnnxBackend, Prefix



@dataclass
class Classification:
    label: str
    probabilities: dict[str, float]  # over the labels, sum 1
    logprobs: dict[str, float]  # log p(verbalizer | input) under the model

    def to_dict(self) -> dict:
        return {"label": self.label, "probabilities": self.probabilities, "logprobs": self.logprobs}


@dataclass
class _Task:
    name: str
    task: BankTask
    method: Method
    spec: TaskSpec  # read once from the manifest
    prompt: np.ndarray | None = None  # [P, d] prompt tuning
    kv: np.ndarray | None = None  # [L, 2, h, P, hd] prefix tuning
    shipped: Path | None = None  # a KV computed at export by this model
    verbalizers: list[list[int]] | None = None  # token ids per label (classification), encoded once


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes: int = 0
    entries: int = 0


class PrefixCache:
    """LRU of task prefixes under a byte budget. Thread-safe.

    An entry larger than the whole budget is not kept (the request still runs, cold).
    """

    def __init__(self, budget_mb: float):
        self.budget = int(budget_mb * 2**20)
        self._d: OrderedDict[str, Prefix] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def get(self, key: str) -> Prefix | None:
        with self._lock:
            p = self._d.get(key)
            if p is None:
                self.stats.misses += 1
                return None
            self._d.move_to_end(key)
            self.stats.hits += 1
            return p

    def put(self, key: str, p: Prefix) -> None:
        with self._lock:
            if key in self._d:
                self.stats.bytes -= self._d.pop(key).nbytes
            if p.nbytes > self.budget:
                self.stats.entries = len(self._d)
                return
            self._d[key] = p
            self.stats.bytes += p.nbytes
            while self.stats.bytes > self.budget:
                _, old = self._d.popitem(last=False)
                self.stats.bytes -= old.nbytes
                self.stats.evictions += 1
            self.stats.entries = len(self._d)

    def drop(self, key: str) -> None:
        with self._lock:
            if key in self._d:
                self.stats.bytes -= self._d.pop(key).nbytes
            self.stats.entries = len(self._d)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._d)


class Runtime:
    """See the module docstring. Made by :func:`open_bundle`."""

    def __init__(self, bundle: Bundle, backend, tokenizer, cache_mb: float = 256.0):
        self.bundle = bundle
        self.backend = backend
        self._tok = tokenizer
        self.cache = PrefixCache(cache_mb)
        self._tasks: dict[str, _Task] = {}
        self._tasks_lock = threading.Lock()
        self.eos_token_id = bundle.tokenizer.get(TokenizerKeys.EOS_ID)
        # The model file may have more rows than the base vocabulary (a GGUF with virtual tokens):
        # those ids are never predicted, so logits are cut to the base vocabulary everywhere.
        self.vocab_size = bundle.base_model.vocab_size
        bank = bundle.bank
        for name in bundle.tasks:  # the tasks the manifest lists (their files are hashed), no others
            self._register(bank.task(name), bundle.path)

    # -- tasks ----------------------------------------------------------------------------------
    @property
    def tasks(self) -> list[str]:
        with self._tasks_lock:
            return sorted(self._tasks)

    def _register(self, t: BankTask, bundle_path: Path | None = None) -> _Task:
        info = self.bundle.base_model
        info.check_compatible(t.base_model, f"task {t.name!r}")
        tensors = t.tensors()
        entry = _Task(t.name, t, t.method, t.spec)
        if entry.spec.kind == TaskKind.CLASSIFICATION:
            entry.verbalizers = entry.spec.verbalizer_ids(self.encode)
        if t.method == Method.PROMPT_TUNING:
            entry.prompt = tensors[TENSOR_PROMPT_EMBEDDINGS].astype(np.float32)
        else:
            entry.kv = tensors[TENSOR_KV_PREFIX].astype(np.float32)
        if bundle_path is not None:
            forms = self.bundle.tasks.get(t.name, {}).get(TaskRecordKeys.FORMS, {})
            form = TaskForm.KV_PREFIX.value if self.backend.name == "onnx" else TaskForm.LLAMA_STATE.value
            if form in forms and t.method == Method.PROMPT_TUNING:
                entry.shipped = bundle_path / forms[form][TaskFormKeys.FILE]
        with self._tasks_lock:
            self._tasks[t.name] = entry
        self.cache.drop(t.name)
        return entry

    def add_task(self, source: str | Path | BankTask, name: str | None = None) -> str:
        """Load a task into the running runtime (no model reload): a bank task folder, or a task
        of a :class:`~edgeprompt.bank.PromptBank` given as ``(bank path, name)`` via ``name``."""
        if isinstance(source, BankTask):
            t = source
        else:
            p = Path(source)
            if name is not None and (p / BANK_FILE).exists():
                t = PromptBank(p).task(name)
            else:
                if not (p / TASK_MANIFEST_FILE).exists():
                    raise EdgePromptError(f"{p} is not a task folder (no {TASK_MANIFEST_FILE}); pass BANK and name=TASK.")
                t = BankTask(p.name, p, read_json(p / TASK_MANIFEST_FILE, "task manifest"))
        return self._register(t).name

    def task_info(self, task: str) -> dict:
        """``{"name", "method", "kind", "labels"}`` of a task (the CLI and ``GET /tasks`` show this)."""
        e = self._entry(task)
        spec = e.spec
        return {"name": e.name, "method": e.method.value, "kind": spec.kind.value, "labels": list(spec.labels)}

    def _entry(self, task: str) -> _Task:
        e = self._tasks.get(task)
        if e is None:
            have = ", ".join(self.tasks) or "none"
            raise EdgePromptError(f"unknown task {task!r}; this runtime has: {have} (or task=None for the plain model).")
        return e

    def prefix(self, task: str | None) -> Prefix | None:
        """The task's prefix state: warm from the LRU cache, else computed (cold) and cached."""
        if task is None:
            return None
        return self._prefix_of(self._entry(task))

    def _prefix_of(self, e: _Task) -> Prefix:
        p = self.cache.get(e.name)
        if p is not None and p.owner is e:
            return p
        p = self._compute_prefix(e)
        p.owner = e
        with self._tasks_lock:  # add_task may have replaced the task meanwhile: never cache a stale prefix
            if self._tasks.get(e.name) is e:
                self.cache.put(e.name, p)
        return p

    def _compute_prefix(self, e: _Task) -> Prefix:
        if e.method == Method.PREFIX_TUNING:
            return self.backend.prefix_from_kv(e.kv)
        P = e.prompt.shape[0]
        if e.shipped is not None:
            if self.backend.name == "onnx":
                return self.backend.prefix_from_kv(read_safetensors(e.shipped, f"KV of task {e.name!r}")[TENSOR_KV_PREFIX])
            p = self.backend.prefix_from_blob(e.shipped.read_bytes(), P)
            try:  # a blob from another llama.cpp version may be refused: then prefill, and say so once
                with self.backend.sequence(p):
                    pass
                return p
            except EdgePromptError as err:
                warnings.warn(f"{e.shipped}: {err} Prefilling the prompt of task {e.name!r} instead.", stacklevel=2)
                e.shipped = None
        with self.backend.sequence(None) as seq:
            seq.feed_embeds(e.prompt)
            return seq.snapshot()

    # -- encoding -------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def input_ids(self, task: str | None, text: str, reserve: int = 0, truncate: bool = False) -> list[int]:
        """Token ids of the request's input (templated for a task), checked against the context."""
        P = 0 if task is None else self._prefix_len(task)
        if task is None:
            ids = self.encode(text)
            spec = None
        else:
            spec = self._entry(task).spec
            ids = spec.encode_input(self.encode, text)
        if not ids:
            raise EdgePromptError("the text encodes to no tokens; pass a non-empty text.")
        n_ctx = self.n_ctx
        if P + len(ids) + reserve > n_ctx:
            fixed = len(spec.encode_input(self.encode, text, max_text_tokens=0)) if spec else 0
            room = n_ctx - P - reserve - fixed
            if not truncate or room < 1:
                raise EdgePromptError(
                    f"the input is {len(ids)} tokens; with the task's {P}-token prefix and {reserve} tokens for the answer "
                    f"it exceeds the context of {n_ctx}. Shorten the text, or pass truncate=True (CLI: --truncate)."
                )
            ids = spec.encode_input(self.encode, text, max_text_tokens=room) if spec else ids[:room]
        return ids

    def _prefix_len(self, task: str) -> int:
        e = self._entry(task)
        return e.prompt.shape[0] if e.prompt is not None else e.kv.shape[3]

    @property
    def n_ctx(self) -> int:
        """Positions a request may use: llama.cpp's context, or the model's trained context (ONNX)."""
        return self.backend.n_ctx or int(self.bundle.model.get(ModelKeys.CONTEXT_LENGTH) or 2048)

    # -- operations -----------------------------------------------------------------------------
    def logits(self, task: str | None, text: str) -> np.ndarray:
        """Next-token logits ``[V]`` after the (templated) text: the parity gate's quantity."""
        ids = self.input_ids(task, text)
        with self.backend.sequence(self.prefix(task)) as seq:
            return seq.feed_ids(ids)[: self.vocab_size]

    def classify(self, task: str, text: str, truncate: bool = False) -> Classification:
        """Label and probabilities: log p(verbalizer | prompt, input) for each label."""
        if task is None:
            raise EdgePromptError("classify needs a classification task; task=None runs the plain model (use generate).")
        e = self._entry(task)
        spec = e.spec
        if spec.kind != TaskKind.CLASSIFICATION:
            raise EdgePromptError(f"task {task!r} is a {spec.kind.value} task; use generate.")
        verbs = e.verbalizers
        ids = self.input_ids(task, text, reserve=max(len(v) for v in verbs), truncate=truncate)
        with self.backend.sequence(self._prefix_of(e)) as seq:
            first = _log_softmax(seq.feed_ids(ids)[: self.vocab_size])
            after_input = None if all(len(v) == 1 for v in verbs) else seq.snapshot()
        scores = np.array([first[v[0]] for v in verbs])
        if after_input is not None:  # multi-token verbalizers: continue from the input, one label at a time
            for k, v in enumerate(verbs):
                with self.backend.sequence(after_input) as seq2:
                    for a, b in zip(v[:-1], v[1:]):
                        scores[k] += _log_softmax(seq2.feed_ids([a])[: self.vocab_size])[b]
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        labels = spec.labels
        return Classification(
            label=labels[int(np.argmax(scores))],
            probabilities={lab: float(p) for lab, p in zip(labels, probs)},
            logprobs={lab: float(s) for lab, s in zip(labels, scores)},
        )

    def generate(
        self,
        task: str | None,
        text: str,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        stream: bool = True,
        truncate: bool = False,
    ):
        """Decode after the (templated) text. ``stream=True``: an iterator of text pieces; else the text.

        Greedy when ``temperature == 0``. Stops at EOS, at ``max_new_tokens`` or at a ``stop`` string.
        """
        if max_new_tokens < 1:
            raise EdgePromptError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
        stop = tuple(x for x in stop if x)
        # checked now, not at the first next(): an unknown task or a too-long text fails the call
        ids = self.input_ids(task, text, reserve=max_new_tokens, truncate=truncate)
        prefix = self.prefix(task)
        it = self._generate(ids, prefix, max_new_tokens, temperature, top_k, top_p, seed, stop)
        return it if stream else "".join(it)

    def _generate(self, ids, prefix, max_new_tokens, temperature, top_k, top_p, seed, stop) -> Iterator[str]:
        rng = np.random.default_rng(seed)
        out: list[int] = []
        emitted = ""  # text already yielded
        hold = max((len(x) for x in stop), default=1) - 1  # a stop string may still be completing
        with self.backend.sequence(prefix) as seq:
            logits = seq.feed_ids(ids)
            for step in range(max_new_tokens):
                tok = _sample(logits[: self.vocab_size], temperature, top_k, top_p, rng)
                if self.eos_token_id is not None and tok == self.eos_token_id:
                    break
                out.append(tok)
                full = self.decode(out)
                last = step == max_new_tokens - 1
                if full.endswith("\ufffd") and not last:  # an incomplete UTF-8 sequence: wait for the next token
                    logits = seq.feed_ids([tok])
                    continue
                cut = min((i for i in (full.find(x, max(0, len(emitted) - hold)) for x in stop) if i >= 0), default=-1)
                if cut >= 0:
                    if cut > len(emitted):
                        yield full[len(emitted) : cut]
                    return
                safe = len(full) if last else len(full) - _partial_stop(full, stop)
                if safe > len(emitted):
                    yield full[len(emitted) : safe]
                    emitted = full[:safe]
                if last:
                    break
                logits = seq.feed_ids([tok])
            full = self.decode(out)
            if len(full) > len(emitted):  # what a partial stop string held back, at EOS
                yield full[len(emitted) :]

    # -- parity ---------------------------------------------------------------------------------
    def label_ids(self) -> dict[str, tuple[list[str], list[int]]]:
        out = {}
        with self._tasks_lock:
            items = list(self._tasks.items())
        for name, e in items:
            if e.verbalizers is not None:
                out[name] = (e.spec.labels, [v[0] for v in e.verbalizers])
        return out

    def check_parity(self, probes: Sequence[Probe] | None = None, reference: np.ndarray | None = None) -> dict[str, ParityResult]:
        """Rerun the export's parity probes on this device against the stored torch reference."""
        if probes is None:
            probes, reference = self.bundle.probes()
        keep = [i for i, p in enumerate(probes) if p.task == PLAIN or p.task in self._tasks]
        probes = [probes[i] for i in keep]
        reference = np.asarray(reference)[keep]
        cand = np.stack([self.logits(p.task or None, p.text) for p in probes])
        full = self.bundle.quant in FULL_PRECISION_QUANTS
        return compare(reference, cand, probes, self.label_ids(), max_abs=PARITY_FP32_MAX_ABS if full else None)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _partial_stop(text: str, stop: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is the start of a stop string (held back)."""
    best = 0
    for x in stop:
        for k in range(min(len(x) - 1, len(text)), best, -1):
            if text.endswith(x[:k]):
                best = k
                break
    return best


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def _sample(logits: np.ndarray, temperature: float, top_k: int, top_p: float, rng) -> int:
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


def open_bundle(
    path: str | Path,
    backend: str = "auto",
    threads: int | None = None,
    cache_mb: float = 256.0,
    n_ctx: int = 2048,
    verify: bool = True,
) -> Runtime:
    """Open a bundle written by ``edgeprompt export``.

    Args:
        backend: ``auto`` picks the bundle's own format; ``onnx`` or ``llamacpp`` must match it.
        threads: compute threads; default: the cores available, up to 4, then one fewer (max 8).
        cache_mb: the budget of the per-task prefix cache (LRU).
        n_ctx: llama.cpp's context in tokens (ONNX has no fixed context).
        verify: check every file's size and sha256 against the manifest at open.
    """
    if backend not in BACKENDS:
        raise EdgePromptError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}.")
    b = Bundle.open(path, verify=verify)
    fmt = b.format
    want = {"onnx": ModelFormat.ONNX, "llamacpp": ModelFormat.GGUF}.get(backend, fmt)
    if want != fmt:
        raise EdgePromptError(f"bundle {path} holds a {fmt.value} model; backend {backend!r} needs a {want.value} bundle (re-export with --format {want.value}).")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise EdgePromptError("the runtime needs the tokenizers package: pip install 'edgeprompt[runtime]'") from None
    tok = Tokenizer.from_file(str(b.tokenizer_file))
    if fmt == ModelFormat.ONNX:
        from .onnx_engine import OnnxEngine

        eng = OnnxEngine(b.model_file, b.file(b.model[ModelKeys.EMBEDDINGS]), threads=threads)
        be = OnnxBackend(eng)
    else:
        from .llamacpp_engine import LlamaCppEngine

        trained = int(b.model.get(ModelKeys.CONTEXT_LENGTH) or n_ctx)
        eng = LlamaCppEngine(b.model_file, n_ctx=min(n_ctx, trained), threads=threads, kv_f32=b.quant in FULL_PRECISION_QUANTS)
        be = LlamaCppBackend(eng)
    try:
        if be.vocab_size < b.base_model.vocab_size or be.hidden_size != b.base_model.hidden_size:
            raise EdgePromptError(
                f"bundle {path}: the model file has vocab {be.vocab_size} and d={be.hidden_size}, the manifest's base model "
                f"{b.base_model.vocab_size} and {b.base_model.hidden_size}; the bundle is inconsistent, re-export it."
            )
        return Runtime(b, be, tok, cache_mb=cache_mb)
    except BaseException:
        be.close()
        raise
