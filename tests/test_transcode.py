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
    """Every Q4_0/Q8_0 weight of the tiny model's GGUF is transcoded (the tied LM head too), none re-quantized; the logits then differ from
    the dequantized GGUF's only by the int8 activations of accuracy_level 4 (top-1 the same on every probe)."""
    from gguf import GGUFReader

    from edgeprompt.export.writer import ExportConfig, export_bundle

    src = bundle_of("gguf", "q4_0") / "model" / "model.gguf"
    kinds = [t.tensor_type.name for t in GGUFReader(str(src)).tensors]
    cfg = ExportConfig(format="onnx", quant="int4", embeddings="int8", probes_per_task=8)
    res = export_bundle(tmp_path / "int4", bank=None, model=src, config=cfg, log=lambda s: None)
    rec = res.manifest["model"]["transcoded"]
    # every Q4_0 tensor is a linear weight: all carried over; llama.cpp keeps token_embd at Q8_0, and the tied LM
    # head (the dynamo exporter's Gemm with transB) runs it as an 8-bit MatMulNBits: nothing left to re-quantize
    assert rec["Q4_0"] == kinds.count("Q4_0") > 0 and rec.get("Q8_0") == kinds.count("Q8_0") == 1 and not rec.get("left"), (rec, kinds)
    parity = res.manifest["parity"][""]
    assert parity["top1_agreement"] == 1.0 and parity["max_abs_logit_diff"] < 0.01, parity
    assert json.loads((tmp_path / "int4" / "manifest.json").read_text())["model"]["tensor_types"]["MatMulNBits"] == rec.get("Q4_0", 0) + rec.get("Q8_0", 0)
    # one copy of token_embd, as in the GGUF: the head's B and scales are the int8 table's bytes (external data)
    import onnx

    assert res.manifest["model"]["embeddings_in_graph"]
    g = onnx.load(str(tmp_path / "int4" / "model" / "decoder.onnx"), load_external_data=False).graph
    where = {i.name: {e.key: e.value for e in i.external_data}.get("location") for i in g.initializer}
    head = [n for n in g.node if n.op_type == "MatMulNBits" and "lm_head" in n.input[1]]
    assert head and {where[x] for x in head[0].input[1:3]} == {"embeddings.safetensors"}, head
    assert all(v != "embeddings.safetensors" for k, v in where.items() if k not in head[0].input[1:3])


@pytest.mark.parametrize("kind", ["Q4_1", "Q8_0"])
def test_a_gemm_head_with_a_bias_is_transcoded(kind, tmp_path):
    """The dynamo exporter writes an LM head as ``Gemm(x [B, K], W [N, K], C?, transB=1)``; transcode runs it as
    MatMulNBits (Q4_1's block sums on a 2-D input) plus C, and gives ``x @ W.T + C`` of the GGUF's weights."""
    import onnx
    import onnxruntime as ort
    from gguf import GGMLQuantizationType, GGUFWriter
    from onnx import TensorProto, helper, numpy_helper

    from edgeprompt.export.onnx.transcode import transcode

    rng = np.random.default_rng(1)
    N, nb = 40, 2
    K = nb * BLOCK
    raw = _blocks(kind, N, nb, rng)
    W = convert(kind, raw)["dequant"]  # [N, K]
    gguf = tmp_path / "m.gguf"
    w = GGUFWriter(str(gguf), "llama")
    w.add_tensor("output.weight", raw.reshape(N, -1), raw_dtype=GGMLQuantizationType[kind])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    C = rng.standard_normal(N).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "C"], ["y"], transB=1)],
        "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(C, "C")],
    )
    onnx.save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "fp32.onnx"))
    rec = transcode(tmp_path / "fp32.onnx", gguf, tmp_path / "out" / "m.onnx", accuracy_level=0)
    assert rec[kind] == 1 and not rec.get("left"), rec
    m = onnx.load(str(tmp_path / "out" / "m.onnx"))
    assert [n.op_type for n in m.graph.node].count("Gemm") == 0 and "W" not in {i.name for i in m.graph.initializer}
    sess = ort.InferenceSession(str(tmp_path / "out" / "m.onnx"), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((3, K)).astype(np.float32)
    got = sess.run(None, {"x": x})[0]
    want = x.astype(np.float64) @ W.T.astype(np.float64) + C
    bound = K * 2.0**-23 * (np.abs(x).astype(np.float64) @ np.abs(W.T).astype(np.float64)) + 2.0**-23 * np.abs(want)  # as above, + the bias add
    assert (np.abs(got - want) <= bound + 1e-6).all(), np.abs(got - want).max()
