"""GGUF blocks into MatMulNBits (issue 12): the phone's int4 bundle runs exactly the weights llama.cpp runs.

Each GGUF block type is checked against gguf-py's own dequantization (a second implementation), and the
MatMulNBits graph it becomes is run by onnxruntime against ``x @ W.T`` of those weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeprompt.export.onnx.transcode import BLOCK, convert


def _blocks(kind: str, N: int, nb: int, rng) -> np.ndarray:
    """Random GGUF blocks ``[N, nb, bytes]``: fp16 scales (and Q4_1's fp16 min), then the quants."""
    d = rng.uniform(0.01, 0.1, (N, nb, 1)).astype(np.float16).view(np.uint8)
    if kind == "Q8_0":
        return np.concatenate([d, rng.integers(-127, 128, (N, nb, 32)).astype(np.int8).view(np.uint8)], -1)
    qs = rng.integers(0, 256, (N, nb, 16)).astype(np.uint8)
    if kind == "Q4_0":
        return np.concatenate([d, qs], -1)
    m = rng.uniform(-0.5, 0.5, (N, nb, 1)).astype(np.float16).view(np.uint8)
    return np.concatenate([d, m, qs], -1)


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q8_0"])
def test_blocks_become_matmulnbits_exactly(kind):
    import onnxruntime as ort
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    N, nb = 48, 3
    K = nb * BLOCK
    raw = _blocks(kind, N, nb, rng)
    conv = convert(kind, raw)
    ref = dequantize(raw.reshape(N, -1), GGMLQuantizationType[kind]).reshape(N, K)  # gguf-py: what llama.cpp computes
    assert np.array_equal(conv["dequant"], ref)  # bit for bit
    # the MatMulNBits graph (fp32 activations: accuracy_level 0) against x @ W.T
    inits = [numpy_helper.from_array(conv["B"], "B"), numpy_helper.from_array(conv["scales"], "s")]
    ins = ["x", "B", "s"]
    if "zero_points" in conv:
        inits.append(numpy_helper.from_array(conv["zero_points"], "zp"))
        ins.append("zp")
    nodes = [helper.make_node("MatMulNBits", ins, ["y0" if "m" in conv else "y"], domain="com.microsoft", K=K, N=N, bits=conv["bits"], block_size=BLOCK)]
    if "m" in conv:
        inits += [numpy_helper.from_array(np.array([0, 0, nb, BLOCK], np.int64), "shape"), numpy_helper.from_array(np.array([-1], np.int64), "ax")]
        inits.append(numpy_helper.from_array(conv["m"], "m"))
        nodes += [
            helper.make_node("Reshape", ["x", "shape"], ["xb"]),
            helper.make_node("ReduceSum", ["xb", "ax"], ["xs"], keepdims=0),
            helper.make_node("MatMul", ["xs", "m"], ["mt"]),
            helper.make_node("Add", ["y0", "mt"], ["y"]),
        ]
    g = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, K])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((1, 5, K)).astype(np.float32)
    got = sess.run(None, {"x": x})[0]
    want = x.astype(np.float64) @ ref.T.astype(np.float64)
    # fp32 sums of K products: each term rounds at 2^-24 relative; bound by K·2^-23·Σ|x·w|
    bound = K * 2.0**-23 * (np.abs(x).astype(np.float64) @ np.abs(ref.T).astype(np.float64))
    assert (np.abs(got - want) <= bound + 1e-6).all(), np.abs(got - want).max()


def test_an_int4_export_from_a_gguf_carries_its_blocks_over(bundle_of, tmp_path):
    """Every Q4_0/Q8_0 weight of the tiny model's GGUF is transcoded, none re-quantized; the logits then differ from
    the dequantized GGUF's only by the int8 activations of accuracy_level 4 (top-1 the same on every probe)."""
    from gguf import GGUFReader

    from edgeprompt.export.writer import ExportConfig, export_bundle

    src = bundle_of("gguf", "q4_0") / "model" / "model.gguf"
    kinds = [t.tensor_type.name for t in GGUFReader(str(src)).tensors]
    res = export_bundle(tmp_path / "int4", bank=None, model=src, config=ExportConfig(format="onnx", quant="int4", probes_per_task=8), log=lambda s: None)
    rec = res.manifest["model"]["transcoded"]
    # every Q4_0 tensor is a linear weight (llama.cpp keeps token_embd, a gather, at Q8_0): all carried over
    assert rec["Q4_0"] == kinds.count("Q4_0") > 0 and not rec.get("left"), (rec, kinds)
    parity = res.manifest["parity"][""]
    assert parity["top1_agreement"] == 1.0 and parity["max_abs_logit_diff"] < 0.01, parity
    assert json.loads((tmp_path / "int4" / "manifest.json").read_text())["model"]["tensor_types"]["MatMulNBits"] == rec.get("Q4_0", 0) + rec.get("Q8_0", 0)
