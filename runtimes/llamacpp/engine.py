"""The llama.cpp engine over llama-cpp-python's low-level ctypes API. No torch.

One model, one context, one sequence (id 0). Tokens go in through ``llama_batch.token``,
soft-prompt rows through ``llama_batch.embd`` (a batch made with ``llama_batch_init(n, n_embd, 1)``).
A task's prefix is cached as a sequence-state blob (``llama_state_seq_get_data``) and restored
with ``llama_state_seq_set_data``: restoring replaces the sequence's KV cells, so the cost of a
warm task swap is a memcpy of the blob into the cache.

A llama.cpp context is not thread-safe: :class:`LlamaCppEngine` serialises its callers with a
lock (the runtime above it holds the lock across a whole request; ``owner`` is the thread that
holds it, so a second request opened by the same thread is refused instead of corrupting the first).
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeprompt.core.errors import EdgePromptError, InternalError
from edgeprompt.runtimes.backend import default_threads
from edgeprompt.runtimes.llamacpp.state_blob import GGML_TYPE_F32, fill_state

_backend_lock = threading.Lock()
_backend_ready = False


def _lib():
    try:
        import llama_cpp
    except ImportError:
        raise EdgePromptError("the llamacpp backend needs llama-cpp-python: pip install 'edgeprompt[llamacpp]'") from None
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            llama_cpp.llama_backend_init()
            _backend_ready = True
    return llama_cpp


def _quiet_logs(lib) -> None:
    @lib.llama_log_callback
    def _cb(level, text, user_data):  # noqa: ARG001
        return None

    _quiet_logs.cb = _cb  # keep a reference: llama.cpp holds the pointer
    lib.llama_log_set(_cb, ctypes.c_void_p(0))


class LlamaCppEngine:
    """Owns ``llama_model``, ``llama_context`` and two reusable batches; :meth:`close` frees them.

    >>> eng = LlamaCppEngine("model.gguf", n_ctx=2048)          # doctest: +SKIP
    >>> logits = eng.eval_tokens([12, 7])                         # [V], appended to sequence 0
    """

    def __init__(
        self,
        model_path: str | Path,
        n_ctx: int = 2048,
        threads: int | None = None,
        n_batch: int = 512,
        kv_f32: bool = False,
        flash_attn: bool = False,
        verbose: bool = False,
    ):
        lib = self._lib = _lib()
        if not verbose:
            _quiet_logs(lib)
        self.lock = threading.Lock()
        self.owner: int | None = None
        self._model = self._ctx = None
        self._tok_batch = self._emb_batch = None
        threads = int(threads or default_threads())
        mp = lib.llama_model_default_params()
        self._model = lib.llama_model_load_from_file(str(model_path).encode(), mp)
        if not self._model:
            raise EdgePromptError(f"llama.cpp could not load {model_path}; is it a complete GGUF model file?")
        cp = lib.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = cp.n_ubatch = n_batch
        cp.n_threads = cp.n_threads_batch = threads
        cp.n_seq_max = 1
        if kv_f32:
            cp.type_k = cp.type_v = GGML_TYPE_F32
        # llama.cpp's own default is "auto" (on where supported); stock llama_cpp.Llama turns it off,
        # and with an f16 KV cache the two differ by ~1e-3 in the logits: match stock by default.
        cp.flash_attn_type = 1 if flash_attn else 0
        self._ctx = lib.llama_init_from_model(self._model, cp)
        if not self._ctx:
            self._free()
            raise EdgePromptError(f"llama.cpp could not create a context of {n_ctx} tokens for {model_path}.")
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.vocab_size = lib.llama_vocab_n_tokens(self._vocab)
        self.hidden_size = lib.llama_model_n_embd(self._model)
        self.num_layers = lib.llama_model_n_layer(self._model)
        self.n_ctx = lib.llama_n_ctx(self._ctx)
        self.n_batch = min(n_batch, lib.llama_n_batch(self._ctx))  # llama.cpp clamps it to the context asked for
        self.threads = threads
        self.kv_f32 = kv_f32
        self._mem = lib.llama_get_memory(self._ctx)
        self._tok_batch = lib.llama_batch_init(n_batch, 0, 1)
        self._emb_batch = lib.llama_batch_init(n_batch, self.hidden_size, 1)
        self.n_past = 0
        self._templates: dict[int, bytes] = {}

    # -- lifetime -------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return not self._ctx

    def close(self) -> None:
        """Free the batches, the context and the model (safe to call twice; waits for a running request)."""
        acquired = self.lock.acquire(timeout=30) if self.owner != threading.get_ident() else False
        try:
            self._free()
        finally:
            if acquired:
                self.lock.release()

    def _free(self) -> None:
        lib = self._lib
        if self._tok_batch is not None:
            lib.llama_batch_free(self._tok_batch)
            self._tok_batch = None
        if self._emb_batch is not None:
            lib.llama_batch_free(self._emb_batch)
            self._emb_batch = None
        if self._ctx:
            lib.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            lib.llama_model_free(self._model)
            self._model = None

    def __del__(self):
        try:
            self._free()
        except Exception:
            pass

    # -- sequence -------------------------------------------------------------------------------
    def reset(self) -> None:
        """Empty sequence 0: its cells are marked free (``data=False``). Zeroing the buffers as well would
        write the whole KV cache (n_ctx x 2L rows: 47 MB for SmolLM2 at 2,048) on every request, and free
        cells are masked out of attention whatever they hold."""
        self._lib.llama_memory_clear(self._mem, False)
        self.n_past = 0

    def _check_room(self, n: int) -> None:
        if self.n_past + n > self.n_ctx:
            raise EdgePromptError(f"{self.n_past} + {n} tokens exceed the context of {self.n_ctx}; open the bundle with a larger n_ctx.")

    def _decode(self, batch, n: int) -> np.ndarray:
        batch.n_tokens = n
        for i in range(n):
            batch.pos[i] = self.n_past + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i == n - 1
        rc = self._lib.llama_decode(self._ctx, batch)
        if rc != 0:
            raise EdgePromptError(f"llama_decode failed (code {rc}) at position {self.n_past}.")
        self.n_past += n
        ptr = self._lib.llama_get_logits_ith(self._ctx, n - 1)
        return np.ctypeslib.as_array(ptr, shape=(self.vocab_size,)).copy()

    def eval_tokens(self, ids: Sequence[int]) -> np.ndarray:
        """Append token ids to the sequence; return the last position's logits ``[V]``."""
        ids = list(ids)
        if not ids:
            raise EdgePromptError("eval_tokens needs at least one token.")
        self._check_room(len(ids))
        logits = None
        for s in range(0, len(ids), self.n_batch):
            chunk = ids[s : s + self.n_batch]
            b = self._tok_batch
            for i, t in enumerate(chunk):
                b.token[i] = int(t)
            logits = self._decode(b, len(chunk))
        return logits

    def eval_embeddings(self, embeds: np.ndarray) -> np.ndarray:
        """Append input-embedding rows ``[P, d]`` (a soft prompt); return the last logits ``[V]``."""
        embeds = np.ascontiguousarray(embeds, dtype=np.float32)
        if embeds.ndim != 2 or embeds.shape[1] != self.hidden_size:
            raise EdgePromptError(f"embeddings must be [P, {self.hidden_size}], got {list(embeds.shape)}.")
        self._check_room(embeds.shape[0])
        logits = None
        d = self.hidden_size
        for s in range(0, embeds.shape[0], self.n_batch):
            chunk = embeds[s : s + self.n_batch]
            n = chunk.shape[0]
            ctypes.memmove(self._emb_batch.embd, chunk.ctypes.data, n * d * 4)
            logits = self._decode(self._emb_batch, n)
        return logits

    # -- state ----------------------------------------------------------------------------------
    def save_state(self) -> ctypes.Array:
        """Sequence 0's KV cells as a blob (``llama_state_seq_get_data``); ``bytes(blob)`` to store it."""
        lib = self._lib
        size = lib.llama_state_seq_get_size(self._ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        n = lib.llama_state_seq_get_data(self._ctx, buf, size, 0)
        if n != size:
            raise EdgePromptError(f"llama_state_seq_get_data wrote {n} of {size} bytes.")
        return buf

    def state_from_kv(self, kv: np.ndarray) -> ctypes.Array:
        """A sequence-state blob holding a per-layer KV prefix ``[L, 2, h, P, hd]`` (transformers layout).

        llama.cpp takes a KV cache only through its sequence state. The blob's layout is read off
        a real one (``P`` dummy tokens prefilled, then saved) and only its K/V payload is replaced:
        cells 0..P-1 of sequence 0; per layer K rows ``[P, h*hd]``; V the same or transposed
        ``[h*hd, P]`` (``v_trans``, without flash attention). Keys are rotated per head into
        llama.cpp's interleaved rotary layout, as the GGUF converter permutes q/k weights. Any
        layout surprise (another llama.cpp version, a quantized cache) raises instead of guessing.
        """
        kv = np.asarray(kv, dtype=np.float32)
        L, two, h, P, hd = kv.shape
        if L != self.num_layers or two != 2:
            raise EdgePromptError(f"KV prefix {list(kv.shape)} does not fit a model of {self.num_layers} layers.")
        template = self._templates.get(P)
        if template is None:  # the layout depends on P only: one prefill of P dummy tokens per P
            with self.lock:
                self.reset()
                self.eval_tokens([0] * P)
                template = self._templates[P] = bytes(self.save_state())
                self.reset()
        blob = bytearray(template)
        try:
            return fill_state(blob, kv)
        except InternalError as e:
            raise EdgePromptError(
                f"this llama.cpp's sequence-state layout is not the one edgeprompt knows ({e}); open the bundle with backend='onnx' for prefix-tuning tasks."
            ) from None

    def model_bytes(self) -> int:
        """Bytes of the model's tensors (``llama_model_size``)."""
        return int(self._lib.llama_model_size(self._model))

    def memory(self) -> dict[str, int]:
        """What llama.cpp says of this engine: the weights' bytes and parameters, and the KV cache it
        allocated at context creation: ``n_ctx x L x (K + V rows of n_head_kv x head_dim)`` at the cache's type."""
        lib = self._lib
        n_head, n_head_kv = lib.llama_model_n_head(self._model), lib.llama_model_n_head_kv(self._model)
        head_dim = self.hidden_size // max(n_head, 1)
        elt = 4 if self.kv_f32 else 2
        return {
            "weights": self.model_bytes(),
            "n_params": int(lib.llama_model_n_params(self._model)),
            "kv_cache": int(self.n_ctx * self.num_layers * 2 * n_head_kv * head_dim * elt),
            "kv_bytes_per_position": int(self.num_layers * 2 * n_head_kv * head_dim * elt),
        }

    def load_state(self, blob: bytes | ctypes.Array, n_past: int) -> None:
        """Replace sequence 0 with a blob from :meth:`save_state` holding ``n_past`` positions."""
        lib = self._lib
        lib.llama_memory_clear(self._mem, False)  # see reset()
        buf = (ctypes.c_uint8 * len(blob)).from_buffer_copy(blob) if not isinstance(blob, ctypes.Array) else blob
        n = lib.llama_state_seq_set_data(self._ctx, buf, len(blob), 0)
        if n == 0:
            self.n_past = 0
            raise EdgePromptError("llama.cpp refused the sequence state (made by another model or llama.cpp version?).")
        self.n_past = n_past
