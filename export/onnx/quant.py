"""Weight quantization of the exported ONNX decoder with onnxruntime's own tools.

- ``int8``: ``MatMulNBits`` with 8 bits, block 32, symmetric (the scheme of llama.cpp's q8_0).
- ``int4``: ``MatMulNBits`` (4 bits, block 32, symmetric) through ``MatMulNBitsQuantizer``, the LM head at 8 bits.
  Both with ``accuracy_level=4``: activations are rounded to int8 per block inside the matmul,
  as llama.cpp does, which selects MLAS's integer kernels. Measured on SmolLM2-135M, 2 threads:
  8-bit decodes at 73.7 tokens/s instead of 6.0 (there is no fast fp32-activation 8-bit kernel),
  4-bit at 87.2 instead of 54.1; on 24 tweets the 8-bit logits move from 0.87 to 1.18 max-abs
  from torch (top-1 agreement 100% -> 92%), the 4-bit ones do not change (10.7).
- int8 and int4 run the LM head (the exporter's ``Gemm``) as an 8-bit ``MatMulNBits`` on its Q8_0 blocks
  (:func:`q8_0_heads`); tied to the input embeddings, it shares its bytes with an ``--embeddings int8`` table.
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

import numpy as np

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

        model = onnx.load(str(fp32_path))
        q8_0_heads(model, accuracy_level, keep=set(exclude or []))  # before the quantizer, which skips a Gemm
        cfg = DefaultWeightOnlyQuantConfig(
            block_size=BLOCK_SIZE,
            is_symmetric=True,
            op_types_to_quantize=("MatMul",),
            bits=8 if quant == "int8" else 4,
            accuracy_level=accuracy_level,
        )
        q = MatMulNBitsQuantizer(model, nodes_to_exclude=list(exclude or []), algo_config=cfg)
        q.process()
        _save(q.model.model, out_path)
    else:
        raise EdgePromptError(f"ONNX quantization {quant!r} is not supported; choose fp32, int8, int4 or int8-dynamic.")
    for stray in out_path.parent.glob("*.onnx.data.*"):
        stray.unlink()
    return out_path


def q8_0(x: np.ndarray, block: int = BLOCK_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """llama.cpp's Q8_0 of rows ``x [N, K]`` (``K`` a multiple of ``block``): int8 ``q [N, K]`` and float32
    ``scale [N, K/block]`` with ``x ~ q * scale`` per block; the scale is the block's max |x| / 127 rounded to fp16
    (an all-zero block gets 1). A Q8_0 tensor already dequantized (``d·q`` with fp16 ``d`` and max |q| = 127, as
    transformers reads a GGUF's) comes back bit for bit: ``fp16(max|x| / 127)`` is ``d`` again and ``x / d`` is ``q``."""
    N, K = x.shape
    blocks = np.asarray(x, dtype=np.float32).reshape(N, K // block, block)
    scale = (np.abs(blocks).max(axis=2) / np.float32(127.0)).astype(np.float16).astype(np.float32)
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(blocks / scale[:, :, None]), -127, 127).astype(np.int8).reshape(N, K)
    return q, scale


def q8_0_heads(model, accuracy_level: int, keep: set[str] = frozenset()) -> list[str]:
    """Replace, in place, each plain ``Gemm(x, W [N, K], C?, transB=1)`` with a constant ``W`` (not named in
    ``keep``) by an 8-bit ``MatMulNBits`` on ``W``'s :func:`q8_0` blocks (``B = q + 128``, its zero point), then
    ``Add C``. The dynamo exporter writes the LM head this way and ``MatMulNBitsQuantizer`` leaves a Gemm in fp32
    (SmolLM2-135M: ``[49152, 576]``, 108 MiB). Q8_0, not the quantizer's 8 bits, so that a tied head holds the same
    bytes as the ``--embeddings int8`` table (:func:`~edgeprompt.export.onnx.transcode.share_head_with_table`
    keeps one copy), and a head that was Q8_0 in a GGUF keeps its weights exactly; at 8 bits for int4 too, as
    llama.cpp's Q4 files keep their output tensor wider. Returns the new nodes' names."""
    from onnx import helper, numpy_helper

    from edgeprompt.export.onnx.transcode import constant_linear

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    uses: dict[str, int] = {}
    for node in g.node:
        for x in node.input:
            uses[x] = uses.get(x, 0) + 1
    for out in g.output:
        uses[out.name] = uses.get(out.name, 0) + 1
    nodes, names, done = [], [], {}
    for node in g.node:
        w, W, bias = constant_linear(node, inits) if node.op_type == "Gemm" and node.name not in keep else (None, None, None)
        if w is None:
            nodes.append(node)
            continue
        N, K = W.shape
        name, ins = f"{node.name or w.name}_q8_0", [node.input[0], f"{w.name}_q8_0_B", f"{w.name}_q8_0_scales"]
        if w.name not in done:  # a weight two Gemms share is converted once
            q, scale = q8_0(W)
            g.initializer.extend(
                [
                    numpy_helper.from_array((q.astype(np.int16) + 128).astype(np.uint8).reshape(N, K // BLOCK_SIZE, BLOCK_SIZE), ins[1]),
                    numpy_helper.from_array(scale, ins[2]),
                ]
            )
        done[w.name] = done.get(w.name, 0) + 1
        out = node.output[0] if bias is None else f"{name}_out"
        attrs = {"K": K, "N": N, "bits": 8, "block_size": BLOCK_SIZE, "accuracy_level": accuracy_level}
        nodes.append(helper.make_node("MatMulNBits", ins, [out], name=name, domain="com.microsoft", **attrs))
        if bias is not None:
            nodes.append(helper.make_node("Add", [out, bias], [node.output[0]], name=f"{name}_bias"))
        if done[w.name] == uses[w.name]:  # every use converted: the float weight goes
            g.initializer.remove(w)
        names.append(name)
    if names:
        del g.node[:]
        g.node.extend(nodes)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return names


def op_types(path: str | Path) -> dict[str, int]:
    """How many nodes of each quantization-relevant op the graph has (recorded in the manifest)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    c = Counter(n.op_type for n in m.graph.node)
    keep = ("MatMul", "MatMulNBits", "DynamicQuantizeMatMul", "MatMulInteger", "DynamicQuantizeLinear", "Gemm")
    return {k: c[k] for k in keep if c[k]}
