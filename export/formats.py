"""The export formats: what each supports, declared once and checked before any work.

The support list is this registry (as optimum registers each family with its ``OnnxConfig``): a model
whose architecture, rope scaling, biases or activation a format cannot write is refused by
:func:`check_supported` from its ``config.json``, before the weights are loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeprompt.core.constants import QUANT_TYPES, ModelFormat
from edgeprompt.core.errors import ModelNotSupportedError
from edgeprompt.core.files import read_json


@dataclass(frozen=True)
class ExportFormat:
    format: ModelFormat
    #: quantization types, in the order the CLI lists them
    quants: tuple[str, ...]
    #: transformers ``model_type`` values this format's writer handles
    architectures: tuple[str, ...]
    #: config fields the writer cannot express when set (name -> why)
    unsupported: tuple[tuple[str, str], ...] = ()
    #: quants that pass a source file through whatever its architecture (checked by the runtime instead)
    passthrough: tuple[str, ...] = ()


FORMATS: dict[ModelFormat, ExportFormat] = {
    # the dynamo exporter traces transformers' own decoder: any llama-shaped family transformers runs
    ModelFormat.ONNX: ExportFormat(ModelFormat.ONNX, QUANT_TYPES[ModelFormat.ONNX], ("llama", "mistral", "qwen2", "qwen3")),
    # export/gguf/convert.py writes llama.cpp's LLAMA architecture tensors and keys only
    ModelFormat.GGUF: ExportFormat(
        ModelFormat.GGUF,
        QUANT_TYPES[ModelFormat.GGUF],
        ("llama",),
        unsupported=(("rope_scaling", "rope scaling"), ("attention_bias", "attention biases"), ("mlp_bias", "MLP biases")),
        passthrough=("source",),
    ),
}


def check_supported(fmt: ModelFormat, quant: str, model_dir: Path) -> None:
    """Refuse, naming what and why, a model this format cannot write (from ``config.json``, no weights loaded)."""
    spec = FORMATS[fmt]
    if quant in spec.passthrough:
        return
    cfg = read_json(Path(model_dir) / "config.json", "model config")
    arch = cfg.get("model_type", "?")
    if arch not in spec.architectures:
        raise ModelNotSupportedError(
            f"{model_dir}: architecture {arch!r} cannot be exported to {fmt.value}; it supports {', '.join(spec.architectures)}"
            + (" (or --quant source to pass a GGUF through)." if spec.passthrough else ".")
        )
    for key, what in spec.unsupported:
        if cfg.get(key):
            raise ModelNotSupportedError(f"{model_dir}: {what} ({key}={cfg[key]!r}) cannot be written to {fmt.value}.")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ModelNotSupportedError(f"{model_dir}: activation {cfg['hidden_act']!r} is not supported; the llama family uses silu.")
