"""Prompt tuning: P trainable input embeddings, folded as ``prompt_embeddings [P, d]``."""

from ..constants import Method
from ..methods import MethodSpec, register_method
from .config import PromptInit, PromptTuningConfig
from .model import PromptTuningModule, check_folded, kv_from_folded

register_method(
    MethodSpec(
        name=Method.PROMPT_TUNING.value,
        config_cls=PromptTuningConfig,
        module_cls=PromptTuningModule,
        kv_from_folded=kv_from_folded,
        check_folded=check_folded,
    )
)

__all__ = ["PromptInit", "PromptTuningConfig", "PromptTuningModule"]
