"""The ONNX Runtime backend: sequences are independent values, so requests run concurrently.

A prefix is the list of present tensors ``2L x [1, h, n, hd]`` (see :mod:`.engine`); ORT never writes
into its inputs, so one cached prefix serves any number of requests at once.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from edgeprompt.core.constants import TENSOR_KV_PREFIX, ModelFormat, ModelKeys, TaskForm
from edgeprompt.core.errors import BundleError
from edgeprompt.runtimes.backend import Prefix
from edgeprompt.runtimes.onnx.engine import OnnxEngine


class OnnxBackend:
    name = "onnx"
    format = ModelFormat.ONNX
    prefix_form = TaskForm.KV_PREFIX
    prefix_suffix = ".safetensors"
    restore_copies = False

    def __init__(self, engine: OnnxEngine):
        self.engine = engine
        self.vocab_size = engine.vocab_size
        self.hidden_size = engine.hidden_size
        self.n_ctx = None  # bounded by the model's positions only
        import onnxruntime

        self.version = onnxruntime.__version__

    def prefix_from_kv(self, kv: np.ndarray) -> Prefix:
        st = self.engine.state_from_kv(kv)
        return Prefix(int(kv.shape[3]), self.engine.state_bytes(st), st)

    def prefix_to_bytes(self, prefix: Prefix) -> bytes:
        return _st_save({TENSOR_KV_PREFIX: self.engine.state_to_kv(prefix.data)})

    def prefix_from_bytes(self, data: bytes, length: int) -> Prefix:
        try:
            kv = _st_load(bytes(data))[TENSOR_KV_PREFIX]
        except Exception as e:  # safetensors raises several types for a torn or foreign file
            raise BundleError(f"a stored KV prefix is not a readable safetensors file with {TENSOR_KV_PREFIX!r} ({e}).") from None
        if kv.ndim != 5 or kv.shape[3] != length:
            raise BundleError(f"a stored KV prefix is {list(kv.shape)}, expected [L, 2, h, {length}, hd].")
        return self.prefix_from_kv(kv)

    def sequence(self, prefix: Prefix | None = None) -> "_OnnxSequence":
        return _OnnxSequence(self.engine, prefix)

    def memory(self) -> dict[str, int]:
        """The weights' file bytes and the embedding table onnxruntime's graph does not hold; no KV cache is
        allocated ahead: a sequence's past key/values (float32) grow with it."""
        e = self.engine
        return {
            "weights": e.model_file_bytes,
            "embeddings": (int(e.embeddings.nbytes) + (int(e.embeddings_scale.nbytes) if e.embeddings_scale is not None else 0))
            if e.embeddings is not None
            else 0,
            "kv_cache": 0,
            "kv_bytes_per_position": int(e.num_layers * 2 * e.num_kv_heads * e.head_dim * 4),
        }

    def close(self) -> None:
        self.engine = None


class _OnnxSequence:
    def __init__(self, engine: OnnxEngine, prefix: Prefix | None):
        self.engine = engine
        self.state = prefix.data if prefix is not None else engine.empty_state()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @property
    def length(self) -> int:
        return self.engine.state_length(self.state)

    def feed_embeds(self, embeds: np.ndarray) -> np.ndarray:
        logits, self.state = self.engine.forward(embeds, self.state)
        return logits

    def feed_ids(self, ids: Sequence[int]) -> np.ndarray:
        logits, self.state = self.engine.forward_ids(ids, self.state)
        return logits

    def snapshot(self) -> Prefix:
        return Prefix(self.length, self.engine.state_bytes(self.state), self.state)


def open_onnx(bundle, threads: int | None, n_ctx: int) -> OnnxBackend:
    """The backend over a bundle's ``decoder.onnx`` and embedding table (``n_ctx`` does not apply)."""
    del n_ctx
    return OnnxBackend(OnnxEngine(bundle.model_file, bundle.file(bundle.model[ModelKeys.EMBEDDINGS]), threads=threads))
