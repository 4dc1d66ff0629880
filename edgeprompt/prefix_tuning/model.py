from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..constants import TENSOR_KV_PREFIX
from ..io import EdgePromptError
from ..models import FrozenLM, ModelInfo
from ..prefix import KV, kv_from_embeddings, kv_from_tensor, kv_to_tensor
from ..prompt_tuning.model import init_token_ids
from .config import PrefixInit, PrefixTuningConfig


def flat_to_kv(flat: torch.Tensor, info: ModelInfo) -> torch.Tensor:
    """PEFT's flat prefix ``[P, L*2*h*hd]`` (order: layer, key/value, head, dim) -> ``[L, 2, h, P, hd]``."""
    P = flat.shape[0]
    return flat.view(P, info.num_layers, 2, info.num_kv_heads, info.head_dim).permute(1, 2, 3, 0, 4)


def kv_to_flat(kv: torch.Tensor) -> torch.Tensor:
    """``[L, 2, h, P, hd]`` -> PEFT's flat ``[P, L*2*h*hd]``."""
    P = kv.shape[3]
    return kv.permute(3, 0, 1, 2, 4).reshape(P, -1)


class PrefixTuningModule(nn.Module):
    """Trainable KV prefix, optionally reparameterised through an MLP (folded away on save)."""

    def __init__(self, config: PrefixTuningConfig, lm: FrozenLM, init_text: str = "", label_text: str = "", seed: int = 0):
        super().__init__()
        self.config, self.info = config, lm.info
        P, info = config.num_virtual_tokens, lm.info
        width = info.num_layers * 2 * info.num_kv_heads * info.head_dim
        torch.manual_seed(seed)
        if config.init == PrefixInit.TEXT:
            ids = init_token_ids(lm.encode(config.init_text or init_text), P)
            with torch.no_grad():
                base = kv_to_flat(kv_to_tensor(kv_from_embeddings(lm, lm.embeddings[ids].float())))  # (P, width)
        else:
            base = torch.zeros(P, width)
        if config.projection:
            self.register_buffer("base", base.clone(), persistent=True)
            self.embedding = nn.Embedding(P, info.hidden_size)
            self.mlp = nn.Sequential(
                nn.Linear(info.hidden_size, config.encoder_hidden_size),
                nn.Tanh(),
                nn.Linear(config.encoder_hidden_size, width),
            )
            if config.init == PrefixInit.TEXT:
                # Zero output layer: training starts exactly at the instruction's KV and learns a residual.
                nn.init.zeros_(self.mlp[2].weight)
                nn.init.zeros_(self.mlp[2].bias)
        else:
            if config.init == PrefixInit.RANDOM:
                base = torch.randn(P, width) * 0.02
            self.flat = nn.Parameter(base.clone())

    def flat_prefix(self) -> torch.Tensor:
        """The prefix in PEFT's flat layout ``[P, L*2*h*hd]``."""
        if self.config.projection:
            return self.base + self.mlp(self.embedding.weight)
        return self.flat

    def kv(self, lm: FrozenLM) -> KV:
        return kv_from_tensor(flat_to_kv(self.flat_prefix(), self.info))

    def fold(self, lm: FrozenLM) -> dict[str, np.ndarray]:
        with torch.no_grad():
            kv = flat_to_kv(self.flat_prefix(), self.info).contiguous()
        return {TENSOR_KV_PREFIX: kv.float().cpu().numpy().copy()}


def kv_from_folded(lm: FrozenLM, tensors: dict[str, np.ndarray]) -> KV:
    return kv_from_tensor(torch.from_numpy(tensors[TENSOR_KV_PREFIX]).float())


def check_folded(tensors: dict[str, np.ndarray], info: ModelInfo) -> None:
    t = tensors.get(TENSOR_KV_PREFIX)
    if t is None:
        raise EdgePromptError(f"a prefix-tuning task needs the tensor {TENSOR_KV_PREFIX!r}; found {sorted(tensors)}.")
    want = (info.num_layers, 2, info.num_kv_heads, None, info.head_dim)
    if t.ndim != 5 or any(w is not None and w != s for w, s in zip(want, t.shape)):
        raise EdgePromptError(
            f"KV prefix has shape {list(t.shape)}, but this model needs [L={info.num_layers}, 2, "
            f"kv_heads={info.num_kv_heads}, P, head_dim={info.head_dim}]."
        )
