from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ..io import EdgePromptError


class PromptInit(str, Enum):
    TEXT = "text"  # the task instruction's token embeddings, repeated to P (PEFT's best practice)
    LABELS = "labels"  # the label verbalizers' token embeddings, repeated to P
    VOCAB = "vocab"  # embeddings of P tokens sampled from the vocabulary
    RANDOM = "random"  # N(0, sigma^2) with sigma the embedding matrix's std


@dataclass
class PromptTuningConfig:
    """Prompt tuning (Lester et al. 2021): P trainable virtual-token embeddings ``[P, d]``."""

    num_virtual_tokens: int = field(default=20, metadata={"help": "P, the number of virtual tokens"})
    init: PromptInit = field(default=PromptInit.TEXT, metadata={"help": "text, labels, vocab or random"})
    init_text: str | None = field(default=None, metadata={"help": "text for init=text (default: the task instruction)"})

    def __post_init__(self):
        try:
            self.init = PromptInit(self.init)
        except ValueError:
            raise EdgePromptError(f"prompt init {self.init!r} is not one of {[i.value for i in PromptInit]}.") from None
        if not 1 <= int(self.num_virtual_tokens) <= 1024:
            raise EdgePromptError(f"num_virtual_tokens={self.num_virtual_tokens} must be between 1 and 1024.")
        self.num_virtual_tokens = int(self.num_virtual_tokens)

    def to_dict(self) -> dict:
        return {"num_virtual_tokens": self.num_virtual_tokens, "init": self.init.value, "init_text": self.init_text}
