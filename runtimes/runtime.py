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

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from edgeprompt.core.bank import BankTask, PromptBank, read_task_folder
from edgeprompt.core.bundle import Bundle
from edgeprompt.core.constants import (
    BANK_FILE,
    MAX_STOP_LENGTH,
    MAX_STOP_STRINGS,
    MAX_TEMPERATURE,
    PARITY_FP32_MAX_ABS,
    TASK_MANIFEST_FILE,
    FileKeys,
    ModelKeys,
    TaskKind,
    TokenizerKeys,
)
from edgeprompt.core.errors import BundleError, EdgePromptError, RequestError
from edgeprompt.core.parity import PLAIN, LabelIds, ParityResult, Probe, compare
from edgeprompt.core.tasks import input_ids
from edgeprompt.runtimes.backend import BACKENDS, Backend, Prefix, backend_for_format
from edgeprompt.runtimes.cache import PrefixCache
from edgeprompt.runtimes.sampling import log_softmax, partial_stop, sample
from edgeprompt.runtimes.tasks import TaskEntry, TaskStore


@dataclass
class Classification:
    label: str
    probabilities: dict[str, float]  # over the labels, sum 1
    logprobs: dict[str, float]  # log p(verbalizer | input) under the model

    def to_dict(self) -> dict:
        return {"label": self.label, "probabilities": self.probabilities, "logprobs": self.logprobs}


class Generation:
    """What :meth:`Runtime.generate` returns with ``stream=True``: an iterator of text pieces that keeps count.

    ``prompt_tokens``: the input's tokens (after the template; the prefix's P not counted);
    ``completion_tokens``: tokens decoded so far; ``finish_reason``: ``None`` while running, then ``"stop"``
    (EOS or a stop string) or ``"length"`` (``max_new_tokens`` reached), as OpenAI's API names them.
    """

    def __init__(self, prompt_tokens: int):
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self._it: Iterator[str] = iter(())

    def __iter__(self) -> "Generation":
        return self

    def __next__(self) -> str:
        return next(self._it)

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


class Runtime:
    """See the module docstring. Made by :func:`open_bundle`."""

    def __init__(self, bundle: Bundle, backend: Backend, tokenizer, cache_mb: float = 256.0, prefix_dir: str | Path | None = None):
        self.bundle = bundle
        self.backend = backend
        self._tok = tokenizer
        self.cache = PrefixCache(cache_mb)
        self.eos_token_id = bundle.tokenizer.get(TokenizerKeys.EOS_ID)
        # The model file may have more rows than the base vocabulary (a GGUF with virtual tokens):
        # those ids are never predicted, so logits are cut to the base vocabulary everywhere.
        self.vocab_size = bundle.base_model.vocab_size
        model_sha = (bundle.manifest.get("files") or {}).get(bundle.model[ModelKeys.FILE], {}).get(FileKeys.SHA256, "")
        self.store = TaskStore(backend, bundle.base_model, self.encode, model_key=model_sha, prefix_dir=prefix_dir)
        self.store.load_bundle_tasks(bundle)

    # -- tasks ----------------------------------------------------------------------------------
    @property
    def tasks(self) -> list[str]:
        return self.store.names()

    def add_task(self, source: str | Path | BankTask, name: str | None = None) -> str:
        """Load a task into the running runtime (no model reload): a bank task folder, or a task
        of a :class:`~edgeprompt.core.bank.PromptBank` given as ``(bank path, name)`` via ``name``."""
        if isinstance(source, BankTask):
            t = source
        else:
            p = Path(source)
            if name is not None and (p / BANK_FILE).exists():
                t = PromptBank(p).task(name)
            else:
                if not (p / TASK_MANIFEST_FILE).exists():
                    raise RequestError(f"{p} is not a task folder (no {TASK_MANIFEST_FILE}); pass BANK and name=TASK.")
                t = read_task_folder(p)  # name, format, version and keys checked like a bank's
        e = self.store.add(t)
        self.cache.drop(e.name)
        return e.name

    def task_info(self, task: str) -> dict:
        """``{"name", "method", "kind", "labels", "num_virtual_tokens"}`` of a task (the CLI and ``GET /tasks``)."""
        e = self.store.get(task)
        return {"name": e.name, "method": e.method.name, "kind": e.spec.kind.value, "labels": list(e.spec.labels), "num_virtual_tokens": e.num_virtual_tokens}

    def prefix(self, task: str | None) -> Prefix | None:
        """The task's prefix state: warm from the LRU cache, else computed (cold) and cached."""
        if task is None:
            return None
        return self._prefix_of(self.store.get(task))

    def _prefix_of(self, e: TaskEntry) -> Prefix:
        p = self.cache.get(e.name)
        if p is not None and p.owner is e:
            return p
        p = self.store.compute_prefix(e)
        p.owner = e
        if self.store.is_current(e):  # add_task may have replaced the task meanwhile: never cache a stale prefix
            self.cache.put(e.name, p)
        return p

    # -- encoding -------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def token_string(self, token_id: int | None) -> str:
        """A token's text as the tokenizer spells it (a special token's name, e.g. ``<|im_end|>``); "" for None."""
        return (self._tok.id_to_token(int(token_id)) or "") if token_id is not None else ""

    def input_ids(self, task: str | None, text: str, reserve: int = 0, truncate: bool = False) -> list[int]:
        """Token ids of the request's input (templated for a task), by the core's input rule."""
        e = None if task is None else self.store.get(task)
        P = 0 if e is None else e.num_virtual_tokens
        return input_ids(None if e is None else e.spec, self.encode, text, self.n_ctx, prefix_len=P, reserve=reserve, truncate=truncate)

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
            raise RequestError("classify needs a classification task; task=None runs the plain model (use generate).")
        e = self.store.get(task)
        spec = e.spec
        if spec.kind != TaskKind.CLASSIFICATION:
            raise RequestError(f"task {task!r} is a {spec.kind.value} task; use generate.")
        verbs = self.store.verbalizers(e)
        ids = self.input_ids(task, text, reserve=max(len(v) for v in verbs), truncate=truncate)
        with self.backend.sequence(self._prefix_of(e)) as seq:
            first = log_softmax(seq.feed_ids(ids)[: self.vocab_size])
            after_input = None if all(len(v) == 1 for v in verbs) else seq.snapshot()
        scores = np.array([first[v[0]] for v in verbs])
        if after_input is not None:  # multi-token verbalizers: continue from the input, one label at a time
            for k, v in enumerate(verbs):
                with self.backend.sequence(after_input) as seq2:
                    for a, b in zip(v[:-1], v[1:]):
                        scores[k] += log_softmax(seq2.feed_ids([a])[: self.vocab_size])[b]
        if not np.isfinite(scores).all():
            raise EdgePromptError(f"task {task!r}: the model gave non-finite label scores {scores.tolist()}; the model file or task is broken.")
        decided = spec.decide(scores)  # log-probabilities over the labels, calibrated when the task is
        probs = np.exp(decided)
        labels = spec.labels
        return Classification(
            label=labels[int(np.argmax(decided))],
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
        """Decode after the (templated) text. ``stream=True``: a :class:`Generation` (an iterator of text
        pieces that counts tokens); else the text.

        Greedy when ``temperature == 0``. Stops at EOS, at ``max_new_tokens`` or at a ``stop`` string.
        """
        stop = _check_sampling(max_new_tokens, temperature, top_k, top_p, seed, stop)
        # checked now, not at the first next(): an unknown task or a too-long text fails the call
        ids = self.input_ids(task, text, reserve=max_new_tokens, truncate=truncate)
        prefix = self.prefix(task)
        g = Generation(len(ids))
        g._it = self._generate(ids, prefix, max_new_tokens, temperature, top_k, top_p, seed, stop, g)
        return g if stream else "".join(g)

    def _generate(self, ids, prefix, max_new_tokens, temperature, top_k, top_p, seed, stop, g: Generation) -> Iterator[str]:
        rng = np.random.default_rng(seed)
        out: list[int] = []
        emitted = ""  # text already yielded
        hold = max((len(x) for x in stop), default=1) - 1  # a stop string may still be completing
        with self.backend.sequence(prefix) as seq:
            logits = seq.feed_ids(ids)
            for step in range(max_new_tokens):
                tok = sample(logits[: self.vocab_size], temperature, top_k, top_p, rng)
                if self.eos_token_id is not None and tok == self.eos_token_id:
                    g.finish_reason = "stop"
                    break
                out.append(tok)
                g.completion_tokens = len(out)
                full = self.decode(out)
                last = step == max_new_tokens - 1
                if full.endswith("\ufffd") and not last:  # an incomplete UTF-8 sequence: wait for the next token
                    logits = seq.feed_ids([tok])
                    continue
                cut = min((i for i in (full.find(x, max(0, len(emitted) - hold)) for x in stop) if i >= 0), default=-1)
                if cut >= 0:
                    g.finish_reason = "stop"
                    if cut > len(emitted):
                        yield full[len(emitted) : cut]
                    return
                safe = len(full) if last else len(full) - partial_stop(full, stop)
                if safe > len(emitted):
                    yield full[len(emitted) : safe]
                    emitted = full[:safe]
                if last:
                    g.finish_reason = "length"
                    break
                logits = seq.feed_ids([tok])
            full = self.decode(out)
            if len(full) > len(emitted):  # what a partial stop string held back, at EOS
                yield full[len(emitted) :]

    # -- parity ---------------------------------------------------------------------------------
    def label_ids(self) -> LabelIds:
        """Per classification task: its labels, the first token of each verbalizer and its calibration (or None)."""
        return {
            name: (e.spec.labels, [v[0] for v in self.store.verbalizers(e)], e.spec.calibration)
            for name, e in self.store.items()
            if e.spec.kind == TaskKind.CLASSIFICATION
        }

    def check_parity(self, probes: Sequence[Probe] | None = None, reference: np.ndarray | None = None) -> dict[str, ParityResult]:
        """Rerun the export's parity probes on this device against the stored torch reference."""
        if probes is None:
            probes, reference = self.bundle.probes()
        have = set(self.tasks)
        keep = [i for i, p in enumerate(probes) if p.task == PLAIN or p.task in have]
        probes = [probes[i] for i in keep]
        reference = np.asarray(reference)[keep]
        cand = np.stack([self.logits(p.task or None, p.text) for p in probes])
        full = self.bundle.full_precision
        return compare(reference, cand, probes, self.label_ids(), max_abs=PARITY_FP32_MAX_ABS if full else None)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_sampling(max_new_tokens, temperature, top_k, top_p, seed, stop) -> tuple[str, ...]:
    """Refuse bad sampling settings before any work (and before a server sends its 200): a typed error naming
    the setting and its range. Returns the stop strings, empty ones dropped."""
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise RequestError(f"max_new_tokens must be an integer of at least 1, got {max_new_tokens!r}.")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= MAX_TEMPERATURE:
        raise RequestError(f"temperature must be a number in [0, {MAX_TEMPERATURE:g}] (0 = greedy), got {temperature!r}.")
    if not _is_int(top_k) or top_k < 0:
        raise RequestError(f"top_k must be an integer of at least 0 (0 = off), got {top_k!r}.")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise RequestError(f"top_p must be a number in (0, 1], got {top_p!r}.")
    if seed is not None and (not _is_int(seed) or not 0 <= seed < 2**63):
        raise RequestError(f"seed must be an integer in [0, 2**63) or null, got {seed!r}.")
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(x, str) for x in stop):
        raise RequestError("stop must be a string or a list of strings.")
    if len(stop) > MAX_STOP_STRINGS or any(len(x) > MAX_STOP_LENGTH for x in stop):
        raise RequestError(f"stop takes at most {MAX_STOP_STRINGS} strings of at most {MAX_STOP_LENGTH} characters each.")
    return tuple(x for x in stop if x)


def open_bundle(
    path: str | Path,
    backend: str = "auto",
    threads: int | None = None,
    cache_mb: float = 256.0,
    n_ctx: int = 2048,
    verify: bool = True,
    prefix_dir: str | Path | None = None,
) -> Runtime:
    """Open a bundle written by ``edgeprompt export``.

    Args:
        backend: ``auto`` picks the bundle's own format; ``onnx`` or ``llamacpp`` must match it.
        threads: compute threads; default: the cores available, up to 4, then one fewer (max 8).
        cache_mb: the budget of the per-task prefix cache (LRU), in MiB.
        n_ctx: llama.cpp's context in tokens (ONNX has no fixed context).
        verify: check every file's size at open, and its sha256: the model's and tokenizer's at open,
            each task's the first time it is read.
        prefix_dir: a folder where prompt-tuning prefixes, once computed, are kept, so that a cold
            swap reads them instead of prefilling P rows (default: none kept).
    """
    if backend != "auto" and backend not in BACKENDS:
        raise RequestError(f"backend {backend!r} is not one of auto, {', '.join(BACKENDS)}.")
    b = Bundle.open(path, verify=verify, lazy_tasks=True)
    entry = backend_for_format(b.format)
    if backend != "auto" and backend != entry.name:
        want = BACKENDS[backend].format
        raise BundleError(
            f"bundle {path} holds a {b.format.value} model; backend {backend!r} needs a {want.value} bundle (re-export with --format {want.value})."
        )
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise EdgePromptError("the runtime needs the tokenizers package: pip install 'edgeprompt[runtime]'") from None
    tok = Tokenizer.from_file(str(b.tokenizer_file))
    be = entry.open(b, threads, n_ctx)
    try:
        if be.vocab_size < b.base_model.vocab_size or be.hidden_size != b.base_model.hidden_size:
            raise BundleError(
                f"bundle {path}: the model file has vocab {be.vocab_size} and d={be.hidden_size}, the manifest's base model "
                f"{b.base_model.vocab_size} and {b.base_model.hidden_size}; the bundle is inconsistent, re-export it."
            )
        return Runtime(b, be, tok, cache_mb=cache_mb, prefix_dir=prefix_dir)
    except BaseException:
        be.close()
        raise
