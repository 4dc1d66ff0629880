"""The training loop: only the prompt's parameters train; the base model is frozen.

Resumable to the bit: the batch order is a pure function of (seed, step), and a checkpoint holds
the parameters, the AdamW moments and the best-so-far state (safetensors) plus the loop state
(JSON). Ctrl-C finishes the current step, writes a checkpoint and raises
:class:`TrainingInterrupted`; ``resume=True`` continues with the same result as an uninterrupted run.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgeprompt.core import schema
from edgeprompt.core.constants import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, TaskKind
from edgeprompt.core.data import Dataset
from edgeprompt.core.errors import EdgePromptError, TrainingInterrupted, internal_check
from edgeprompt.core.files import atomic_directory, atomic_write_json, atomic_write_safetensors, read_safetensors, recover_directory
from edgeprompt.core.methods import get_method
from edgeprompt.core.metrics import report_dict
from edgeprompt.train.batching import Encoder, collate, sequence_lengths
from edgeprompt.train.forward import logits_at, text_hidden
from edgeprompt.train.models import FrozenLM
from edgeprompt.train.scoring import evaluate


@dataclass
class TrainConfig:
    """Optimisation settings. ``lr=None`` takes the method config's ``default_lr()`` (from the sweep)."""

    steps: int = 200
    batch_size: int = 8
    lr: float | None = None
    weight_decay: float = 0.0
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1  # cosine decay to this fraction of lr
    grad_clip: float = 1.0
    max_length: int = 96
    # dev scored 5 times in 200 steps: with 100 (twice), 4 of the 6 class-weighted runs in benchmarks/quality.md
    # kept the first of their two candidates, their dev macro-F1 falling by 0.02-0.07 by step 200 (the state to keep
    # may lie before 100); a dev pass of 200 examples costs a few training steps
    eval_every: int = 40
    eval_examples: int = 200  # dev examples per evaluation
    checkpoint_every: int = 50
    seed: int = 0
    # skewed labels: auto (class weights when the labels are skewed), weights (in the loss), sampling (class-balanced
    # batches, an unweighted loss: :func:`balanced_batch_indices`), none. Without class weights, prefix tuning on drug
    # reviews (seeds 0-2, benchmarks/sweep_small.md) had the same best dev macro-F1 (0.634 against 0.635) and a lower
    # mean of the last three scores (0.575 against 0.609): kept. Class-balanced batches scored the same on test (prefix
    # tuning, seeds 0-4, 0.602 against 0.605, benchmarks/quality.md) for a higher dev score, and lower with prompt
    # tuning (seeds 0-5, 0.559 against 0.579, lower on 5 of 6): not the default
    balance: str = "auto"
    select: str = "auto"  # the dev metric that picks the kept state: auto (macro-F1 when skewed), accuracy, macro_f1
    # label-prior correction: auto (train_prior, or content_free without training rows, if dev keeps it over none),
    # content_free, train_prior, on (content_free), off
    calibration: str = "auto"
    # the training loss of a classification: vocab (cross-entropy over the whole vocabulary on the verbalizer's
    # tokens) or labels (over the labels' verbalizer tokens only: the choice eval makes; single-token verbalizers).
    # labels scored lower on drug reviews (seed 0, prompt tuning: best dev macro-F1 0.575 against 0.608,
    # benchmarks/sweep_small.md): not the default
    objective: str = "vocab"

    def __post_init__(self):
        for name, allowed in (("balance", BALANCE), ("select", SELECT), ("calibration", CALIBRATION), ("objective", OBJECTIVE)):
            if getattr(self, name) not in allowed:
                raise EdgePromptError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}.")
        for name in ("steps", "batch_size", "eval_every", "checkpoint_every", "max_length"):
            if int(getattr(self, name)) < 1:
                raise EdgePromptError(f"{name}={getattr(self, name)} must be at least 1.")
        if int(self.seed) < 0:
            raise EdgePromptError(f"seed={self.seed} must be 0 or more.")
        if self.lr is not None and not (0 < self.lr < 10):
            raise EdgePromptError(f"lr={self.lr} is out of range (0, 10).")
        if not 0 <= self.min_lr_ratio <= 1:
            raise EdgePromptError(f"min_lr_ratio={self.min_lr_ratio} must be within [0, 1].")

    def lr_at(self, step: int, base: float) -> float:
        if step < self.warmup_steps:
            return base * (step + 1) / self.warmup_steps
        span = max(1, self.steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return base * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


BALANCE = ("auto", "weights", "sampling", "none")
SELECT = ("auto", "accuracy", "macro_f1")
CALIBRATION = ("auto", "content_free", "train_prior", "on", "off")  # on: content_free (the first one)
OBJECTIVE = ("vocab", "labels")
#: TrainConfig fields added after checkpoints were first written, each at the value that trains as before it: a
#: checkpoint that lacks one resumes as it was trained.
SETTINGS_ADDED = {"objective": "vocab"}
#: Labels are *skewed* when the most frequent is this many times the least frequent in the training split: then
#: ``auto`` weighs the loss by class and picks the kept state by dev macro-F1 (accuracy rewards the majority).
SKEW_RATIO = 1.5
#: :func:`dev_resolution_note` speaks when the rarest label has fewer scored dev rows than this: one row is then
#: over 5% of its recall.
THIN_DEV_ROWS = 20


def label_counts(data: Dataset) -> dict[str, int]:
    counts = {lab: 0 for lab in data.spec.labels}
    for ex in data.train:
        counts[ex.label] = counts.get(ex.label, 0) + 1
    return counts


def dev_resolution_note(data: Dataset, config: TrainConfig) -> str | None:
    """What the dev split can tell apart, said when it is coarse: the scored dev rows (the first
    ``config.eval_examples``) of the rarest label, when fewer than :data:`THIN_DEV_ROWS`. One such row is
    ``1/n`` of that label's recall: dev macro-F1 moves in steps of one such row, and states a step or two apart
    are picked between by chance (drug reviews: 9 *neutral* rows in 100, and dev preferred class-balanced batches
    on four seeds that all scored lower on test, benchmarks/quality.md). None for generation, or when every label
    has enough rows."""
    if data.spec.kind != TaskKind.CLASSIFICATION or not data.dev:
        return None
    dev = data.dev[: config.eval_examples]
    scored = Counter(ex.label for ex in dev)
    # the labels training has rows of: dev cannot judge the finding of one that training never saw
    counts = {lab: scored[lab] for lab, c in label_counts(data).items() if c and lab in data.spec.labels}
    missing = [lab for lab, c in counts.items() if c == 0]
    if missing:
        return f"dev ({len(dev)} rows scored) has no {', '.join(missing)} rows: the kept state cannot be chosen on finding them; give dev rows of every label (--dev, for files)"
    lab, n = min(counts.items(), key=lambda kv: kv[1], default=(None, THIN_DEV_ROWS))
    if n >= THIN_DEV_ROWS:
        return None
    return f"dev ({len(dev)} rows scored) has {n} {lab} rows: one is {1 / n:.0%} of its recall, so the kept state is picked at that resolution; a larger dev split resolves it finer (--dev, for files)"


def is_skewed(data: Dataset) -> bool:
    if data.spec.kind != TaskKind.CLASSIFICATION:
        return False
    c = [n for n in label_counts(data).values()]
    return min(c) == 0 or max(c) / min(c) >= SKEW_RATIO


def class_weights(data: Dataset) -> dict[str, float]:
    """Inverse-frequency weights, mean 1 over the training examples: each label weighs as much in the loss."""
    counts = label_counts(data)
    K, n = sum(1 for c in counts.values() if c), len(data.train)
    return {lab: (n / (K * c) if c else 0.0) for lab, c in counts.items()}


def resolved(config: TrainConfig, data: Dataset) -> tuple[str, str]:
    """What ``auto`` means for this data: (balance, select)."""
    classification = data.spec.kind == TaskKind.CLASSIFICATION
    skew = is_skewed(data)
    balance = config.balance if config.balance != "auto" else ("weights" if skew else "none")
    select = config.select if config.select != "auto" else ("macro_f1" if skew else "accuracy")
    return (balance if classification else "none"), (select if classification else "nll")


def adapt_to_data(config: TrainConfig, n_train: int, given: set[str] = frozenset(), lengths: Sequence[int] | None = None) -> tuple[TrainConfig, list[str]]:
    """Small data: steps, eval cadence and warm-up adapt to the training split's size, each said in a note;
    a setting in ``given`` (the user's) is kept. At most :data:`MAX_EPOCHS` passes over the data (more overfits a
    few hundred rows), at least :data:`MIN_STEPS`; the dev split is scored about :data:`EVALS` times.

    ``lengths``: each training example's tokens, input and label (:func:`~edgeprompt.train.batching.sequence_lengths`).
    When some are longer than ``max_length``, it rises to the longest (at most :data:`MAX_ADAPTED_LENGTH`):
    training would otherwise learn from cut texts that eval and the runtimes take whole. A batch pads only to its
    own longest row, so short data pays nothing for it.
    """
    notes, changes = [], {}
    bs = config.batch_size
    if "steps" not in given:
        steps = max(MIN_STEPS, min(config.steps, math.ceil(MAX_EPOCHS * n_train / bs)))
        if steps != config.steps:
            changes["steps"] = steps
            notes.append(f"steps {steps} (not {config.steps}): {n_train} training rows, at most {MAX_EPOCHS} epochs of {bs}; --steps overrides")
    steps = changes.get("steps", config.steps)
    if "eval_every" not in given and "steps" in changes:  # a shortened run still scores dev several times
        every = max(1, min(config.eval_every, steps // EVALS))
        if every != config.eval_every:
            changes["eval_every"] = every
            notes.append(f"dev evaluation every {every} steps ({EVALS} in {steps}); --eval-every overrides")
    if "warmup_steps" not in given and "steps" in changes and config.warmup_steps > steps // 10:
        changes["warmup_steps"] = max(1, steps // 10)
    if lengths and "max_length" not in given:
        cut = sum(n > config.max_length for n in lengths)
        new = max(config.max_length, min(max(lengths), MAX_ADAPTED_LENGTH))  # never below the setting
        if cut and new != config.max_length:
            still = sum(n > new for n in lengths)
            changes["max_length"] = new
            notes.append(
                f"max length {new} (not {config.max_length}): {cut} of {len(lengths)} training examples are longer than {config.max_length} tokens "
                + (f"({still} still longer than {new}, cut) " if still else "")
                + "and eval takes texts whole; --max-length overrides"
            )
    return (replace(config, **changes) if changes else config), notes


def adapt_to_dataset(lm, data: Dataset, config: TrainConfig, given: set[str] = frozenset()) -> tuple[TrainConfig, list[str]]:
    """:func:`adapt_to_data` on ``data``'s training split, its lengths measured by ``lm``'s tokenizer: what
    ``edgeprompt train``, ``edgeprompt demo`` and the quality benchmark train with."""
    return adapt_to_data(config, len(data.train), set(given), sequence_lengths(lm, data.spec, data.train))


MAX_EPOCHS = 10
#: :func:`adapt_to_data` raises ``max_length`` to the longest training example, up to this many tokens.
MAX_ADAPTED_LENGTH = 512
MIN_STEPS = 30
EVALS = 5


@dataclass
class TrainResult:
    module: Any
    best_step: int
    best_dev: dict
    history: list[dict] = field(default_factory=list)
    wall_time_s: float = 0.0
    steps: int = 0
    lr: float = 0.0


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The example indices of ``step``: epochs of seeded permutations, concatenated."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        out.extend(perm[offset : offset + batch_size - len(out)].tolist())
    return np.array(out)


def balanced_batch_indices(by_label: list[np.ndarray], batch_size: int, seed: int, step: int) -> np.ndarray:
    """Class-balanced batches: the run's ``g``-th row (``g = step * batch_size + i``) is of label ``g % K`` (``K``:
    the labels with training rows, ``by_label[k]`` the indices of label k's rows) and is the ``g // K``-th row of
    that label's stream, epochs of seeded permutations of its rows. Each label fills a K-th of every batch (to one
    row) and each of its rows is drawn once per pass over that label; a pure function of (seed, step), as
    :func:`batch_indices` is, so a resumed run draws the same batches."""
    K, out = len(by_label), []
    for g in range(step * batch_size, (step + 1) * batch_size):
        rows = by_label[g % K]
        epoch, offset = divmod(g // K, len(rows))
        out.append(int(rows[np.random.default_rng([seed, 1 + g % K, epoch]).permutation(len(rows))[offset]]))
    return np.array(out)


def loss_on_batch(lm: FrozenLM, module, batch, row_weights: torch.Tensor | None = None, label_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy on the target tokens only (label verbalizers or target text); with ``row_weights``
    ``[B]`` (class weights of each example), the weighted mean. With ``label_tokens`` ``[K]`` (the labels'
    single-token verbalizers), the softmax runs over those K logits only (``objective="labels"``)."""
    h = text_hidden(lm, module.kv(lm), batch.input_ids, batch.attention_mask)  # (B, T, d)
    logits = logits_at(lm, h[batch.tgt_rows, batch.tgt_pos - 1])  # (N, vocab): target rows only
    tgt = batch.tgt_ids
    if label_tokens is not None:
        hit = batch.tgt_ids[:, None] == label_tokens[None, :]  # (N, K)
        internal_check(bool(hit.any(-1).all()), "objective=labels: a target token is not one of the label tokens")
        logits, tgt = logits[:, label_tokens], hit.int().argmax(-1)  # (N, K), (N,)
    if row_weights is None:
        return F.cross_entropy(logits.float(), tgt)
    w = row_weights[batch.tgt_rows]
    return (F.cross_entropy(logits.float(), tgt, reduction="none") * w).sum() / w.sum()


def dev_score(report, select: str = "accuracy") -> float:
    if not hasattr(report, "accuracy"):
        return -report["nll"]
    return report.macro_f1 if select == "macro_f1" else report.accuracy


class _SigintFlag:
    """Turns Ctrl-C into a flag checked between steps (main thread only)."""

    def __init__(self):
        self.hit = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._on)
        return self

    def _on(self, signum, frame):
        if self.hit:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _save_checkpoint(path: Path, step: int, module, opt, best: dict, loop: dict, meta: dict) -> None:
    """``loop``: best_step, best_score, best_dev, history, loss_ema, wall_s (JSON-able)."""
    tensors: dict[str, np.ndarray] = {}
    for name, p in module.state_dict().items():
        tensors[f"param/{name}"] = p.detach().cpu().numpy()
    for name, t in best.items():
        tensors[f"best/{name}"] = t.cpu().numpy()
    osd = opt.state_dict()
    for idx, st in osd["state"].items():
        for k, v in st.items():
            tensors[f"opt/{idx}/{k}"] = torch.as_tensor(v).reshape(-1).cpu().numpy() if k == "step" else v.cpu().numpy()
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": step,
        **loop,
        "param_groups": osd["param_groups"],
        **meta,
    }
    with atomic_directory(path) as tmp:
        atomic_write_safetensors(tmp / "tensors.safetensors", tensors)
        atomic_write_json(tmp / "state.json", state)


def _max_length(train_config) -> Any:
    return train_config.get("max_length") if isinstance(train_config, dict) else None


def _load_checkpoint(path: Path, module, opt, meta: dict):
    state = schema.read(path / "state.json", schema.CheckpointState, "checkpoint state", fix="start afresh without --resume")
    if isinstance(state.get("train_config"), dict):  # settings added since, at the value that trained as before them
        state["train_config"] = {**SETTINGS_ADDED, **state["train_config"]}
    for key in ("method", "method_config", "train_config", "data_sha256", "fingerprint"):
        if state.get(key) != meta.get(key):
            raise EdgePromptError(
                f"cannot resume from {path}: its {key} was {state.get(key)!r}, this run has {meta.get(key)!r}. "
                "Resume with the same settings"
                + (
                    " (--max-length now adapts to the data: pass the recorded one)"
                    if key == "train_config" and _max_length(state.get(key)) != _max_length(meta.get(key))
                    else ""
                )
                + ", or start afresh without --resume (or another --name)."
            )
    t = read_safetensors(path / "tensors.safetensors", "checkpoint tensors")
    module.load_state_dict({k[6:]: torch.from_numpy(v) for k, v in t.items() if k.startswith("param/")})
    best = {k[5:]: torch.from_numpy(v) for k, v in t.items() if k.startswith("best/")}
    opt_state: dict[int, dict] = {}
    for k, v in t.items():
        if k.startswith("opt/"):
            _, idx, name = k.split("/", 2)
            opt_state.setdefault(int(idx), {})[name] = torch.from_numpy(v).reshape(()) if name == "step" else torch.from_numpy(v)
    opt.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    loop = {k: state[k] for k in ("best_step", "best_score", "best_dev", "history", "loss_ema", "wall_s")}
    return state["step"], best, loop


def label_tokens(enc: Encoder) -> torch.Tensor:
    """``[K]``: each label's verbalizer token, for ``objective="labels"``; refused unless every verbalizer is one
    token (eval scores a label by all of its verbalizer's tokens, which a softmax over K logits does not cover)."""
    if enc.spec.kind != TaskKind.CLASSIFICATION:
        raise EdgePromptError("objective='labels' is for classification tasks; use objective='vocab' for generation.")
    long = {lab: len(v) for lab, v in zip(enc.spec.labels, enc.verbalizer_ids) if len(v) != 1}
    if long:
        raise EdgePromptError(
            f"objective='labels' needs one-token verbalizers; {long} (label: tokens) are longer. "
            "Give those labels one-token verbalizers, or use objective='vocab'."
        )
    return torch.tensor([v[0] for v in enc.verbalizer_ids], dtype=torch.long)


def _make_module(lm: FrozenLM, data: Dataset, spec_m, method_config: Any, config: TrainConfig):
    """The method's trainable module, started from the task's text (see each method's ``model.py``)."""
    torch.manual_seed(config.seed)
    label_text = "".join(data.spec.verbalizers.values()) if data.spec.kind == TaskKind.CLASSIFICATION else ""
    init = getattr(method_config, "init", None)
    if getattr(init, "value", None) == "text" and not (method_config.init_text or data.spec.instruction).strip():
        # No text to start from (e.g. a generation task without an instruction): the task's own
        # first training inputs stand in for it, as real text beats random vectors.
        method_config.init_text = data.train[0].text
    return spec_m.trainer().module_cls(method_config, lm, init_text=data.spec.instruction, label_text=label_text, seed=config.seed)


class _Run:
    """One training run's state: the module, its optimizer, the best-on-dev weights and the loop record
    (``loop``: best step and score, history, loss EMA, wall time), saved together in a checkpoint."""

    def __init__(self, lm: FrozenLM, data: Dataset, module, config: TrainConfig, lr: float):
        self.lm, self.data, self.module, self.config = lm, data, module, config
        self.groups = module.param_groups(lr)
        self.params = [p for g in self.groups for p in g["params"]]
        self.opt = torch.optim.AdamW(self.groups, lr=lr, weight_decay=config.weight_decay)
        self.enc = Encoder(lm, data.spec, config.max_length)
        self._encoded: dict[int, Any] = {}  # encoded lazily: a run touches steps*batch_size examples, not all
        self.dev = data.dev[: config.eval_examples]
        self.balance, self.select = resolved(config, data)
        weights = class_weights(data) if self.balance == "weights" else None
        self.row_weight = None if weights is None else torch.tensor([weights[ex.label] for ex in data.train], dtype=torch.float32)
        labels = np.array([ex.label for ex in data.train], dtype=object)
        self.by_label = [np.flatnonzero(labels == lab) for lab in data.spec.labels if (labels == lab).any()] if self.balance == "sampling" else None
        self.label_tokens = label_tokens(self.enc) if config.objective == "labels" else None
        self.step = 0
        self.loop: dict[str, Any] = {"best_step": -1, "best_score": None, "best_dev": {}, "history": [], "loss_ema": None, "wall_s": 0.0}
        self.best = self._weights()

    def _weights(self) -> dict:
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def encoded(self, i: int):
        if i not in self._encoded:
            self._encoded[i] = self.enc.example(self.data.train[i])
        return self._encoded[i]

    def train_step(self) -> None:
        """One optimizer step on the step's batch (the batch depends on the seed and step only)."""
        cfg, lm = self.config, self.lm
        if self.by_label is not None:
            idx = balanced_batch_indices(self.by_label, cfg.batch_size, cfg.seed, self.step)
        else:
            idx = batch_indices(len(self.data.train), cfg.batch_size, cfg.seed, self.step)
        batch = collate([self.encoded(i) for i in idx], lm.pad_token_id)
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr_at(self.step, g["base_lr"])
        weights = None if self.row_weight is None else self.row_weight[torch.as_tensor(idx)]
        loss = loss_on_batch(lm, self.module, batch, weights, self.label_tokens)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.opt.step()
        self.step += 1
        ema = self.loop["loss_ema"]
        self.loop["loss_ema"] = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()

    def evaluate_dev(self) -> None:
        """Score the dev split; keep these weights if they are the best so far. Dev texts are read whole, as
        eval, the calibration pass and the runtimes read them: training's cut (``max_length``) is for speed, and
        a state picked on cut texts is picked on inputs no user sends."""
        history = self.loop["history"]
        history.append({"step": self.step})
        if not self.dev:
            return
        with torch.no_grad():
            report = evaluate(self.lm, self.module.kv(self.lm), self.data.spec, self.dev)
        history[-1]["dev"] = report_dict(report)
        score = dev_score(report, self.select)  # unrounded: ties and tiny NLL changes compare exactly
        if self.loop["best_score"] is None or score > self.loop["best_score"]:
            self.best = self._weights()
            self.loop.update(best_step=self.step, best_score=score, best_dev=history[-1]["dev"])


def train(
    lm: FrozenLM,
    data: Dataset,
    method: str,
    method_config: Any,
    config: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train a prompt for ``data`` on the frozen ``lm``; return the best-on-dev module."""
    spec_m = get_method(method)
    if not data.train:
        raise EdgePromptError(f"dataset {data.name!r} has no training examples.")
    module = _make_module(lm, data, spec_m, method_config, config)
    lr = config.lr if config.lr is not None else method_config.default_lr()
    run = _Run(lm, data, module, config, lr)
    meta = {
        "method": spec_m.name,
        "method_config": method_config.to_dict(),
        "train_config": asdict(config),
        "data_sha256": data.sha256("train"),
        "fingerprint": lm.info.fingerprint,
    }
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    if resume:
        if ckpt is not None:
            recover_directory(ckpt)
        if ckpt is None or not (ckpt / "state.json").exists():
            raise EdgePromptError(f"--resume: no checkpoint in {ckpt}; start without --resume.")
        run.step, run.best, run.loop = _load_checkpoint(ckpt, module, run.opt, meta)
    _run_steps(run, spec_m.name, ckpt, meta, progress)
    loop = run.loop
    if loop["best_step"] >= 0:  # without dev data the final state is the result
        module.load_state_dict(run.best)
    module.eval()
    return TrainResult(module, loop["best_step"], loop["best_dev"], loop["history"], wall_time_s=loop["wall_s"], steps=run.step, lr=lr)


def _run_steps(run: _Run, name: str, ckpt: Path | None, meta: dict, progress: bool) -> None:
    """Steps until ``config.steps``: dev evaluations, the progress bar, checkpoints, Ctrl-C."""
    config, loop = run.config, run.loop
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=run.step, desc=f"train {name}", unit="step", dynamic_ncols=True)
    t0, wall_before = time.perf_counter(), loop["wall_s"]
    run.module.train()
    try:
        with _SigintFlag() as sigint:
            while run.step < config.steps:
                run.train_step()
                step = run.step
                loop["wall_s"] = wall_before + time.perf_counter() - t0
                if step % config.eval_every == 0 or step == config.steps:
                    run.evaluate_dev()
                    loop["wall_s"] = wall_before + time.perf_counter() - t0
                    loop["history"][-1].update(loss=round(loop["loss_ema"], 4), wall_s=round(loop["wall_s"], 1))
                if bar is not None:
                    post = {"loss": f"{loop['loss_ema']:.3f}"}
                    if loop["best_score"] is not None:
                        post["dev"] = f"{loop['best_score']:.3f}"  # accuracy or macro-F1 (--select), or -NLL for generation
                    bar.set_postfix(post)
                    bar.update(1)
                if ckpt is not None and (step % config.checkpoint_every == 0 or sigint.hit or step == config.steps):
                    _save_checkpoint(ckpt, step, run.module, run.opt, run.best, loop, meta)
                if sigint.hit and step < config.steps:
                    raise TrainingInterrupted(step, ckpt) if ckpt else KeyboardInterrupt()
    finally:
        if bar is not None:
            bar.close()
