from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ..io import EdgePromptError


class PrefixInit(str, Enum):
    TEXT = "text"  # start from the KV of the instruction text: training begins at the zero-shot prompt
    RANDOM = "random"  # PEFT's initialisation


@dataclass
class PrefixTuningConfig:
    """Prefix tuning (Li & Liang 2021): a KV prefix per layer, ``[L, 2, kv_heads, P, head_dim]``.

    With ``projection`` the prefix is ``base + MLP(E)``, ``E [P, encoder_dim]`` trainable, the MLP
    ``Linear(encoder_dim, encoder_hidden) -> tanh -> Linear(encoder_hidden, L*2*kv_heads*head_dim)``.
    The reparameterisation is folded away at save time: only the KV prefix is stored. Sizes follow
    the KV heads, not the attention heads (GQA).
    """

    num_virtual_tokens: int = field(default=20, metadata={"help": "P, the prefix length"})
    projection: bool = field(default=True, metadata={"help": "train through the reparameterisation MLP"})
    encoder_hidden_size: int = field(default=512, metadata={"help": "hidden width of the MLP"})
    init: PrefixInit = field(default=PrefixInit.TEXT, metadata={"help": "text or random"})
    init_text: str | None = field(default=None, metadata={"help": "text for init=text (default: the task instruction)"})

    def __post_init__(self):
        try:
            self.init = PrefixInit(self.init)
        except ValueError:
            raise EdgePromptError(f"prefix init {self.init!r} is not one of {[i.value for i in PrefixInit]}.") from None
        if not 1 <= int(self.num_virtual_tokens) <= 1024:
            raise EdgePromptError(f"num_virtual_tokens={self.num_virtual_tokens} must be between 1 and 1024.")
        if self.projection and int(self.encoder_hidden_size) < 1:
            raise EdgePromptError(f"encoder_hidden_size={self.encoder_hidden_size} must be positive.")
        self.num_virtual_tokens = int(self.num_virtual_tokens)
        self.encoder_hidden_size = int(self.encoder_hidden_size)

    def to_dict(self) -> dict:
        return {
            "num_virtual_tokens": self.num_virtual_tokens,
            "projection": self.projection,
            "encoder_hidden_size": self.encoder_hidden_size,
            "init": self.init.value,
            "init_text": self.init_text,
        }
