"""llama.cpp's sequence-state blob: where a per-layer KV prefix goes in it (numpy; no llama.cpp call).

llama.cpp takes a KV cache only through its sequence state (``llama_state_seq_set_data``). The layout
was read off real blobs (``P`` dummy tokens prefilled, then saved); :func:`fill_state` overwrites only
the K/V payload of such a template and checks every header field it passes. A layout it does not know
(another llama.cpp version, a quantized cache) raises :class:`InternalError` instead of guessing;
every check survives ``python -O``.

Blob (one stream, sequence 0, P cells)::

    u64 (kept)  u32 n_stream=1  u32 cells=P
    P x (i32 pos=i, u32 n_seq=1, i32 seq=0)
    u32 v_trans  u32 n_layer=L
    L x K:  i32 type  u64 row_bytes  P rows of h*hd          (type: f32 or f16)
    L x V:  same as K, or (v_trans) i32 type u32 el_bytes u32 h*hd, then [h*hd, P]
"""

from __future__ import annotations

import ctypes
import struct

import numpy as np

from edgeprompt.core.errors import InternalError, internal_check

#: ggml type ids for the KV cache (llama.cpp's ggml_type enum).
GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1

_KV_DTYPES = {GGML_TYPE_F32: np.float32, GGML_TYPE_F16: np.float16}


def _dtype(t: int):
    internal_check(t in _KV_DTYPES, f"KV cache type {t} is not f32 or f16 (a quantized cache?)")
    return _KV_DTYPES[t]


def _put_rows(blob: bytearray, off: int, x: np.ndarray) -> int:
    """Write one layer's ``x [h, P, hd]`` as P rows of ``h*hd`` (type and row size read from the blob)."""
    h, P, hd = x.shape
    t, row = struct.unpack_from("<iQ", blob, off)
    off += 12
    dt = _dtype(t)
    internal_check(row == h * hd * np.dtype(dt).itemsize, f"row of {row} bytes")
    data = np.ascontiguousarray(x.transpose(1, 0, 2).reshape(P, h * hd), dtype=dt).tobytes()
    blob[off : off + len(data)] = data
    return off + len(data)


def fill_state(blob: bytearray, kv: np.ndarray) -> ctypes.Array:
    """Write ``kv [L, 2, h, P, hd]`` into a sequence-state ``blob`` of P cells (the module docstring)."""
    try:
        return _fill(blob, kv)
    except (struct.error, ValueError, IndexError) as e:  # a blob shorter or shaped otherwise than expected
        raise InternalError(f"the state blob does not parse ({e})") from None


def _fill(blob: bytearray, kv: np.ndarray) -> ctypes.Array:
    L, _, h, P, hd = kv.shape
    off = 8  # a u64 the context writes first (kept as is)
    n_stream, cells = struct.unpack_from("<II", blob, off)
    off += 8
    internal_check(n_stream == 1, f"{n_stream} streams")
    internal_check(cells == P, f"{cells} cells for {P} positions")
    for i in range(P):
        pos, n_seq, seq = struct.unpack_from("<iIi", blob, off)
        internal_check((pos, n_seq, seq) == (i, 1, 0), f"cell {i} is {(pos, n_seq, seq)}")
        off += 12
    v_trans, n_layer = struct.unpack_from("<II", blob, off)
    off += 8
    internal_check(n_layer == L, f"{n_layer} layers")
    # transformers' rotate_half layout -> llama.cpp's interleaved pairs, per head: d' = 2i + j <- j*hd/2 + i
    perm = np.arange(hd).reshape(2, hd // 2).T.reshape(-1)
    k = kv[:, 0][..., perm]  # (L, h, P, hd)
    v = kv[:, 1]
    for layer in range(L):
        off = _put_rows(blob, off, k[layer])
    for layer in range(L):
        if not v_trans:
            off = _put_rows(blob, off, v[layer])
            continue
        t, el, n_embd = struct.unpack_from("<iII", blob, off)
        off += 12
        dt = _dtype(t)
        internal_check(el == np.dtype(dt).itemsize and n_embd == h * hd, f"V {el} bytes x {n_embd}")
        data = np.ascontiguousarray(v[layer].transpose(0, 2, 1).reshape(h * hd, P), dtype=dt).tobytes()  # [h*hd, P]
        blob[off : off + len(data)] = data
        off += len(data)
    internal_check(off == len(blob), f"{len(blob) - off} bytes left over")
    return (ctypes.c_uint8 * len(blob)).from_buffer(blob)
