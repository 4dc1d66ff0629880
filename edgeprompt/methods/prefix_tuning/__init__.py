"""Prefix tuning: a per-layer KV prefix, folded as ``kv_prefix [L, 2, kv_heads, P, head_dim]``.

The facts below are torch-free; the trainable module (with its reparameterisation) is in ``model.py``.
PEFT stores the folded prefix flat, ``[P, L*2*kv_heads*head_dim]`` ordered (layer, key/value, head, dim).
"""

from __future__ import annotations

import numpy as np

from edgeprompt.core.constants import TENSOR_KV_PREFIX
from edgeprompt.core.errors import BankError
from edgeprompt.core.methods import MethodSpec, PrefixKind, register_method
from edgeprompt.core.model_info import ModelInfo
from edgeprompt.methods.prefix_tuning.config import PrefixEncoder, PrefixInit, PrefixTuningConfig


def flat_to_kv(flat: np.ndarray, info: ModelInfo) -> np.ndarray:
    """PEFT's flat prefix ``[P, L*2*h*hd]`` (order: layer, key/value, head, dim) -> ``[L, 2, h, P, hd]``."""
    P = flat.shape[0]
    return np.ascontiguousarray(flat.reshape(P, info.num_layers, 2, info.num_kv_heads, info.head_dim).transpose(1, 2, 3, 0, 4))


def kv_to_flat(kv: np.ndarray) -> np.ndarray:
    """``[L, 2, h, P, hd]`` -> PEFT's flat ``[P, L*2*h*hd]``."""
    P = kv.shape[3]
    return np.ascontiguousarray(kv.transpose(3, 0, 1, 2, 4).reshape(P, -1))


class PrefixTuningSpec(MethodSpec):
    name = "prefix_tuning"
    aliases = ("prefix",)
    config_cls = PrefixTuningConfig
    tensor_key = TENSOR_KV_PREFIX
    dim_names = ("L", "2", "kv_heads", "P", "head_dim")
    prefix_kind = PrefixKind.KV
    peft_type = "PREFIX_TUNING"
    trainer_module = "edgeprompt.methods.prefix_tuning.model"

    def folded_shape(self, info: ModelInfo) -> tuple[int | None, ...]:
        return (info.num_layers, 2, info.num_kv_heads, None, info.head_dim)  # [L, 2, h, P, hd]

    def from_peft(self, weights: np.ndarray, P: int, info: ModelInfo) -> dict[str, np.ndarray]:
        width = info.num_layers * 2 * info.num_kv_heads * info.head_dim
        if weights.shape != (P, width):
            raise BankError(
                f"PEFT prefix is {list(weights.shape)}, this model needs the folded [P={P}, L*2*kv_heads*head_dim={width}] "
                f"(L={info.num_layers}, kv_heads={info.num_kv_heads}, head_dim={info.head_dim}). An unfolded "
                "prefix_projection checkpoint cannot be read: save it from PEFT with the prefix folded."
            )
        return {self.tensor_key: flat_to_kv(np.asarray(weights, dtype=np.float32), info)}

    def to_peft(self, tensors: dict[str, np.ndarray]) -> np.ndarray:
        return kv_to_flat(tensors[self.tensor_key])

    def peft_config(self, P: int, info: ModelInfo) -> dict:
        # PEFT saves the MLP's output, so the folded prefix is written with prefix_projection false
        return {
            "peft_type": self.peft_type,
            "num_virtual_tokens": P,
            "token_dim": info.num_kv_heads * info.head_dim,
            "num_attention_heads": info.num_kv_heads,
            "num_layers": info.num_layers,
            "prefix_projection": False,
        }


SPEC = register_method(PrefixTuningSpec())

__all__ = ["PrefixEncoder", "PrefixInit", "PrefixTuningConfig", "PrefixTuningSpec", "SPEC", "flat_to_kv", "kv_to_flat"]
