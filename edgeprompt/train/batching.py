"""Examples -> right-padded id tensors with the positions of the tokens to predict."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from edgeprompt.core.constants import TaskKind
from edgeprompt.core.data import Example
from edgeprompt.core.tasks import TaskSpec, fit_text_budget, input_ids
from edgeprompt.train.models import FrozenLM


@dataclass(frozen=True)
class Encoded:
    ids: tuple[int, ...]  # input ids followed by the target ids
    n_input: int  # ids[n_input:] are the target tokens (label verbalizer or target text + EOS)


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) right-padded
    attention_mask: torch.Tensor  # (B, T)
    tgt_rows: torch.Tensor  # (N,) row of each target token
    tgt_pos: torch.Tensor  # (N,) its position; it is predicted by the hidden state at tgt_pos - 1
    tgt_ids: torch.Tensor  # (N,)


class Encoder:
    """Encodes a task's examples for one model, caching the verbalizer ids and the text budget.

    ``max_length``: training's cut (inputs and targets fit in it, for speed). ``None``: the runtimes'
    input rule (:func:`edgeprompt.core.tasks.input_ids`): the text whole, cut only to fit the model's
    context after ``prefix_len`` prefix positions and the answer. Eval uses ``None``.
    """

    def __init__(self, lm: FrozenLM, spec: TaskSpec, max_length: int | None, prefix_len: int = 0):
        self.lm, self.spec, self.max_length = lm, spec, max_length
        context = int(getattr(lm.model.config, "max_position_embeddings", 2048))
        self.encode = lru_cache(maxsize=None)(lambda s: tuple(lm.encode(s)))
        enc = lambda s: list(self.encode(s))  # noqa: E731
        if spec.kind == TaskKind.CLASSIFICATION:
            self.verbalizer_ids = [tuple(v) for v in spec.verbalizer_ids(enc)]
            self.label_index = {lab: i for i, lab in enumerate(spec.labels)}
            longest = max(len(v) for v in self.verbalizer_ids)
        else:
            self.verbalizer_ids, self.label_index = [], {}
            longest = max(1, (max_length or context) // 4)  # generation targets may take up to a quarter
        self.text_budget = fit_text_budget(spec, enc, max_length, longest) if max_length is not None else None
        self.context, self.prefix_len, self.reserve = context, prefix_len, longest  # the input rule's budget
        self.target_budget = longest

    def input_ids(self, text: str) -> list[int]:
        enc = lambda s: list(self.encode(s))  # noqa: E731
        if self.text_budget is None:
            return input_ids(self.spec, enc, text, self.context, self.prefix_len, self.reserve, truncate=True)
        return self.spec.encode_input(enc, text, self.text_budget)

    def target_ids(self, ex: Example) -> tuple[int, ...]:
        if self.spec.kind == TaskKind.CLASSIFICATION:
            return self.verbalizer_ids[self.label_index[ex.label]]
        tgt = list(self.encode(ex.label))[: self.target_budget - 1]
        eos = self.lm.eos_token_id
        return tuple(tgt + ([eos] if eos is not None else []))

    def example(self, ex: Example, target: tuple[int, ...] | None = None) -> Encoded:
        inp = self.input_ids(ex.text)
        tgt = self.target_ids(ex) if target is None else target
        return Encoded(tuple(inp) + tuple(tgt), len(inp))


def sequence_lengths(lm: FrozenLM, spec: TaskSpec, examples: list[Example]) -> list[int]:
    """The ``max_length`` at which training keeps each example whole: its templated input and, for a
    classification, the longest verbalizer (each is scored at the same place). A generation example's budget
    reserves a quarter of ``max_length`` for the target (:class:`Encoder`), so its figure is the least
    ``L`` with ``L - L // 4`` covering the input and ``L // 4`` the target and its EOS."""
    enc = Encoder(lm, spec, None)
    if spec.kind == TaskKind.CLASSIFICATION:
        label = max(len(v) for v in enc.verbalizer_ids)
        return [len(enc.input_ids(ex.text)) + label for ex in examples]
    out = []
    for ex in examples:
        n_in, n_tgt = len(enc.input_ids(ex.text)), len(enc.encode(ex.label)) + 1
        L = max(n_in + n_tgt, 4 * n_tgt)
        while L - L // 4 < n_in:
            L += 1
        out.append(L)
    return out


def collate(encs: list[Encoded], pad_id: int) -> Batch:
    T = max(len(e.ids) for e in encs)
    ids = torch.full((len(encs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encs), T), dtype=torch.long)
    rows, pos, tgt = [], [], []
    for b, e in enumerate(encs):
        ids[b, : len(e.ids)] = torch.tensor(e.ids)
        mask[b, : len(e.ids)] = 1
        for p in range(e.n_input, len(e.ids)):
            rows.append(b)
            pos.append(p)
            tgt.append(e.ids[p])
    return Batch(ids, mask, torch.tensor(rows), torch.tensor(pos), torch.tensor(tgt))
