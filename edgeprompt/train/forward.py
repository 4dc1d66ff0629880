"""The forward pass with a soft prompt or a KV prefix, shared by both methods, training and eval.

Shapes (nanoGPT style): B batch, T text tokens, P virtual tokens, d hidden size, L layers,
h KV heads, hd head dim.

A prompt-tuning prompt ``[P, d]`` sits at positions ``0..P-1``. Under causal attention its
activations never depend on the text, so it is run once at batch 1 and becomes a per-layer KV
prefix ``L x (key [1, h, P, hd], value [1, h, P, hd])``; the text then runs at positions
``P..P+T-1`` attending to that prefix. This equals PEFT's forward (prompt concatenated in front
of the input embeddings) to float rounding, costs ``P + B*T`` token-passes instead of
``B*(P+T)``, and is the same KV a runtime caches per task. Prefix tuning supplies the KV prefix
directly. Padding is on the right, so real tokens keep their positions.
"""

from __future__ import annotations

from typing import Sequence

import torch

from edgeprompt.train.models import FrozenLM

#: Per layer (key, value), each [b, h, P, hd] with b = 1 (shared) or B.
KV = Sequence[tuple[torch.Tensor, torch.Tensor]]


def kv_from_embeddings(lm: FrozenLM, embeds: torch.Tensor) -> KV:
    """Run a prompt ``[P, d]`` through the frozen model; return its per-layer KV (gradient flows)."""
    P = embeds.shape[0]
    out = lm.model.model(
        inputs_embeds=embeds.unsqueeze(0),  # (1, P, d)
        position_ids=torch.arange(P).unsqueeze(0),
        use_cache=True,
    )
    cache = out.past_key_values
    return [(cache.layers[i].keys, cache.layers[i].values) for i in range(len(cache.layers))]


def kv_from_tensor(kv: torch.Tensor) -> KV:
    """``[L, 2, h, P, hd]`` -> per-layer (key, value) of ``[1, h, P, hd]``."""
    return [(kv[i, 0].unsqueeze(0), kv[i, 1].unsqueeze(0)) for i in range(kv.shape[0])]


def kv_to_tensor(kv: KV) -> torch.Tensor:
    """Per-layer (key, value) of ``[1, h, P, hd]`` -> ``[L, 2, h, P, hd]``."""
    return torch.stack([torch.stack([k[0], v[0]]) for k, v in kv])


def prefix_length(kv: KV | None) -> int:
    return 0 if not kv else kv[0][0].shape[-2]


def text_hidden(lm: FrozenLM, kv: KV | None, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final hidden states ``[B, T, d]`` of right-padded text ``[B, T]`` after a KV prefix."""
    from transformers import DynamicCache

    B, T = input_ids.shape
    P = prefix_length(kv)
    cache = None
    if P:
        cache = DynamicCache(config=lm.model.config)
        for i, (k, v) in enumerate(kv):
            cache.update(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1), i)
        attention_mask = torch.cat([attention_mask.new_ones(B, P), attention_mask], dim=1)  # (B, P+T)
    position_ids = (torch.arange(T) + P).unsqueeze(0).expand(B, -1)
    out = lm.model.model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=cache is not None,
    )
    return out.last_hidden_state


def logits_at(lm: FrozenLM, hidden: torch.Tensor) -> torch.Tensor:
    """Apply the LM head to selected hidden states ``[..., d]`` -> ``[..., vocab]``.

    Training and scoring only need the rows that predict label or target tokens, so the
    ``[B, T, vocab]`` logits tensor of a full forward is never built.
    """
    return lm.model.lm_head(hidden)


def full_logits(lm: FrozenLM, kv: KV | None, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, T, vocab]`` for every text position (for parity tests and generation)."""
    return logits_at(lm, text_hidden(lm, kv, input_ids, attention_mask))
