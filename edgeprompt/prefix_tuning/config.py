from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ..io import EdgePromptError
from ..methods import PromptLearningConfig


class PrefixInit(str, Enum):
    TEXT = "text"  # start from the KV of the instruction text: training begins at the zero-shot prompt
    RANDOM = "random"  # PEFT's initialisation


@dataclass
class PrefixTuningConfig(PromptLearningConfig):
    """Prefix tuning (Li & Liang 2021): a KV prefix per layer, ``[L, 2, kv_heads, P, head_dim]``.

    With ``projection`` the prefix is ``base + MLP(E)``, ``E [P, d]`` trainable, the MLP
    ``Linear(d, encoder_hidden) -> tanh -> Linear(encoder_hidden, L*2*kv_heads*head_dim)``.
    The reparameterisation is folded away at save time: only the KV prefix is stored. Sizes follow
    the KV heads, not the attention heads (GQA).
    """

    init: PrefixInit = field(default=PrefixInit.TEXT, metadata={"help": "text or random"})
    projection: bool = field(default=True, metadata={"help": "train through the reparameterisation MLP"})
    encoder_hidden_size: int = field(default=512, metadata={"help": "hidden width of the MLP"})

    init_enum = PrefixInit

    def __post_init__(self):
        super().__post_init__()
        if self.projection and int(self.encoder_hidden_size) < 1:
            raise EdgePromptError(f"encoder_hidden_size={self.encoder_hidden_size} must be positive.")
        self.encoder_hidden_size = int(self.encoder_hidden_size)
