from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from edgeprompt.core.methods import PromptLearningConfig


class PromptInit(str, Enum):
    TEXT = "text"  # the task instruction's token embeddings, repeated to P (PEFT's best practice)
    LABELS = "labels"  # the label verbalizers' token embeddings, repeated to P
    VOCAB = "vocab"  # embeddings of P tokens sampled from the vocabulary
    RANDOM = "random"  # N(0, sigma^2) with sigma the embedding matrix's std


@dataclass
class PromptTuningConfig(PromptLearningConfig):
    """Prompt tuning (Lester et al. 2021): P trainable virtual-token embeddings ``[P, d]``."""

    init: PromptInit = field(default=PromptInit.TEXT, metadata={"help": "text, labels, vocab or random"})

    init_enum = PromptInit

    def default_lr(self) -> float:
        # benchmarks/sweep.md: 0.1, 0.3 and 1.0 within noise on the tweets; 0.1 best at 120 steps. benchmarks/sweep_small.md:
        # on drug reviews 0.03 and 0.3 are no better (best dev macro-F1 0.551 and 0.557, against 0.578 at 0.1)
        return 0.1
