"""What a task is: its kind, its text template, its instruction and its labels (torch-free).

Tokenization is defined here once, piecewise, so that training, evaluation and the on-device
runtimes produce the same ids::

    ids = encode(head) + encode(text)[:max_text_tokens] + encode(tail) [+ encode(verbalizer)]

The input rule (:func:`input_ids`), the same for eval, the export's parity gate and every runtime:
no special tokens (no BOS); the text whole; a text that does not fit the context (after the task's P
prefix positions and the tokens reserved for the answer) is refused, or, when asked, cut from its end
so that it fits exactly, the template kept. Only training may cut texts shorter, for speed
(``--max-length``); the task's manifest records that cut (``training.train_config.max_length``).

where ``template = head + "{text}" + tail``. A space that ends ``head`` is moved to the front of
the text, so "Tweet: {text}" tokenizes as a model expects (" hello", not " " + "hello").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from edgeprompt.core.constants import TaskKeys, TaskKind
from edgeprompt.core.errors import EdgePromptError, RequestError

Encoder = Callable[[str], list]


#: The content-free inputs of "Calibrate Before Use" (Zhao et al., 2021): texts that say nothing, so what the
#: model answers for them is its bias toward each label under this task's prompt and template.
CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Over the last axis, in float64 (label decisions are taken on these)."""
    s = np.asarray(x, dtype=np.float64)
    s = s - s.max(-1, keepdims=True)
    return s - np.log(np.exp(s).sum(-1, keepdims=True))


@dataclass
class Calibration:
    """A label-prior correction, applied the same way by eval, the parity gate and every runtime.

    A decision uses ``log_softmax(scores) - log_prior`` over the labels. ``method`` says where ``log_prior`` came
    from (:class:`~edgeprompt.core.constants.CalibrationMethod`): ``content_free``, the log of the model's mean
    probability of each label on the content-free ``inputs``, so a label the prompt favours whatever the text
    loses that favour ("Calibrate Before Use", Zhao et al., 2021); ``train_prior``, its mean answer on the
    training texts over their label frequencies (``inputs`` empty).
    """

    log_prior: list[float]
    method: str = "content_free"
    inputs: list[str] = field(default_factory=lambda: list(CONTENT_FREE_INPUTS))

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated label log-probabilities ``[..., K]`` from label scores ``[..., K]`` (any log scale)."""
        return log_softmax(log_softmax(scores) - np.asarray(self.log_prior, dtype=np.float64))

    @classmethod
    def from_probabilities(cls, probs: np.ndarray, method: str = "content_free", inputs: Sequence[str] = CONTENT_FREE_INPUTS) -> "Calibration":
        """From label probabilities ``[n, K]`` on the ``n`` content-free inputs (rows sum to 1)."""
        mean = np.asarray(probs, dtype=np.float64).mean(0)
        mean = np.clip(mean / mean.sum(), 1e-12, None)
        return cls([float(x) for x in np.log(mean / mean.sum())], method, list(inputs))

    def to_dict(self) -> dict:
        return {"method": self.method, "inputs": list(self.inputs), "log_prior": [round(x, 6) for x in self.log_prior]}

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        return cls([float(x) for x in d["log_prior"]], d.get("method", "content_free"), list(d.get("inputs", CONTENT_FREE_INPUTS)))


@dataclass
class TaskSpec:
    """A task's template and labels.

    Args:
        kind: classification (labels + verbalizers) or generation (a target text).
        template: contains ``{text}`` exactly once.
        instruction: the plain-language instruction; used by the zero-shot baseline and as the
            text that initialises a prompt with ``init="text"``.
        labels: ordered label names (classification).
        verbalizers: the text the model should produce for each label, default ``" " + label``.
        calibration: a label-prior correction (:class:`Calibration`), or none: labels decided by their scores.
    """

    kind: TaskKind = TaskKind.CLASSIFICATION
    template: str = "{text}"
    instruction: str = ""
    labels: list[str] = field(default_factory=list)
    verbalizers: dict[str, str] = field(default_factory=dict)
    calibration: Calibration | None = None

    def __post_init__(self):
        self.kind = TaskKind(self.kind)
        if self.template.count("{text}") != 1:
            raise EdgePromptError(f"template {self.template!r} must contain '{{text}}' exactly once.")
        if self.kind == TaskKind.CLASSIFICATION:
            if len(self.labels) < 2:
                raise EdgePromptError(f"a classification task needs at least two labels, got {self.labels!r}.")
            if len(set(self.labels)) != len(self.labels):
                raise EdgePromptError(f"labels repeat: {self.labels!r}.")
            extra = set(self.verbalizers) - set(self.labels)
            if extra:
                raise EdgePromptError(f"verbalizers given for unknown labels {sorted(extra)}; labels are {self.labels}.")
            self.verbalizers = {lab: self.verbalizers.get(lab, " " + lab) for lab in self.labels}
            if len(set(self.verbalizers.values())) != len(self.labels):
                raise EdgePromptError(f"two labels share a verbalizer: {self.verbalizers!r}.")
        elif self.labels:
            raise EdgePromptError("a generation task takes no labels (its targets are texts).")
        if self.calibration is not None:
            lp = self.calibration.log_prior
            if len(lp) != len(self.labels) or not np.isfinite(lp).all():
                raise EdgePromptError(f"calibration: log_prior needs one finite value per label ({len(self.labels)}), got {lp!r}.")

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """The label log-probabilities ``[..., K]`` a decision is taken on: calibrated when the task is."""
        return self.calibration.apply(scores) if self.calibration is not None else log_softmax(scores)

    def split_template(self) -> tuple[str, str, bool]:
        head, tail = self.template.split("{text}")
        lead_space = head.endswith(" ")
        return (head[:-1] if lead_space else head), tail, lead_space

    def encode_input(self, encode: Encoder, text: str, max_text_tokens: int | None = None) -> list[int]:
        """Token ids of the templated input (no BOS, no label)."""
        head, tail, lead_space = self.split_template()
        text_ids = encode((" " if lead_space else "") + text)
        if max_text_tokens is not None:
            text_ids = text_ids[:max_text_tokens]
        return (encode(head) if head else []) + text_ids + (encode(tail) if tail else [])

    def verbalizer_ids(self, encode: Encoder) -> list[list[int]]:
        """Token ids of each label's verbalizer, in label order; must be non-empty and distinct."""
        out = [encode(self.verbalizers[lab]) for lab in self.labels]
        for lab, ids in zip(self.labels, out):
            if not ids:
                raise EdgePromptError(f"the verbalizer of label {lab!r} ({self.verbalizers[lab]!r}) encodes to no tokens.")
        if len({tuple(x) for x in out}) != len(out):
            raise EdgePromptError(f"two verbalizers encode to the same tokens: {self.verbalizers!r}.")
        return out

    @classmethod
    def from_manifest(cls, m: dict) -> "TaskSpec":
        """The spec a task manifest records (the bank's and the runtime's one reader)."""
        return cls(
            kind=m[TaskKeys.KIND],
            template=m[TaskKeys.TEMPLATE],
            instruction=m.get(TaskKeys.INSTRUCTION, ""),
            labels=m.get(TaskKeys.LABELS) or [],
            verbalizers=m.get(TaskKeys.VERBALIZERS) or {},
            calibration=Calibration.from_dict(m[TaskKeys.CALIBRATION]) if m.get(TaskKeys.CALIBRATION) else None,
        )


def fit_text_budget(spec: TaskSpec, encode: Encoder, max_length: int, target_len: int) -> int:
    """How many text tokens fit when the whole sequence may hold ``max_length`` tokens."""
    head, tail, _ = spec.split_template()
    fixed = len(encode(head)) if head else 0
    fixed += len(encode(tail)) if tail else 0
    budget = max_length - fixed - target_len
    if budget < 1:
        raise EdgePromptError(
            f"max_length={max_length} leaves no room for text: the template takes {fixed} tokens and the label {target_len}; raise --max-length."
        )
    return budget


#: The input rule, as recorded in a task's manifest (``TaskKeys.INPUT_RULE``).
INPUT_RULE = {
    "special_tokens": "none (no BOS)",
    "text": "whole; cut from its end only to fit the context, and only when asked (truncate)",
    "context": "the runtime's n_ctx (llama.cpp) or the model's trained context (ONNX, torch eval)",
}


def input_ids(spec: TaskSpec | None, encode: Encoder, text: str, context: int, prefix_len: int = 0, reserve: int = 0, truncate: bool = False) -> list[int]:
    """Token ids of a request's input: ``text`` through the task's template (raw for ``spec=None``).

    The input may take ``context - prefix_len - reserve`` positions (``reserve``: the answer's tokens). A
    longer input raises :class:`RequestError`, or with ``truncate`` loses text tokens from its end to fit exactly.
    """
    room = context - prefix_len - reserve
    ids = spec.encode_input(encode, text) if spec is not None else list(encode(text))
    if not ids:
        raise RequestError("the text encodes to no tokens; pass a non-empty text.")
    if len(ids) <= room:
        return ids
    fixed = len(spec.encode_input(encode, text, max_text_tokens=0)) if spec is not None else 0
    if not truncate or room - fixed < 1:
        raise RequestError(
            f"the input is {len(ids)} tokens; with the task's {prefix_len}-token prefix and {reserve} tokens for the answer "
            f"it exceeds the context of {context}. Shorten the text, or pass truncate=True (CLI: --truncate)."
        )
    return spec.encode_input(encode, text, max_text_tokens=room - fixed) if spec is not None else ids[:room]
