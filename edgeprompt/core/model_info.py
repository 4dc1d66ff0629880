"""The frozen model a prompt belongs to: its shapes and its fingerprint (torch-free).

A prompt is only meaningful on the model it was trained for. Banks, tasks and bundles record a
:class:`ModelInfo`; everything that loads a prompt checks it against the model at hand.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from edgeprompt.core.constants import BaseModelKeys
from edgeprompt.core.errors import BankError, EdgePromptError


@dataclass(frozen=True)
class ModelInfo:
    """The shapes a prompt depends on, plus the fingerprint of the frozen model."""

    fingerprint: str
    name: str
    architecture: str
    hidden_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int

    def to_dict(self) -> dict[str, Any]:
        K = BaseModelKeys
        return {
            K.FINGERPRINT: self.fingerprint,
            K.NAME: self.name,
            K.ARCHITECTURE: self.architecture,
            K.HIDDEN_SIZE: self.hidden_size,
            K.NUM_LAYERS: self.num_layers,
            K.NUM_KV_HEADS: self.num_kv_heads,
            K.HEAD_DIM: self.head_dim,
            K.VOCAB_SIZE: self.vocab_size,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelInfo":
        K = BaseModelKeys
        try:
            return cls(
                fingerprint=d[K.FINGERPRINT],
                name=d.get(K.NAME, "?"),
                architecture=d.get(K.ARCHITECTURE, "?"),
                hidden_size=int(d[K.HIDDEN_SIZE]),
                num_layers=int(d[K.NUM_LAYERS]),
                num_kv_heads=int(d[K.NUM_KV_HEADS]),
                head_dim=int(d[K.HEAD_DIM]),
                vocab_size=int(d[K.VOCAB_SIZE]),
            )
        except KeyError as e:
            raise EdgePromptError(f"base-model record lacks the key {e}") from None
        except (TypeError, ValueError) as e:
            raise EdgePromptError(f"base-model record has a value of the wrong type ({e})") from None

    def check_compatible(self, other: "ModelInfo", what: str) -> None:
        """Raise naming both sides when ``other`` (e.g. a bank task) was made for another model."""
        for attr in ("hidden_size", "num_layers", "num_kv_heads", "head_dim"):
            a, b = getattr(self, attr), getattr(other, attr)
            if a != b:
                raise BankError(
                    f"{what} was made for a model with {attr}={b}, but this model ({self.name}) has {attr}={a}; use the base model it was trained for."
                )
        if self.fingerprint != other.fingerprint:
            raise BankError(
                f"{what} was trained for base model {other.fingerprint[:16]} ({other.name}), but this model "
                f"({self.name}) has fingerprint {self.fingerprint[:16]}; the shapes match, but the weights "
                f"or tokenizer differ, so the prompt would not mean the same thing. Retrain it for this model."
            )


_FINGERPRINT_CONFIG_FIELDS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "rope_theta",
    "rope_scaling",
    "rms_norm_eps",
    "tie_word_embeddings",
    "hidden_act",
)


def fingerprint(config: Any, tokenizer_json: str, embedding: Any) -> str:
    """sha256 over the architecture config, the tokenizer and the embedding matrix (float32 bytes)."""
    import numpy as np

    h = hashlib.sha256()
    cfg = {k: getattr(config, k, None) for k in _FINGERPRINT_CONFIG_FIELDS}
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    h.update(hashlib.sha256(tokenizer_json.encode("utf-8")).digest())
    emb = np.ascontiguousarray(embedding, dtype=np.float32)
    h.update(str(emb.shape).encode())
    h.update(memoryview(emb).cast("B"))  # no copy of the [vocab, d] matrix
    return h.hexdigest()
