"""GGUF quantization with llama.cpp's own ``llama_model_quantize``, and what it actually wrote.

k-quants (q4_k_m) work on super-blocks of 256 values; a tensor whose row length is not a
multiple of 256 (SmolLM2's d = 576) falls back to another type. The manifest records the
types read back from the written file, not the type asked for.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from edgeprompt.core.errors import EdgePromptError

#: Our names -> llama.cpp's LLAMA_FTYPE_* attribute names.
FTYPES = {
    "f32": "LLAMA_FTYPE_ALL_F32",
    "f16": "LLAMA_FTYPE_MOSTLY_F16",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
}


def quantize(src: str | Path, dst: str | Path, quant: str, threads: int = 0) -> Path:
    """Quantize the f32/f16 GGUF ``src`` to ``quant`` at ``dst`` (llama.cpp's quantizer)."""
    import ctypes

    import llama_cpp

    from edgeprompt.runtimes.llamacpp.engine import _lib, _quiet_logs

    _quiet_logs(_lib())
    if quant not in FTYPES:
        raise EdgePromptError(f"GGUF quantization {quant!r} is not supported; choose one of {', '.join(FTYPES)}.")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[quant])
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise EdgePromptError(f"llama_model_quantize failed (code {rc}) quantizing {src} to {quant}.")
    return Path(dst)


def tensor_types(path: str | Path) -> dict[str, int]:
    """``{ggml type name: number of tensors}`` of a GGUF file."""
    from gguf import GGUFReader

    return dict(sorted(Counter(t.tensor_type.name for t in GGUFReader(str(path)).tensors).items()))
