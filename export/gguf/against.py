"""Quantization-aware prompts: train against the weights a bundle actually runs.

``edgeprompt train --against BUNDLE`` loads the base model, then replaces its weights with the
bundle's GGUF tensors dequantized to float32 (gguf-py's ``gguf.quants.dequantize``; the q/k rows
un-permuted back to transformers' rotary layout). The prompt then learns on the quantized model's
function and compensates for its error. The task stays a task of the base model (same
fingerprint: same tokenizer, same shapes), and its manifest records what it was trained against.

llama.cpp also rounds activations (q8_0/q8_K) inside its quantized matmuls; that part is not
simulated, so the trained-against model is close to, not equal to, the deployed one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeprompt.core.bundle import Bundle
from edgeprompt.core.constants import BundleKeys, FileKeys, ModelFormat, ModelKeys
from edgeprompt.core.errors import EdgePromptError
from edgeprompt.export.gguf.convert import LAYER_TENSORS, unpermute_qk


def gguf_state_dict(path: str | Path, config) -> dict[str, np.ndarray]:
    """A transformers llama state dict (float32) from a GGUF file, dequantizing every tensor."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    V = config.vocab_size
    out: dict[str, np.ndarray] = {}
    for t in GGUFReader(str(path)).tensors:
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        name = t.name
        if name == "token_embd.weight":
            out["model.embed_tokens.weight"] = w[:V]  # rows past V are virtual tokens
        elif name == "output_norm.weight":
            out["model.norm.weight"] = w
        elif name == "output.weight":
            out["lm_head.weight"] = w[:V]
        elif name.startswith("blk."):
            _, i, kind, _ = name.split(".")
            if kind not in LAYER_TENSORS:
                raise EdgePromptError(f"{path}: tensor {name} has no transformers llama counterpart.")
            if kind == "attn_q":
                w = unpermute_qk(w, n_head)
            elif kind == "attn_k":
                w = unpermute_qk(w, n_kv)
            out[f"model.layers.{i}.{LAYER_TENSORS[kind]}.weight"] = w
        else:
            raise EdgePromptError(f"{path}: unexpected tensor {name}.")
    return out


def load_against(lm, bundle_path: str | Path) -> dict:
    """Swap ``lm``'s weights (in place) for the bundle's dequantized ones; return the record to keep.

    ``lm.info`` (fingerprint, shapes) is left as the base model's: the bundle must be made for it.
    """
    import torch

    b = Bundle.open(bundle_path)
    lm.info.check_compatible(b.base_model, f"bundle {bundle_path}")
    if b.model.get(ModelKeys.VIRTUAL_TOKENS):
        raise EdgePromptError(f"{bundle_path} has virtual tokens (an untied output matrix); train against a bundle exported without --virtual-tokens.")
    if b.format != ModelFormat.GGUF:
        raise EdgePromptError(
            f"--against reads a GGUF bundle's quantized weights; {bundle_path} is {b.format.value}. "
            "Export one with --format gguf --quant q4_0 (or q8_0, q4_k_m) and train against it."
        )
    sd = gguf_state_dict(b.model_file, lm.model.config)
    own = lm.model.state_dict()
    tied = getattr(lm.model.config, "tie_word_embeddings", False)
    if tied:
        sd.pop("lm_head.weight", None)  # tied: the head is the (quantized) embedding, as in llama.cpp
    missing = [k for k in own if k not in sd and not (tied and k == "lm_head.weight") and "rotary" not in k]
    if missing:
        raise EdgePromptError(f"bundle {bundle_path}: the GGUF lacks {missing[:3]}...; is it a complete model?")
    with torch.no_grad():
        for k, v in sd.items():
            if tuple(own[k].shape) != v.shape:
                raise EdgePromptError(f"bundle {bundle_path}: tensor {k} is {list(v.shape)}, the model's is {list(own[k].shape)}.")
            own[k].copy_(torch.from_numpy(np.ascontiguousarray(v).copy()))
    return {
        "bundle": str(Path(bundle_path).resolve()),
        "format": b.format.value,
        "quant": b.quant,
        "model_sha256": b.manifest[BundleKeys.FILES][b.model[ModelKeys.FILE]][FileKeys.SHA256],
    }
