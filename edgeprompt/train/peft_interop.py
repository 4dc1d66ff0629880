"""PEFT interop: read and write PEFT prompt-tuning and prefix-tuning checkpoints.

A PEFT prompt-learning checkpoint is ``adapter_config.json`` plus ``adapter_model.safetensors``
holding one tensor, ``prompt_embeddings``:

* prompt tuning: ``[P, d]`` (``num_transformer_submodules`` = 1 for decoder-only models);
* prefix tuning: the folded prefix ``[P, L*2*kv_heads*head_dim]`` ordered (layer, key/value,
  head, dim); PEFT saves the MLP's output, so we write ``prefix_projection: false``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from edgeprompt.core import schema
from edgeprompt.core.bank import BankTask, PromptBank
from edgeprompt.core.constants import TaskKeys
from edgeprompt.core.errors import BankError, EdgePromptError
from edgeprompt.core.files import atomic_directory, atomic_write_safetensors, read_safetensors
from edgeprompt.core.methods import MethodSpec, all_methods, get_method
from edgeprompt.core.model_info import ModelInfo
from edgeprompt.core.tasks import TaskSpec

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_KEY = "prompt_embeddings"


def _method_for(ptype) -> MethodSpec:
    for name in all_methods():
        m = get_method(name)
        if m.peft_type is not None and m.peft_type == ptype:
            return m
    known = [get_method(n).peft_type for n in all_methods() if get_method(n).peft_type]
    raise BankError(f"peft_type {ptype!r} is not supported; import-peft reads {', '.join(known)}.")


def read_peft(directory: str | Path, info: ModelInfo) -> tuple[MethodSpec, dict[str, np.ndarray], dict]:
    """Read a PEFT checkpoint folder; return our method, folded tensors and PEFT's config."""
    d = Path(directory)
    if not d.is_dir():
        raise EdgePromptError(f"PEFT checkpoint folder not found: {d}")
    cfg = schema.read(d / ADAPTER_CONFIG, schema.PeftAdapterConfig, "PEFT adapter config", BankError, "is it a PEFT prompt-learning adapter?")
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
    P = cfg.get("num_virtual_tokens", emb.shape[0])
    if isinstance(P, bool) or not isinstance(P, int) or not 1 <= P <= 1024 or P != emb.shape[0]:
        raise BankError(
            f"{d / ADAPTER_CONFIG}: num_virtual_tokens is {P!r}; it must be an integer in [1, 1024] equal to the rows of {PEFT_KEY} ({emb.shape[0]})."
        )
    if cfg.get("num_transformer_submodules", 1) not in (1, None):
        raise EdgePromptError(f"{d}: num_transformer_submodules={cfg['num_transformer_submodules']} is for encoder-decoder models; edgeprompt serves decoders.")
    m = _method_for(ptype)
    try:
        return m, m.from_peft(emb, P, info), cfg
    except BankError as e:
        raise BankError(f"{weights}: {e}") from None


def import_peft(directory: str | Path, bank: PromptBank, name: str, info: ModelInfo, spec: TaskSpec, overwrite: bool = False) -> BankTask:
    method, tensors, cfg = read_peft(directory, info)
    extra = {TaskKeys.SOURCE: "peft", TaskKeys.TRAINING: {"peft_config": cfg, "imported_from": str(Path(directory).resolve())}}
    return bank.add(name, method, tensors, spec, info, extra=extra, overwrite=overwrite)


def export_peft(task: BankTask, out: str | Path, base_model_name_or_path: str, info: ModelInfo, overwrite: bool = False) -> Path:
    """Write ``task`` as a PEFT checkpoint that ``PeftModel.from_pretrained`` loads."""
    import peft

    info.check_compatible(task.base_model, f"task {task.name!r}")
    m = task.method_spec
    emb = m.to_peft(task.tensors())
    fields = m.peft_config(task.num_virtual_tokens, info)  # peft_type names PEFT's config class
    cfg = peft.get_peft_config({**fields, "task_type": peft.TaskType.CAUSAL_LM, "num_transformer_submodules": 1, "inference_mode": True})
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
    if task.spec.calibration is not None:  # PEFT's config has no place for it: say so, with the numbers
        warnings.warn(
            f"task {task.name!r} is calibrated (label log-priors {dict(zip(task.spec.labels, task.spec.calibration.log_prior))}); "
            "PEFT has no field for that, so its adapter decides without it: subtract those from the labels' log-softmax to get our decisions.",
            stacklevel=2,
        )
    return out
