"""Weight quantization of the exported ONNX decoder with onnxruntime's own tools.

- ``int8``: ``MatMulNBits`` with 8 bits, block 32, symmetric (the scheme of llama.cpp's q8_0).
- ``int4``: ``MatMulNBits`` (4 bits, block 32, symmetric) through ``MatMulNBitsQuantizer``.
  Both with ``accuracy_level=4``: activations are rounded to int8 per block inside the matmul,
  as llama.cpp does, which selects MLAS's integer kernels. Measured on SmolLM2-135M, 2 threads:
  8-bit decodes at 73.7 tokens/s instead of 6.0 (there is no fast fp32-activation 8-bit kernel),
  4-bit at 87.2 instead of 54.1; on 24 tweets the 8-bit logits move from 0.87 to 1.18 max-abs
  from torch (top-1 agreement 100% -> 92%), the 4-bit ones do not change (10.7).
- ``int8-dynamic``: ``quantize_dynamic`` of every ``MatMul`` weight (QInt8, per channel), with
  activations quantized per tensor on the fly. Measured on SmolLM2-135M (24 tweets): logits off
  by up to 26 and top-1 agreement 0%, against 0.87 and 100% for ``int8``: one per-tensor scale
  cannot hold this model's outlier activations (the LM head's input alone costs 8.9). Kept for
  comparison; not the default int8.
- ``fp32``: the graph as exported.

Weights are saved as one external-data file beside the graph (protobuf caps a file at 2 GB).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from edgeprompt.core.errors import EdgePromptError

BLOCK_SIZE = 32
ACCURACY_LEVEL = 4  # int8 activations per block: the integer kernels (see the module docstring)
#: MatMulNBits' ``accuracy_level``: the type its activations are computed in. 0 leaves it to the kernel (fp32 on
#: CPU), 1 fp32, 2 fp16, 3 bf16, 4 int8. ``export --accuracy-level`` picks; 0 keeps exact weights exact.
ACCURACY_LEVELS = (0, 1, 2, 3, 4)


def _save(model, out_path: Path) -> None:
    import onnx

    data = out_path.name + ".data"
    onnx.save_model(model, str(out_path), save_as_external_data=True, all_tensors_to_one_file=True, location=data, size_threshold=1024)


def quantize(fp32_path: str | Path, out_path: str | Path, quant: str, exclude: list[str] | None = None, accuracy_level: int = ACCURACY_LEVEL) -> Path:
    """Write ``fp32_path`` quantized as ``quant`` (fp32 | int8 | int4) to ``out_path``; nodes named in ``exclude``
    stay as they are (int8/int4); ``accuracy_level`` is MatMulNBits' (``ACCURACY_LEVELS``)."""
    import onnx

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if quant == "fp32":
        _save(onnx.load(str(fp32_path)), out_path)
    elif quant == "int8-dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            str(fp32_path),
            str(out_path),
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            weight_type=QuantType.QInt8,
            use_external_data_format=True,
            extra_options={"MatMulConstBOnly": True},
        )
        # quantize_dynamic names the data file after the output; make it the one file we list
        _save(onnx.load(str(out_path)), out_path)
    elif quant in ("int8", "int4"):
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

        cfg = DefaultWeightOnlyQuantConfig(
            block_size=BLOCK_SIZE,
            is_symmetric=True,
            op_types_to_quantize=("MatMul",),
            bits=8 if quant == "int8" else 4,
            accuracy_level=accuracy_level,
        )
        q = MatMulNBitsQuantizer(onnx.load(str(fp32_path)), nodes_to_exclude=list(exclude or []), algo_config=cfg)
        q.process()
        _save(q.model.model, out_path)
    else:
        raise EdgePromptError(f"ONNX quantization {quant!r} is not supported; choose fp32, int8, int4 or int8-dynamic.")
    for stray in out_path.parent.glob("*.onnx.data.*"):
        stray.unlink()
    return out_path


def op_types(path: str | Path) -> dict[str, int]:
    """How many nodes of each quantization-relevant op the graph has (recorded in the manifest)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    c = Counter(n.op_type for n in m.graph.node)
    keep = ("MatMul", "MatMulNBits", "DynamicQuantizeMatMul", "MatMulInteger", "DynamicQuantizeLinear", "Gemm")
    return {k: c[k] for k in keep if c[k]}
