"""Export a llama-family decoder to ONNX with ``inputs_embeds`` and a per-layer KV cache.

The graph (names in :class:`edgeprompt.constants.OnnxNames`)::

    inputs_embeds              float32 [B, T, d]       the runtime does the embedding lookup, so a
                                                       soft prompt [P, d] is just more rows
    attention_mask             int64   [B, past + T]   1 = attend
    position_ids               int64   [B, T]
    past_key_values.{i}.key    float32 [B, h, past, hd]   i = 0..L-1 (also .value); past may be 0
    ->
    logits                     float32 [B, V]          the last position only: prefill of a long
                                                       text never builds [B, T, V]
    present.{i}.key            float32 [B, h, past + T, hd]   (also .value)

A prompt-tuning task enters as rows of ``inputs_embeds`` (or, warm, as its cached ``present``
tensors fed back as ``past_key_values``); a prefix-tuning task enters as ``past_key_values``.
Nothing is re-exported per task. The TorchScript exporter fails on transformers' mask code, so
this uses the dynamo exporter with ``dynamic_shapes``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgeprompt.core.constants import OnnxNames
from edgeprompt.train.models import FrozenLM

OPSET = 18


class _Decoder(torch.nn.Module):
    """``(inputs_embeds, attention_mask, position_ids, past) -> (logits[:, -1], present)``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs_embeds, attention_mask, position_ids, past_key_values):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i, (k, v) in enumerate(past_key_values):
            cache.update(k, v, i)
        out = self.model.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        logits = self.model.lm_head(out.last_hidden_state[:, -1, :])  # (B, V)
        present = out.past_key_values
        flat = []
        for layer in present.layers:
            flat += [layer.keys, layer.values]
        return (logits, *flat)


def sample_inputs(lm: FrozenLM, batch: int = 2, seq: int = 3, past: int = 4):
    """Example inputs for tracing (shapes only matter; values are random)."""
    info = lm.info
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(batch, seq, info.hidden_size, generator=g) * 0.02
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    pos = (torch.arange(seq) + past).unsqueeze(0).expand(batch, -1).contiguous()
    kv = tuple(
        (
            torch.randn(batch, info.num_kv_heads, past, info.head_dim, generator=g),
            torch.randn(batch, info.num_kv_heads, past, info.head_dim, generator=g),
        )
        for _ in range(info.num_layers)
    )
    return embeds, mask, pos, kv


def export_decoder(lm: FrozenLM, out_path: str | Path) -> Path:
    """Write the fp32 decoder graph to ``out_path`` (weights in one external-data file beside it).

    Returns ``out_path``. About 2 minutes for SmolLM2-135M on 2 cores.
    """
    from torch.export import Dim

    out_path = Path(out_path)
    N = OnnxNames
    L = lm.info.num_layers
    batch, seq, past = Dim("batch", min=1, max=64), Dim("seq", min=1, max=8192), Dim("past", min=0, max=8192)
    total = Dim("total", min=1, max=16384)
    dyn = {
        "inputs_embeds": {0: batch, 1: seq},
        "attention_mask": {0: batch, 1: total},
        "position_ids": {0: batch, 1: seq},
        "past_key_values": tuple(({0: batch, 2: past}, {0: batch, 2: past}) for _ in range(L)),
    }
    input_names = [N.INPUTS_EMBEDS, N.ATTENTION_MASK, N.POSITION_IDS]
    output_names = [N.LOGITS]
    for i in range(L):
        input_names += [N.past_key(i), N.past_value(i)]
        output_names += [N.present_key(i), N.present_value(i)]
    module = _Decoder(lm.model).eval()
    args = sample_inputs(lm)
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
        prog = torch.onnx.export(
            module,
            args,
            dynamo=True,
            dynamic_shapes=dyn,
            input_names=input_names,
            output_names=output_names,
            opset_version=OPSET,
            optimize=True,
            verify=False,
            external_data=True,
        )
        prog.save(str(out_path), external_data=True)
    return out_path
