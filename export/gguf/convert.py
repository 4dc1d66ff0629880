"""Convert a transformers llama-family causal LM (+ byte-level BPE fast tokenizer) to GGUF.

Written with gguf-py's ``gguf.GGUFWriter``; the result loads in stock llama.cpp
(``llama_cpp.Llama``) and reproduces the torch logits (fp32: ~1e-5 abs).

Tensor-name map (HF ``model.`` prefix dropped, N = layer index)::

    embed_tokens.weight                      -> token_embd.weight      [V(+V_extra), d]
    norm.weight                              -> output_norm.weight     f32
    lm_head.weight                           -> output.weight          (omitted when tied, unless
                                                                        virtual tokens are added)
    layers.N.input_layernorm.weight          -> blk.N.attn_norm.weight f32
    layers.N.self_attn.q_proj.weight         -> blk.N.attn_q.weight    (permuted, n_head)
    layers.N.self_attn.k_proj.weight         -> blk.N.attn_k.weight    (permuted, n_head_kv)
    layers.N.self_attn.v_proj.weight         -> blk.N.attn_v.weight
    layers.N.self_attn.o_proj.weight         -> blk.N.attn_output.weight
    layers.N.post_attention_layernorm.weight -> blk.N.ffn_norm.weight  f32
    layers.N.mlp.gate_proj.weight            -> blk.N.ffn_gate.weight
    layers.N.mlp.up_proj.weight              -> blk.N.ffn_up.weight
    layers.N.mlp.down_proj.weight            -> blk.N.ffn_down.weight

Why q/k are permuted: HF llama applies RoPE in "rotate_half" (NeoX) layout, pairing
dimension i with i + head_dim/2 inside each head.  llama.cpp's LLAMA architecture uses
the original interleaved RoPE (pairs 2i, 2i+1).  Reordering the output rows of q_proj
and k_proj per head (exactly ``LlamaModel.permute`` in llama.cpp's convert_hf_to_gguf.py)
makes the interleaved rotation equal the HF one; q.k dot products are invariant to the
common row permutation, so v/o are untouched.

Virtual tokens: ``extra_embeddings`` rows are appended to ``token_embd`` and get ids
V..V+V_extra-1 (token type USER_DEFINED).  The ``output`` matrix gets matching ZERO
rows, so those ids always have logit exactly 0 (for tied models an untied ``output``
is written for that purpose).
"""

from __future__ import annotations

import json
from collections import Counter

import gguf
import numpy as np

from edgeprompt.core.errors import ModelNotSupportedError

__all__ = ["write_gguf", "permute_qk", "unpermute_qk", "infer_pre_tokenizer", "LAYER_TENSORS"]


#: llama.cpp's per-layer tensor kind -> the transformers llama module (``model.layers.N.<module>.weight``).
LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of :func:`permute_qk` (llama.cpp -> transformers rotary layout)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate_half layout -> llama.cpp interleaved RoPE layout (rows of q/k proj)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def infer_pre_tokenizer(pre: dict | None) -> str:
    """Map a tokenizer.json ``pre_tokenizer`` to a llama.cpp ``tokenizer.ggml.pre`` name.

    ByteLevel(use_regex=True)                               -> "gpt-2"
    Sequence[Digits(individual_digits=True), ByteLevel]     -> "smollm"
    (llama.cpp's "smollm" = split every \\p{N} + the GPT-2 regex, which is exactly that.)
    """

    def is_bytelevel(p):
        return p.get("type") == "ByteLevel" and p.get("use_regex", True) and not p.get("add_prefix_space", False)

    if pre is None:
        raise ModelNotSupportedError("tokenizer.json has no pre_tokenizer; cannot infer tokenizer.ggml.pre")
    if is_bytelevel(pre):
        return "gpt-2"
    if pre.get("type") == "Sequence":
        seq = pre.get("pretokenizers", [])
        if len(seq) == 2 and seq[0].get("type") == "Digits" and seq[0].get("individual_digits") and is_bytelevel(seq[1]):
            return "smollm"
    raise ModelNotSupportedError(
        f"unsupported pre_tokenizer for GGUF conversion: {json.dumps(pre)[:300]} "
        "(supported: ByteLevel -> 'gpt-2', Digits(individual)+ByteLevel -> 'smollm'); "
        "export a GGUF with --quant source to keep its own tokenizer"
    )


def _build_tokenizer_kv(tokenizer, n_vocab: int) -> list[tuple]:
    """Rebuild tokenizer.* keys from the HF fast tokenizer. Returns (key, value, vtype, subtype)."""
    T = gguf.GGUFValueType
    tj = json.loads(tokenizer.backend_tokenizer.to_str())
    model = tj["model"]
    if model.get("type") != "BPE":
        raise ModelNotSupportedError(f"only BPE tokenizers are supported, got {model.get('type')}")
    pre = infer_pre_tokenizer(tj.get("pre_tokenizer"))

    id2tok: dict[int, tuple[str, int]] = {i: (t, gguf.TokenType.NORMAL) for t, i in model["vocab"].items()}
    for at in tj.get("added_tokens", []):
        id2tok[at["id"]] = (at["content"], gguf.TokenType.CONTROL if at.get("special") else gguf.TokenType.USER_DEFINED)
    if max(id2tok) >= n_vocab:
        raise ValueError(f"tokenizer has id {max(id2tok)} but model vocab is {n_vocab}")
    tokens, types = [], []
    for i in range(n_vocab):  # pad holes / embedding padding like convert_hf_to_gguf does
        t, ty = id2tok.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED))
        tokens.append(t)
        types.append(int(ty))

    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    kv = [
        ("tokenizer.ggml.model", "gpt2", T.STRING, None),
        ("tokenizer.ggml.pre", pre, T.STRING, None),
        ("tokenizer.ggml.tokens", tokens, T.ARRAY, T.STRING),
        ("tokenizer.ggml.token_type", types, T.ARRAY, T.INT32),
        ("tokenizer.ggml.merges", merges, T.ARRAY, T.STRING),
    ]
    for name, key in [("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id"), ("unk", "unknown_token_id")]:
        tid = getattr(tokenizer, f"{name}_token_id", None)
        if tid is not None:
            kv.append((f"tokenizer.ggml.{key}", int(tid), T.UINT32, None))
    kv += [("tokenizer.ggml.add_bos_token", False, T.BOOL, None), ("tokenizer.ggml.add_eos_token", False, T.BOOL, None)]
    tmpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tmpl, str) and tmpl:
        kv.append(("tokenizer.chat_template", tmpl, T.STRING, None))
    return kv


def _vocab_kv(tokenizer, n_vocab: int, extra_names: list[str]) -> dict[str, list]:
    """The tokenizer's GGUF keys ``{key: [value, value type, sub type]}``, virtual tokens appended."""
    tok_kv = {k: [v, vt, st] for k, v, vt, st in _build_tokenizer_kv(tokenizer, n_vocab)}
    tokens = tok_kv["tokenizer.ggml.tokens"]
    if len(tokens[0]) != n_vocab:
        raise ValueError(f"tokenizer has {len(tokens[0])} tokens, model embedding has {n_vocab} rows")
    if extra_names:
        existing = set(tokens[0])
        clash = [n for n in extra_names if n in existing]
        if clash:
            raise ValueError(f"virtual token names already in vocab: {clash}")
        tokens[0] = list(tokens[0]) + list(extra_names)
        types = tok_kv["tokenizer.ggml.token_type"]
        types[0] = list(types[0]) + [int(gguf.TokenType.USER_DEFINED)] * len(extra_names)
    return tok_kv


def _add_hparams(w, cfg, file_type: str, total_vocab: int) -> None:
    """llama's architecture keys, from the transformers config."""
    d, n_head = cfg.hidden_size, cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_head
    head_dim = getattr(cfg, "head_dim", None) or d // n_head
    w.add_name(str(getattr(cfg, "_name_or_path", "") or getattr(cfg, "name", "") or "model"))
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if file_type == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    w.add_context_length(int(cfg.max_position_embeddings))
    w.add_embedding_length(d)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_rope_freq_base(float(getattr(cfg, "rope_theta", 10000.0)))
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(total_vocab)
    if head_dim != d // n_head:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)


def _tensors(sd: dict[str, np.ndarray], cfg, tied: bool, extra: np.ndarray | None):
    """``(gguf name, float32 array)`` of every tensor: embeddings (+ virtual rows), the output head (its rows
    for virtual tokens zero, so their logit is exactly 0), and each layer's (q/k permuted to llama.cpp's rope)."""
    embd = sd["model.embed_tokens.weight"]
    d = embd.shape[1]
    n_head = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_head
    yield "token_embd.weight", embd if extra is None else np.concatenate([embd, extra], 0)
    yield "output_norm.weight", sd["model.norm.weight"]
    if not tied or extra is not None:
        out = embd if tied else sd["lm_head.weight"]
        if extra is not None:
            out = np.concatenate([out, np.zeros((extra.shape[0], d), np.float32)], 0)
        yield "output.weight", out
    heads = {"attn_q": n_head, "attn_k": n_kv}
    for i in range(cfg.num_hidden_layers):
        for kind, hf in LAYER_TENSORS.items():
            wt = sd[f"model.layers.{i}.{hf}.weight"]
            yield f"blk.{i}.{kind}.weight", permute_qk(wt, heads[kind]) if kind in heads else wt


def write_gguf(
    model, tokenizer, out_path, *, file_type: str = "f32", extra_embeddings: np.ndarray | None = None, extra_token_names: list[str] | None = None
) -> dict:
    """Write ``model`` (LlamaForCausalLM) + ``tokenizer`` (fast byte-level BPE) to ``out_path``.

    file_type: "f32" or "f16" (f16 applies to 2-D matrices; norms stay f32).
    extra_embeddings ``[V_extra, d]`` / extra_token_names: virtual tokens appended after the vocab.
    Returns {"tensor_types": {type: count}, "vocab_size": int, "virtual_token_ids": [...],
             "untied_output_for_virtual_tokens": bool}.
    """
    if file_type not in ("f32", "f16"):
        raise ValueError("file_type must be 'f32' or 'f16'")
    cfg = model.config  # its architecture was checked by export.formats.check_supported before loading
    d = cfg.hidden_size
    sd = {k: v.detach().to("cpu").float().numpy() for k, v in model.state_dict().items()}
    n_vocab = sd["model.embed_tokens.weight"].shape[0]
    tied = bool(getattr(cfg, "tie_word_embeddings", False)) or "lm_head.weight" not in sd
    n_extra = 0
    if extra_embeddings is not None:
        extra_embeddings = np.asarray(extra_embeddings, dtype=np.float32)
        if extra_embeddings.ndim != 2 or extra_embeddings.shape[1] != d:
            raise ValueError(f"extra_embeddings must be [V_extra, {d}], got {extra_embeddings.shape}")
        n_extra = extra_embeddings.shape[0]
        if extra_token_names is None:
            extra_token_names = [f"<|virtual_{i}|>" for i in range(n_extra)]
        if len(extra_token_names) != n_extra:
            raise ValueError("extra_token_names must have one name per extra embedding row")
    total_vocab = n_vocab + n_extra

    w = gguf.GGUFWriter(str(out_path), "llama")
    _add_hparams(w, cfg, file_type, total_vocab)
    for k, (v, vt, st) in _vocab_kv(tokenizer, n_vocab, list(extra_token_names or []) if n_extra else []).items():
        w.add_key_value(k, v, vt, st)
    counts: Counter = Counter()
    for name, arr in _tensors(sd, cfg, tied, extra_embeddings if n_extra else None):
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if file_type == "f16" and arr.ndim == 2:
            arr = arr.astype(np.float16)
        counts["F16" if arr.dtype == np.float16 else "F32"] += 1
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {
        "tensor_types": dict(counts),
        "vocab_size": total_vocab,
        "virtual_token_ids": list(range(n_vocab, total_vocab)),
        "untied_output_for_virtual_tokens": tied and n_extra > 0,
    }
