"""Scoring and metrics: label log-probabilities, accuracy, macro-F1, confusion, zero-shot baseline."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from edgeprompt.core.constants import CalibrationMethod, TaskKind
from edgeprompt.core.data import Example
from edgeprompt.core.errors import EdgePromptError
from edgeprompt.core.metrics import classification_report
from edgeprompt.core.tasks import CONTENT_FREE_INPUTS, Calibration, TaskSpec
from edgeprompt.train.batching import Encoder, collate
from edgeprompt.train.forward import KV, kv_from_embeddings, logits_at, prefix_length, text_hidden
from edgeprompt.train.models import FrozenLM


def instruction_kv(lm: FrozenLM, spec: TaskSpec) -> KV | None:
    """The zero-shot baseline's prefix: the plain instruction as ordinary tokens (no soft prompt)."""
    ids = lm.encode(spec.instruction) if spec.instruction else []
    if not ids:
        return None
    with torch.no_grad():
        return kv_from_embeddings(lm, lm.embeddings[ids])


#: Multi-token verbalizers run each example once per label: at most this many sequences go through one
#: forward, however many labels (a task with hundreds of labels must not allocate gigabytes at once).
MAX_SEQUENCES_PER_FORWARD = 256


@torch.no_grad()
def label_logprobs(lm: FrozenLM, kv: KV | None, enc: Encoder, examples: list[Example], batch_size: int = 32) -> np.ndarray:
    """``[N, K]`` log p(verbalizer_k | prefix, input) summed over the verbalizer's tokens."""
    verbs = enc.verbalizer_ids
    K = len(verbs)
    out = np.zeros((len(examples), K), dtype=np.float64)
    single = all(len(v) == 1 for v in verbs)
    first = torch.tensor([v[0] for v in verbs])
    if not single:  # each example runs once per label: bound the sequences in one forward, not the examples
        batch_size = max(1, min(batch_size, MAX_SEQUENCES_PER_FORWARD // K))
    # Batches of similar length waste less compute on padding; rows go back to input order.
    order = sorted(range(len(examples)), key=lambda i: len(enc.input_ids(examples[i].text)))
    for s in range(0, len(examples), batch_size):
        rows = order[s : s + batch_size]
        chunk = [examples[i] for i in rows]
        if single:
            # One pass: the label is decided at the last input position.
            encs = [enc.example(ex, target=()) for ex in chunk]
            b = collate(encs, lm.pad_token_id)
            h = text_hidden(lm, kv, b.input_ids, b.attention_mask)  # (B, T, d)
            last = b.attention_mask.sum(1) - 1
            logp = F.log_softmax(logits_at(lm, h[torch.arange(len(chunk)), last]).float(), dim=-1)  # (B, V)
            out[rows] = logp[:, first].numpy()
        else:
            encs = [enc.example(ex, target=v) for ex in chunk for v in verbs]
            b = collate(encs, lm.pad_token_id)
            h = text_hidden(lm, kv, b.input_ids, b.attention_mask)
            logp = F.log_softmax(logits_at(lm, h[b.tgt_rows, b.tgt_pos - 1]).float(), dim=-1)
            tok = logp[torch.arange(len(b.tgt_ids)), b.tgt_ids]
            per_seq = torch.zeros(len(encs), dtype=torch.float64).index_add_(0, b.tgt_rows, tok.double())
            out[rows] = per_seq.view(len(chunk), K).numpy()
    return out


@torch.no_grad()
def content_free_calibration(lm: FrozenLM, kv: KV | None, spec: TaskSpec) -> Calibration:
    """The task's label prior under prefix ``kv`` on the content-free inputs (:data:`CONTENT_FREE_INPUTS`):
    what it answers for a text that says nothing ("Calibrate Before Use", Zhao et al., 2021)."""
    return Calibration.from_probabilities(label_probabilities(lm, kv, spec, [Example(text, spec.labels[0]) for text in CONTENT_FREE_INPUTS]))


def label_probabilities(lm: FrozenLM, kv: KV | None, spec: TaskSpec, examples: list[Example]) -> np.ndarray:
    """``[N, K]`` label probabilities (normalised over the labels) of texts read whole, as the runtimes read them."""
    lp = label_logprobs(lm, kv, Encoder(lm, spec, None, prefix_len=prefix_length(kv)), examples)
    probs = np.exp(lp - lp.max(1, keepdims=True))
    return probs / probs.sum(1, keepdims=True)


#: :func:`train_prior_calibration` scores at most this many training texts for the prompt's mean answer (the split
#: is shuffled); the label frequencies count every row.
TRAIN_PRIOR_EXAMPLES = 1000


@torch.no_grad()
def train_prior_calibration(lm: FrozenLM, kv: KV | None, spec: TaskSpec, train: list[Example]) -> Calibration:
    """Prior matching on the training labels: the decision ``p(k | x) * q(k) / m(k)`` carries the training split's
    label frequencies ``q`` (add-one smoothed) in place of the prompt's mean answer ``m`` on those texts. A prompt
    trained with class weights answers as if the labels were balanced (``m`` near uniform); this gives the
    majority back its share, for accuracy, while each label keeps what its texts earn (Saerens et al., 2002, one
    step). Stored as ``log_prior = log(m / q)``, so every runtime applies it as it applies the content-free prior.
    """
    rows = train[:TRAIN_PRIOR_EXAMPLES]
    if not rows:
        raise EdgePromptError("the train_prior calibration needs training examples; use --calibration content_free or off.")
    counts = np.bincount([spec.labels.index(ex.label) for ex in train], minlength=len(spec.labels)) + 1.0  # all rows: labels are cheap
    # mean over rows of p / q is m / q: from_probabilities normalises it and takes the log
    return Calibration.from_probabilities(label_probabilities(lm, kv, spec, rows) / (counts / counts.sum()), CalibrationMethod.TRAIN_PRIOR.value, [])


@torch.no_grad()
def generation_report(lm: FrozenLM, kv: KV | None, enc: Encoder, examples: list[Example], batch_size: int = 16) -> dict:
    """Teacher-forced target NLL, perplexity and token accuracy of a generation task."""
    nll, correct, n = 0.0, 0, 0
    for s in range(0, len(examples), batch_size):
        b = collate([enc.example(ex) for ex in examples[s : s + batch_size]], lm.pad_token_id)
        h = text_hidden(lm, kv, b.input_ids, b.attention_mask)
        logits = logits_at(lm, h[b.tgt_rows, b.tgt_pos - 1]).float()
        nll += F.cross_entropy(logits, b.tgt_ids, reduction="sum").item()
        correct += (logits.argmax(-1) == b.tgt_ids).sum().item()
        n += len(b.tgt_ids)
    mean = nll / max(n, 1)
    return {"nll": round(mean, 4), "perplexity": round(float(np.exp(mean)), 3), "token_accuracy": round(correct / max(n, 1), 4), "tokens": n}


def evaluate_corrections(
    lm: FrozenLM,
    kv: KV | None,
    spec: TaskSpec,
    examples: list[Example],
    corrections: dict[str | None, Calibration | None],
    max_length: int | None = None,
    batch_size: int = 32,
) -> dict:
    """One :class:`ClassificationReport` per label-prior correction (``None``: uncorrected), from one scoring pass:
    a correction only shifts the ``[N, K]`` label log-probabilities, so each report equals :func:`evaluate` under
    ``replace(spec, calibration=c)``. Classification tasks only."""
    if spec.kind != TaskKind.CLASSIFICATION:
        raise EdgePromptError(f"a label-prior correction is for classification tasks; this task is {spec.kind}.")
    enc = Encoder(lm, spec, max_length, prefix_len=prefix_length(kv))
    lp = label_logprobs(lm, kv, enc, examples, batch_size)
    gold = np.array([enc.label_index[ex.label] for ex in examples], dtype=np.int64)
    return {name: classification_report(gold, replace(spec, calibration=c).decide(lp).argmax(1), spec.labels) for name, c in corrections.items()}


def evaluate(lm: FrozenLM, kv: KV | None, spec: TaskSpec, examples: list[Example], max_length: int | None = None, batch_size: int = 32):
    """A :class:`ClassificationReport` for a classification task, a dict for a generation task.

    ``max_length=None``: texts as the runtimes take them (see :class:`~edgeprompt.train.batching.Encoder`).
    """
    if spec.kind == TaskKind.CLASSIFICATION:  # calibrated when the task is
        return evaluate_corrections(lm, kv, spec, examples, {None: spec.calibration}, max_length, batch_size)[None]
    return generation_report(lm, kv, Encoder(lm, spec, max_length, prefix_len=prefix_length(kv)), examples, batch_size)
