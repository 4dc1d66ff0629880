"""GGUF blocks into ``MatMulNBits``, bit for bit: an ONNX bundle that runs exactly the weights llama.cpp runs.

Re-quantizing a GGUF's dequantized weights rounds them a second time (an int4 ONNX export of the embedded
Q4_1 SmolLM2 kept 62% top-1 on the plain probes). Instead, each linear weight whose GGUF tensor is Q4_0, Q4_1
or Q8_0 (blocks of 32 along the input dimension, the layout ``MatMulNBits`` takes) is carried over as is:

- Q4_0 ``w = d·(q - 8)``: ``MatMulNBits(bits=4, scales=d)``, zero point 8 (the default);
- Q8_0 ``w = d·q`` (q int8): ``MatMulNBits(bits=8, q + 128, scales=d)``, zero point 128 (the default);
- Q4_1 ``w = d·q + m``: ``MatMulNBits(bits=4, q, scales=d, zero point 0)`` plus ``m``'s share, the input's sum over
  each block ``[.., K/32]`` times ``m [K/32, N]`` (a small MatMul). A float zero point ``-m/d`` would be one op, but
  onnxruntime runs it 10-20x slower than uint8 zero points (measured on one 576x1536 layer, issue 12).

Nibbles: ggml stores a block's element ``j`` in the low nibble of byte ``j`` and element ``j+16`` in its high nibble;
``MatMulNBits`` wants elements ``2i`` and ``2i+1`` in byte ``i``, low then high. The ONNX graph's weight ``[K, N]``
is matched to its GGUF tensor by value (its columns are the dequantized GGUF rows, up to the row permutation
transformers applies to llama's q and k projections, recovered row by row), so no name map is trusted.
A weight that matches no such tensor is left to the ordinary quantizer.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

BLOCK = 32
KINDS = ("Q4_0", "Q4_1", "Q8_0")


def _blocks(t) -> tuple[str, np.ndarray]:
    """A GGUF tensor's type name and raw blocks ``[N, K/32, bytes per block]``."""
    kind = t.tensor_type.name
    per = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}[kind]
    raw = np.asarray(t.data, dtype=np.uint8)
    return kind, raw.reshape(raw.shape[0], -1, per)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """ggml's 16 bytes per block ``[.., 16]`` -> the 32 values in order ``[.., 32]`` (uint8 0..15)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _pack4(q: np.ndarray) -> np.ndarray:
    """32 values ``[.., 32]`` -> MatMulNBits' 16 bytes ``[.., 16]`` (element 2i low nibble, 2i+1 high)."""
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def _fp16(b: np.ndarray) -> np.ndarray:
    """Little-endian fp16 from two bytes ``[.., 2]`` -> float32 ``[..]``."""
    return np.ascontiguousarray(b).view(np.float16)[..., 0].astype(np.float32)


def convert(kind: str, blocks: np.ndarray) -> dict[str, np.ndarray]:
    """One tensor's blocks ``[N, nb, bytes]`` as MatMulNBits inputs: ``B``, ``scales`` and, for Q4_1, ``zero_points``
    (0) and ``m [nb, N]`` for the block-sum MatMul. ``dequant [N, K]`` is what these inputs compute (a check)."""
    N, nb, _ = blocks.shape
    d = _fp16(blocks[..., 0:2])  # [N, nb]
    if kind == "Q8_0":
        q = blocks[..., 2:].view(np.int8)  # [N, nb, 32]
        return {"bits": 8, "B": (q.astype(np.int16) + 128).astype(np.uint8), "scales": d, "dequant": (d[..., None] * q).reshape(N, -1)}
    if kind == "Q4_0":
        q = _nibbles(blocks[..., 2:])
        return {"bits": 4, "B": _pack4(q), "scales": d, "dequant": (d[..., None] * (q.astype(np.float32) - 8)).reshape(N, -1)}
    m = _fp16(blocks[..., 2:4])
    q = _nibbles(blocks[..., 4:])
    zp = np.zeros((N, (nb + 1) // 2), dtype=np.uint8)
    return {
        "bits": 4,
        "B": _pack4(q),
        "scales": d,
        "zero_points": zp,
        "m": np.ascontiguousarray(m.T),
        "dequant": (d[..., None] * q.astype(np.float32) + m[..., None]).reshape(N, -1),
    }


def _row_order(want: np.ndarray, have: np.ndarray) -> np.ndarray | None:
    """``perm`` with ``have[perm] == want`` exactly (rows ``[N, K]``), or None."""
    index: dict[bytes, list[int]] = {}
    for i, row in enumerate(have):
        index.setdefault(row.tobytes(), []).append(i)
    perm = []
    for row in want:
        hit = index.get(row.tobytes())
        if not hit:
            return None
        perm.append(hit.pop())
    return np.array(perm)


def constant_linear(node, inits) -> tuple:
    """A node computing ``x @ W.T`` with a constant ``W [N, K]`` (K a multiple of 32): ``MatMul(x, W.T)``, or a
    plain ``Gemm(x, W, C?, transB=1)`` (the dynamo exporter's LM head). Returns (initializer, ``W``, C's name or
    None), or (None, None, None)."""
    from onnx import helper, numpy_helper

    if node.op_type == "MatMul" and len(node.input) == 2:
        w = inits.get(node.input[1])
        if w is None or len(w.dims) != 2 or w.dims[0] % BLOCK:
            return None, None, None
        return w, numpy_helper.to_array(w).T, None  # the ONNX [K, N] -> the HF weight [N, K], rows = outputs
    if node.op_type == "Gemm" and len(node.input) in (2, 3):
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        w = inits.get(node.input[1])
        plain = a.get("transA", 0) == 0 and a.get("transB", 0) == 1 and a.get("alpha", 1.0) == 1.0 and a.get("beta", 1.0) == 1.0
        if not plain or w is None or len(w.dims) != 2 or w.dims[1] % BLOCK:
            return None, None, None
        return w, numpy_helper.to_array(w), (node.input[2] if len(node.input) == 3 and node.input[2] else None)
    return None, None, None


def transcode(fp32_path: str | Path, gguf_path: str | Path, out_path: str | Path, accuracy_level: int) -> dict:
    """Replace each MatMul (or plain Gemm, see :func:`constant_linear`) of ``fp32_path`` whose weight is a Q4_0/Q4_1/Q8_0 tensor of ``gguf_path`` by MatMulNBits on
    the GGUF's own blocks; write ``out_path`` (weights as external data). Returns counts per GGUF type, of weights
    left (``left``) for the ordinary quantizer, and the names of the small Q4_1 ``m`` MatMuls it must leave alone
    (``keep_float``)."""
    import onnx
    from gguf import GGUFReader
    from onnx import helper, numpy_helper

    reader = GGUFReader(str(gguf_path))
    by_shape: dict[tuple[int, int], list] = {}
    for t in reader.tensors:
        if t.tensor_type.name in KINDS:
            kind, blocks = _blocks(t)
            conv = convert(kind, blocks)
            by_shape.setdefault(conv["dequant"].shape, []).append((kind, conv))
    model = onnx.load(str(fp32_path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    used: set[int] = set()
    counts: Counter = Counter()
    new_nodes, new_inits, drop = [], [], set()
    for node in g.node:
        w, W, bias = constant_linear(node, inits)
        if w is None:
            new_nodes.append(node)
            continue
        hit = None
        for kind, conv in by_shape.get(W.shape, []):
            if id(conv) in used:
                continue
            perm = _row_order(W, conv["dequant"])
            if perm is not None:
                hit = (kind, conv, perm)
                break
        if hit is None:
            counts["left"] += 1
            new_nodes.append(node)
            continue
        kind, conv, perm = hit
        used.add(id(conv))
        counts[kind] += 1
        N, K = W.shape
        name = w.name
        ins = [node.input[0], f"{name}_gguf_B", f"{name}_gguf_scales"]
        new_inits += [
            numpy_helper.from_array(np.ascontiguousarray(conv["B"][perm]), ins[1]),
            numpy_helper.from_array(np.ascontiguousarray(conv["scales"][perm]), ins[2]),
        ]
        if "zero_points" in conv:
            ins.append(f"{name}_gguf_zp")
            new_inits.append(numpy_helper.from_array(np.ascontiguousarray(conv["zero_points"][perm]), ins[3]))
        out = node.output[0]
        if bias is not None:  # a Gemm's C: added after the product
            out = f"{node.output[0]}_nobias"
        nbits_out = out if "m" not in conv else f"{out}_nbits"
        attrs = {"K": K, "N": N, "bits": conv["bits"], "block_size": BLOCK, "accuracy_level": accuracy_level}
        new_nodes.append(helper.make_node("MatMulNBits", ins, [nbits_out], name=f"{node.name or name}_gguf", domain="com.microsoft", **attrs))
        if "m" in conv:  # Q4_1: + (the input's sum over each block) @ m
            shape = f"{name}_gguf_blockshape"
            new_inits += [
                numpy_helper.from_array(np.array([0] * (2 if node.op_type == "MatMul" else 1) + [K // BLOCK, BLOCK], dtype=np.int64), shape),
                numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{name}_gguf_axis"),
                numpy_helper.from_array(np.ascontiguousarray(conv["m"][:, perm]), f"{name}_gguf_m"),
            ]
            new_nodes += [
                helper.make_node("Reshape", [node.input[0], shape], [f"{out}_blocks"]),
                helper.make_node("ReduceSum", [f"{out}_blocks", f"{name}_gguf_axis"], [f"{out}_blocksum"], keepdims=0),
                helper.make_node("MatMul", [f"{out}_blocksum", f"{name}_gguf_m"], [f"{out}_mterm"], name=f"{name}_gguf_mterm"),
                helper.make_node("Add", [nbits_out, f"{out}_mterm"], [out]),
            ]
        if bias is not None:
            new_nodes.append(helper.make_node("Add", [out, bias], [node.output[0]]))
        drop.add(name)
    del g.node[:]
    g.node.extend(new_nodes)
    keep = [i for i in g.initializer if i.name not in drop or any(i.name in n.input for n in new_nodes)]
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(out_path), save_as_external_data=True, all_tensors_to_one_file=True, location=out_path.name + ".data", size_threshold=1024)
    return {**counts, "keep_float": [n.name for n in new_nodes if n.name.endswith("_gguf_mterm")]}


def share_head_with_table(model_path: str | Path, emb: np.ndarray, table_path: str | Path) -> bool:
    """One copy of a tied ``token_embd``, as the GGUF has: if the graph's LM head is an 8-bit MatMulNBits whose
    weights read back exactly as the ``--embeddings int8`` table of ``emb [V, d]`` (its
    :func:`~edgeprompt.export.onnx.quant.q8_0` blocks: a transcoded Q8_0 head or a quantized one, tied to the input
    embeddings), write the
    embedding table as the head's own bytes, ``embeddings`` U8 ``[V, d]`` (q + 128, MatMulNBits' zero point) and
    ``embeddings_scale`` F32 ``[V, d/32]``, to ``table_path``, and point the head's ``B`` and ``scales`` into that
    file (ONNX external data: location, offset, length). Returns False, writing nothing, when there is no such head.
    """
    import json
    import os

    import onnx
    from onnx import helper, numpy_helper
    from onnx.external_data_helper import set_external_data

    from edgeprompt.core.constants import TENSOR_EMBEDDINGS, TENSOR_EMBEDDINGS_SCALE
    from edgeprompt.core.files import atomic_write_safetensors
    from edgeprompt.export.onnx.quant import q8_0

    model_path, table_path = Path(model_path), Path(table_path)
    V, d = emb.shape
    if d % BLOCK:
        return False
    model = onnx.load(str(model_path))
    inits = {i.name: i for i in model.graph.initializer}
    q, scale = q8_0(emb)  # the --embeddings int8 table of emb reads back as q * scale (an all-zero block: 0 * 1)
    table = (q.astype(np.float32).reshape(V, d // BLOCK, BLOCK) * scale[:, :, None]).reshape(V, d)
    for node in model.graph.node:
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        if node.op_type != "MatMulNBits" or a.get("bits") != 8 or a.get("N") != V or a.get("K") != d or len(node.input) != 3:
            continue
        if node.input[1] not in inits or node.input[2] not in inits:
            continue
        B = numpy_helper.to_array(inits[node.input[1]]).reshape(V, d)
        S = numpy_helper.to_array(inits[node.input[2]]).reshape(V, d // BLOCK).astype(np.float32)
        x = ((B.astype(np.float32) - 128).reshape(V, d // BLOCK, BLOCK) * S[:, :, None]).reshape(V, d)
        if not np.array_equal(x, table):
            continue
        atomic_write_safetensors(table_path, {TENSOR_EMBEDDINGS: B, TENSOR_EMBEDDINGS_SCALE: S})
        with open(table_path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        for name, key in ((node.input[1], TENSOR_EMBEDDINGS), (node.input[2], TENSOR_EMBEDDINGS_SCALE)):
            lo, hi = header[key]["data_offsets"]
            t = inits[name]
            t.raw_data = t.raw_data or numpy_helper.to_array(t).tobytes()  # set_external_data wants raw bytes present
            set_external_data(t, table_path.name, offset=8 + n + lo, length=hi - lo)
            t.ClearField("raw_data")  # the table file holds them; onnx's save writes only tensors with raw bytes
        data = model_path.with_name(model_path.name + ".data")
        if data.exists():
            os.unlink(data)  # onnx appends to an existing data file; everything else is in memory
        onnx.save_model(model, str(model_path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name, size_threshold=1024)
        return True
    return False
