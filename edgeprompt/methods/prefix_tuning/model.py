"""Prefix tuning's training half (torch): the trainable prefix and its reparameterisation, folded on save."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgeprompt.core.constants import TENSOR_KV_PREFIX
from edgeprompt.core.methods import Trainer
from edgeprompt.core.model_info import ModelInfo
from edgeprompt.methods.prefix_tuning.config import PrefixEncoder, PrefixInit, PrefixTuningConfig
from edgeprompt.methods.prompt_tuning.model import init_token_ids
from edgeprompt.train.forward import KV, kv_from_embeddings, kv_from_tensor, kv_to_tensor
from edgeprompt.train.models import FrozenLM


def flat_to_kv(flat: torch.Tensor, info: ModelInfo) -> torch.Tensor:
    """PEFT's flat prefix ``[P, L*2*h*hd]`` (order: layer, key/value, head, dim) -> ``[L, 2, h, P, hd]``."""
    P = flat.shape[0]
    return flat.view(P, info.num_layers, 2, info.num_kv_heads, info.head_dim).permute(1, 2, 3, 0, 4)


def kv_to_flat(kv: torch.Tensor) -> torch.Tensor:
    """``[L, 2, h, P, hd]`` -> PEFT's flat ``[P, L*2*h*hd]``."""
    P = kv.shape[3]
    return kv.permute(3, 0, 1, 2, 4).reshape(P, -1)


class PrefixTuningModule(nn.Module):
    """Trainable KV prefix, trained through a reparameterisation that is folded away on save."""

    def __init__(self, config: PrefixTuningConfig, lm: FrozenLM, init_text: str = "", label_text: str = "", seed: int = 0):
        super().__init__()
        self.config, self.info = config, lm.info
        P, info = config.num_virtual_tokens, lm.info
        width = info.num_layers * 2 * info.num_kv_heads * info.head_dim
        torch.manual_seed(seed)
        text_emb = None
        if config.init == PrefixInit.TEXT:
            ids = init_token_ids(lm.encode(config.init_text or init_text), P)
            text_emb = lm.embeddings[ids].detach().float().clone()  # (P, d)
        self.through_model = config.projection and config.encoder == PrefixEncoder.MODEL_MLP
        if self.through_model:
            # E starts at the instruction's embeddings (or random tokens' scale), like prompt tuning.
            start = text_emb if text_emb is not None else torch.randn(P, info.hidden_size) * lm.embeddings.std()
            self.embedding = nn.Parameter(start)
        elif config.projection:
            base = torch.zeros(P, width)
            if text_emb is not None:
                with torch.no_grad():
                    base = kv_to_flat(kv_to_tensor(kv_from_embeddings(lm, text_emb)))  # (P, width)
            self.register_buffer("base", base, persistent=True)
            self.embedding = nn.Parameter(torch.randn(P, info.hidden_size))
        else:
            base = torch.randn(P, width) * 0.02
            if text_emb is not None:
                with torch.no_grad():
                    base = kv_to_flat(kv_to_tensor(kv_from_embeddings(lm, text_emb)))
            self.flat = nn.Parameter(base)
        if config.projection:
            self.mlp = nn.Sequential(
                nn.Linear(info.hidden_size, config.encoder_hidden_size),
                nn.Tanh(),
                nn.Linear(config.encoder_hidden_size, width),
            )
            if config.init == PrefixInit.TEXT or self.through_model:
                # Zero output layer: training starts exactly at the text's KV and learns a residual.
                nn.init.zeros_(self.mlp[2].weight)
                nn.init.zeros_(self.mlp[2].bias)
        self._lm = [lm]  # not a submodule: the frozen model is no parameter of ours

    def param_groups(self, lr: float) -> list[dict]:
        """AdamW groups; with encoder=model+mlp the MLP learns at ``lr * mlp_lr_ratio``."""
        if self.through_model:
            return [
                {"params": [self.embedding], "lr": lr, "base_lr": lr},
                {"params": list(self.mlp.parameters()), "lr": lr * self.config.mlp_lr_ratio, "base_lr": lr * self.config.mlp_lr_ratio},
            ]
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr, "base_lr": lr}]

    def flat_prefix(self) -> torch.Tensor:
        """The prefix in PEFT's flat layout ``[P, L*2*h*hd]``."""
        if self.through_model:
            lm = self._lm[0]
            return kv_to_flat(kv_to_tensor(kv_from_embeddings(lm, self.embedding))) + self.mlp(self.embedding)
        if self.config.projection:
            return self.base + self.mlp(self.embedding)
        return self.flat

    def kv(self, lm: FrozenLM) -> KV:
        return kv_from_tensor(flat_to_kv(self.flat_prefix(), self.info))

    def fold(self, lm: FrozenLM) -> dict[str, np.ndarray]:
        with torch.no_grad():
            kv = flat_to_kv(self.flat_prefix(), self.info).contiguous()
        return {TENSOR_KV_PREFIX: kv.float().cpu().numpy().copy()}


def kv_from_folded(lm: FrozenLM, tensors: dict[str, np.ndarray]) -> KV:
    return kv_from_tensor(torch.from_numpy(tensors[TENSOR_KV_PREFIX]).float())


TRAINER = Trainer(module_cls=PrefixTuningModule, kv_from_folded=kv_from_folded)
