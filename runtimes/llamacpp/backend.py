"""The llama.cpp backend: one ``llama_context`` runs one sequence at a time.

A prefix is a sequence-state blob (``llama_state_seq_get_data``); a prefix-tuning KV is written into one
(:mod:`.state_blob`). A sequence holds the engine's lock from start to end; the lock is a plain Lock with
an owner, so a stream started in one thread may be finished in another, and a second request opened by
the same thread is refused instead of corrupting the first.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Sequence

import numpy as np

from edgeprompt.core.constants import FULL_PRECISION_QUANTS, LLAMA_STATE_SUFFIX, ModelFormat, ModelKeys, TaskForm
from edgeprompt.core.errors import RequestError
from edgeprompt.runtimes.backend import Prefix
from edgeprompt.runtimes.llamacpp.engine import LlamaCppEngine


class LlamaCppBackend:
    name = "llamacpp"
    format = ModelFormat.GGUF
    prefix_form = TaskForm.LLAMA_STATE
    prefix_suffix = LLAMA_STATE_SUFFIX
    restore_copies = True

    def __init__(self, engine: LlamaCppEngine):
        self.engine = engine
        self.vocab_size = engine.vocab_size
        self.hidden_size = engine.hidden_size
        self.n_ctx = engine.n_ctx
        import llama_cpp

        self.version = llama_cpp.__version__

    def prefix_from_kv(self, kv: np.ndarray) -> Prefix:
        """A prefix-tuning KV ``[L, 2, h, P, hd]`` as a sequence-state blob (see ``state_from_kv``)."""
        blob = self.engine.state_from_kv(kv)
        return Prefix(int(kv.shape[3]), len(blob), blob)

    def prefix_to_bytes(self, prefix: Prefix) -> bytes:
        return bytes(prefix.data)

    def prefix_from_bytes(self, data: bytes, length: int) -> Prefix:
        """A stored blob; checked by restoring it once (a blob of another llama.cpp or model is refused here)."""
        p = Prefix(length, len(data), (ctypes.c_uint8 * len(data)).from_buffer_copy(data))
        with self.sequence(p):
            pass
        return p

    def sequence(self, prefix: Prefix | None = None) -> "_LlamaSequence":
        return _LlamaSequence(self.engine, prefix)

    def memory(self) -> dict[str, int]:
        return self.engine.memory()

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


class _LlamaSequence:
    def __init__(self, engine: LlamaCppEngine, prefix: Prefix | None):
        self.engine = engine
        self.prefix = prefix
        self._held = False

    def __enter__(self):
        me = threading.get_ident()
        if self.engine.owner == me:
            raise RequestError(
                "this thread already has a llama.cpp request open (an unfinished generate() stream?): "
                "one llama.cpp context runs one sequence at a time; finish or close the first stream."
            )
        self.engine.lock.acquire()
        self.engine.owner = me
        try:
            if self.engine.closed:
                raise RequestError("the runtime is closed; open the bundle again.")
            if self.prefix is None:
                self.engine.reset()
            else:
                self.engine.load_state(self.prefix.data, self.prefix.length)
        except BaseException:
            self.engine.owner = None
            self.engine.lock.release()
            raise
        self._held = True
        return self

    def __exit__(self, *exc):
        # A plain Lock: a stream started in one thread may be finished in another.
        if self._held:
            self._held = False
            self.engine.owner = None
            self.engine.lock.release()
        return False

    def _check(self):
        if not self._held:
            raise RuntimeError("a llama.cpp sequence must be used inside 'with'.")

    @property
    def length(self) -> int:
        return self.engine.n_past

    def feed_embeds(self, embeds: np.ndarray) -> np.ndarray:
        self._check()
        return self.engine.eval_embeddings(embeds)

    def feed_ids(self, ids: Sequence[int]) -> np.ndarray:
        self._check()
        return self.engine.eval_tokens(ids)

    def snapshot(self) -> Prefix:
        self._check()
        blob = self.engine.save_state()
        return Prefix(self.engine.n_past, len(blob), blob)


def open_llamacpp(bundle, threads: int | None, n_ctx: int) -> LlamaCppBackend:
    """The backend over a bundle's GGUF; the context is capped at the model's trained context.

    A full-precision bundle gets an f32 KV cache, so its logits meet the parity gate's fp32 bound.
    """
    trained = int(bundle.model.get(ModelKeys.CONTEXT_LENGTH) or n_ctx)
    eng = LlamaCppEngine(bundle.model_file, n_ctx=min(n_ctx, trained), threads=threads, kv_f32=bundle.quant in FULL_PRECISION_QUANTS)
    return LlamaCppBackend(eng)
