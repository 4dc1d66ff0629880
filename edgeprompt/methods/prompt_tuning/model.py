"""Prompt tuning's training half (torch): the trainable ``[P, d]`` prompt and its KV through the frozen model."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgeprompt.core.constants import TENSOR_PROMPT_EMBEDDINGS
from edgeprompt.core.errors import EdgePromptError
from edgeprompt.core.methods import Trainer
from edgeprompt.methods.prompt_tuning.config import PromptInit, PromptTuningConfig
from edgeprompt.train.forward import KV, kv_from_embeddings
from edgeprompt.train.models import FrozenLM


def init_token_ids(ids: list[int], P: int) -> list[int]:
    """Repeat or cut ``ids`` to exactly P ids (PEFT's rule for text initialisation)."""
    if not ids:
        raise EdgePromptError("the initialisation text encodes to no tokens; pass --init-text or another --init.")
    return (ids * (P // len(ids) + 1))[:P]


class PromptTuningModule(nn.Module):
    """Trainable prompt ``[P, d]``; its KV prefix is computed by the frozen model itself."""

    def __init__(self, config: PromptTuningConfig, lm: FrozenLM, init_text: str = "", label_text: str = "", seed: int = 0):
        super().__init__()
        self.config = config
        P, emb = config.num_virtual_tokens, lm.embeddings.detach()
        g = torch.Generator().manual_seed(seed)
        if config.init == PromptInit.TEXT:
            ids = init_token_ids(lm.encode(config.init_text or init_text), P)
            start = emb[ids].clone()
        elif config.init == PromptInit.LABELS:
            ids = init_token_ids(lm.encode(label_text), P)
            start = emb[ids].clone()
        elif config.init == PromptInit.VOCAB:
            ids = torch.randint(0, emb.shape[0], (P,), generator=g)
            start = emb[ids].clone()
        else:
            start = torch.randn(P, emb.shape[1], generator=g) * emb.std()
        self.prompt = nn.Parameter(start.float())  # (P, d)

    def param_groups(self, lr: float) -> list[dict]:
        return [{"params": [self.prompt], "lr": lr, "base_lr": lr}]

    def kv(self, lm: FrozenLM) -> KV:
        return kv_from_embeddings(lm, self.prompt)

    def fold(self, lm: FrozenLM) -> dict[str, np.ndarray]:
        return {TENSOR_PROMPT_EMBEDDINGS: self.prompt.detach().float().cpu().numpy().copy()}


def kv_from_folded(lm: FrozenLM, tensors: dict[str, np.ndarray]) -> KV:
    return kv_from_embeddings(lm, torch.from_numpy(tensors[TENSOR_PROMPT_EMBEDDINGS]).float())


TRAINER = Trainer(module_cls=PromptTuningModule, kv_from_folded=kv_from_folded)
