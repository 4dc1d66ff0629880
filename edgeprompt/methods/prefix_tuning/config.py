from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from edgeprompt.core.errors import EdgePromptError
from edgeprompt.core.methods import PromptLearningConfig


class PrefixEncoder(str, Enum):
    MODEL_MLP = "model+mlp"  # KV = frozen model's KV of trainable embeddings E + MLP(E) (default)
    MLP = "mlp"  # KV = base + MLP(E), E free: Li & Liang's and PEFT's reparameterisation


class PrefixInit(str, Enum):
    TEXT = "text"  # start from the KV of the instruction text: training begins at the zero-shot prompt
    RANDOM = "random"  # PEFT's initialisation


@dataclass
class PrefixTuningConfig(PromptLearningConfig):
    """Prefix tuning (Li & Liang 2021): a KV prefix per layer, ``[L, 2, kv_heads, P, head_dim]``.

    The prefix is trained through a reparameterisation that is folded away at save time (only the
    KV prefix is stored), with ``E [P, d]`` trainable and the MLP
    ``Linear(d, encoder_hidden) -> tanh -> Linear(encoder_hidden, L*2*kv_heads*head_dim)``:

    * ``encoder="model+mlp"`` (default): ``KV = KV_frozen_model(E) + MLP(E)``. The frozen model is
      part of the encoder, so the prefix moves the way real text's KV moves (its RMSNorms give
      every dimension a fitting scale), and the MLP adds per-layer freedom that no input
      embedding can express. The MLP's output layer starts at zero and learns at
      ``lr * mlp_lr_ratio``. Measured in benchmarks/sweep.md: the classic form below barely moves
      off zero-shot within a few hundred steps on SmolLM2.
    * ``encoder="mlp"``: ``KV = base + MLP(E)`` (Li & Liang; PEFT's ``prefix_projection``).
    * ``projection=False``: the KV prefix itself is the parameter.

    Sizes follow the KV heads, not the attention heads (GQA).
    """

    init: PrefixInit = field(default=PrefixInit.TEXT, metadata={"help": "text or random"})
    projection: bool = field(default=True, metadata={"help": "train through the reparameterisation MLP"})
    encoder_hidden_size: int = field(default=512, metadata={"help": "hidden width of the MLP"})
    encoder: PrefixEncoder = field(default=PrefixEncoder.MODEL_MLP, metadata={"help": "model+mlp or mlp"})
    mlp_lr_ratio: float = field(default=1e-3, metadata={"help": "the MLP's learning rate as a fraction of lr (encoder=model+mlp)"})

    init_enum = PrefixInit

    def default_lr(self) -> float:
        """model+mlp: 0.1, like a prompt. benchmarks/sweep_small.md: on the small skewed sets 0.3 (the tweets
        sweep's pick) swings and falls (dev macro-F1 0.14-0.43 on drug reviews, 0.80-0.96 on SMS spam) where 0.1
        holds (0.52-0.58; 0.96-1.00) and 0.03 is no better (0.50-0.58; 0.84-1.00); on the tweets 0.1 is 2.7 points under 0.3 at 120 steps (65.0% vs 67.7%
        on 300 dev tweets, inside their spread). The classic MLP form needs a small rate (benchmarks/sweep.md,
        3e-4: 64.7% dev at 80 steps, against 39-43% at 3e-3..3e-2)."""
        return 0.1 if self.projection and self.encoder == PrefixEncoder.MODEL_MLP else 3e-4

    def __post_init__(self):
        super().__post_init__()
        if self.projection and int(self.encoder_hidden_size) < 1:
            raise EdgePromptError(f"encoder_hidden_size={self.encoder_hidden_size} must be positive.")
        self.encoder_hidden_size = int(self.encoder_hidden_size)
        try:
            self.encoder = PrefixEncoder(self.encoder)
        except ValueError:
            raise EdgePromptError(f"prefix encoder {self.encoder!r} is not one of {[e.value for e in PrefixEncoder]}.") from None
        if not 0 < float(self.mlp_lr_ratio) <= 10:
            raise EdgePromptError(f"mlp_lr_ratio={self.mlp_lr_ratio} must be in (0, 10].")
