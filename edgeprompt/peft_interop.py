"""PEFT interop: read and write PEFT prompt-tuning and prefix-tuning checkpoints.

A PEFT prompt-learning checkpoint is ``adapter_config.json`` plus ``adapter_model.safetensors``
holding one tensor, ``prompt_embeddings``:

* prompt tuning: ``[P, d]`` (``num_transformer_submodules`` = 1 for decoder-only models);
* prefix tuning: the folded prefix ``[P, L*2*kv_heads*head_dim]`` ordered (layer, key/value,
  head, dim); PEFT saves the MLP's output, so we write ``prefix_projection: false``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .bank import BankTask, PromptBank
from .constants import TENSOR_KV_PREFIX, TENSOR_PROMPT_EMBEDDINGS, Method, TaskKeys
from .io import EdgePromptError, atomic_directory, atomic_write_safetensors, read_json, read_safetensors
from .models import ModelInfo
from .tasks import TaskSpec

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_KEY = "prompt_embeddings"


def _kv_from_flat(flat: np.ndarray, info: ModelInfo) -> np.ndarray:
    """PEFT's flat ``[P, L*2*h*hd]`` -> our ``[L, 2, h, P, hd]`` (the layout lives in prefix_tuning)."""
    import torch

    from .prefix_tuning import flat_to_kv

    return np.ascontiguousarray(flat_to_kv(torch.from_numpy(flat), info).numpy())


def _flat_from_kv(kv: np.ndarray) -> np.ndarray:
    import torch

    from .prefix_tuning import kv_to_flat

    return np.ascontiguousarray(kv_to_flat(torch.from_numpy(kv)).numpy())


def read_peft(directory: str | Path, info: ModelInfo) -> tuple[Method, dict[str, np.ndarray], dict]:
    """Read a PEFT checkpoint folder; return our method, folded tensors and PEFT's config."""
    d = Path(directory)
    if not d.is_dir():
        raise EdgePromptError(f"PEFT checkpoint folder not found: {d}")
    cfg = read_json(d / ADAPTER_CONFIG, "PEFT adapter config")
    weights = d / ADAPTER_WEIGHTS
    if not weights.exists():
        pickles = [p.name for p in d.glob("adapter_model.bin")]
        if pickles:
            raise EdgePromptError(
                f"{d} holds {pickles[0]}, a pickle; edgeprompt reads safetensors only (pickles can run code when loaded). "
                "Save the adapter again with save_pretrained(..., safe_serialization=True)."
            )
        raise EdgePromptError(f"{d} has no {ADAPTER_WEIGHTS}.")
    t = read_safetensors(weights, "PEFT adapter weights")
    if PEFT_KEY not in t:
        raise EdgePromptError(f"{weights} has no {PEFT_KEY!r} tensor (found {sorted(t)}); is it a prompt-learning adapter?")
    emb = t[PEFT_KEY].astype(np.float32)
    ptype = cfg.get("peft_type")
    P = int(cfg.get("num_virtual_tokens") or emb.shape[0])
    if cfg.get("num_transformer_submodules", 1) not in (1, None):
        raise EdgePromptError(f"{d}: num_transformer_submodules={cfg['num_transformer_submodules']} is for encoder-decoder models; edgeprompt serves decoders.")
    if ptype == "PROMPT_TUNING":
        if emb.shape != (P, info.hidden_size):
            raise EdgePromptError(f"{weights}: prompt embeddings are {list(emb.shape)}, this model needs [P={P}, d={info.hidden_size}].")
        return Method.PROMPT_TUNING, {TENSOR_PROMPT_EMBEDDINGS: emb}, cfg
    if ptype == "PREFIX_TUNING":
        width = info.num_layers * 2 * info.num_kv_heads * info.head_dim
        if emb.shape != (P, width):
            raise EdgePromptError(
                f"{weights}: prefix is {list(emb.shape)}, this model needs the folded [P={P}, L*2*kv_heads*head_dim={width}] "
                f"(L={info.num_layers}, kv_heads={info.num_kv_heads}, head_dim={info.head_dim}). An unfolded "
                "prefix_projection checkpoint cannot be read: save it from PEFT with the prefix folded."
            )
        return Method.PREFIX_TUNING, {TENSOR_KV_PREFIX: _kv_from_flat(emb, info)}, cfg
    raise EdgePromptError(f"{d}: peft_type {ptype!r} is not supported; import-peft reads PROMPT_TUNING and PREFIX_TUNING.")


def import_peft(directory: str | Path, bank: PromptBank, name: str, info: ModelInfo, spec: TaskSpec, overwrite: bool = False) -> BankTask:
    method, tensors, cfg = read_peft(directory, info)
    extra = {TaskKeys.SOURCE: "peft", TaskKeys.TRAINING: {"peft_config": cfg, "imported_from": str(Path(directory).resolve())}}
    return bank.add(name, method, tensors, spec, info, extra=extra, overwrite=overwrite)


def export_peft(task: BankTask, out: str | Path, base_model_name_or_path: str, info: ModelInfo, overwrite: bool = False) -> Path:
    """Write ``task`` as a PEFT checkpoint that ``PeftModel.from_pretrained`` loads."""
    from peft import PrefixTuningConfig, PromptTuningConfig, TaskType

    info.check_compatible(task.base_model, f"task {task.name!r}")
    t = task.tensors()
    P = task.num_virtual_tokens
    if task.method == Method.PROMPT_TUNING:
        emb = t[TENSOR_PROMPT_EMBEDDINGS]
        cfg = PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=P, token_dim=info.hidden_size,
            num_transformer_submodules=1, num_layers=info.num_layers, inference_mode=True,
        )
    else:
        emb = _flat_from_kv(t[TENSOR_KV_PREFIX])
        cfg = PrefixTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=P, token_dim=info.num_kv_heads * info.head_dim,
            num_attention_heads=info.num_kv_heads, num_layers=info.num_layers, num_transformer_submodules=1,
            prefix_projection=False, inference_mode=True,
        )
    cfg.base_model_name_or_path = base_model_name_or_path
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise EdgePromptError(f"{out} exists and is not a folder; choose another output.")
        contents = {p.name for p in out.iterdir()}
        if contents and not (overwrite and contents <= {ADAPTER_CONFIG, ADAPTER_WEIGHTS, "README.md"}):
            hint = " Pass --overwrite to replace the adapter in it." if contents <= {ADAPTER_CONFIG, ADAPTER_WEIGHTS, "README.md"} else ""
            raise EdgePromptError(f"{out} is not empty; export-peft writes a new folder and will not replace other files.{hint}")
    with atomic_directory(out) as tmp:
        cfg.save_pretrained(str(tmp))
        atomic_write_safetensors(tmp / ADAPTER_WEIGHTS, {PEFT_KEY: emb}, metadata={"format": "pt"})
    return out
