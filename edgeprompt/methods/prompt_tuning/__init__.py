"""Prompt tuning: P trainable input embeddings, folded as ``prompt_embeddings [P, d]``.

The facts below are torch-free; the trainable module is in ``model.py``.
"""

from __future__ import annotations

import numpy as np

from edgeprompt.core.constants import TENSOR_PROMPT_EMBEDDINGS
from edgeprompt.core.errors import BankError
from edgeprompt.core.methods import MethodSpec, PrefixKind, register_method
from edgeprompt.core.model_info import ModelInfo
from edgeprompt.methods.prompt_tuning.config import PromptInit, PromptTuningConfig


class PromptTuningSpec(MethodSpec):
    name = "prompt_tuning"
    aliases = ("prompt",)
    config_cls = PromptTuningConfig
    tensor_key = TENSOR_PROMPT_EMBEDDINGS
    dim_names = ("P", "d")
    prefix_kind = PrefixKind.EMBEDDINGS
    peft_type = "PROMPT_TUNING"
    trainer_module = "edgeprompt.methods.prompt_tuning.model"

    def folded_shape(self, info: ModelInfo) -> tuple[int | None, ...]:
        return (None, info.hidden_size)  # [P, d]

    def from_peft(self, weights: np.ndarray, P: int, info: ModelInfo) -> dict[str, np.ndarray]:
        if weights.shape != (P, info.hidden_size):
            raise BankError(f"PEFT prompt embeddings are {list(weights.shape)}, this model needs [P={P}, d={info.hidden_size}].")
        return {self.tensor_key: np.ascontiguousarray(weights, dtype=np.float32)}

    def to_peft(self, tensors: dict[str, np.ndarray]) -> np.ndarray:
        return tensors[self.tensor_key]

    def peft_config(self, P: int, info: ModelInfo) -> dict:
        return {"peft_type": self.peft_type, "num_virtual_tokens": P, "token_dim": info.hidden_size, "num_layers": info.num_layers}


SPEC = register_method(PromptTuningSpec())

__all__ = ["PromptInit", "PromptTuningConfig", "PromptTuningSpec", "SPEC"]
