"""Two backends behind one small interface: a *sequence* you feed and snapshot. No torch.

``backend.sequence(prefix)`` starts a request from a cached prefix (or empty); ``feed_ids`` /
``feed_embeds`` append tokens or soft-prompt rows and return the next-token logits ``[V]``;
``snapshot()`` returns a :class:`Prefix` that can start any number of later sequences.

- ONNX: a prefix is the list of present tensors; sequences are independent values, so
  requests run concurrently (``InferenceSession.run`` is thread-safe).
- llama.cpp: a prefix is a sequence-state blob (a prefix-tuning KV is written into one); a
  sequence holds the engine's lock from start to end, because one ``llama_context`` runs one
  request at a time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from edgeprompt.io import EdgePromptError


@dataclass
class Prefix:
    """A reusable start state: ``length`` positions, ``nbytes`` of memory, backend-specific ``data``."""

    length: int
    nbytes: int
    data: Any
    owner: Any = None  # the runtime's task entry it was made for (a replaced task's prefix is stale)


class OnnxBackend:
    name = "onnx"

    def __init__(self, engine):
        self.engine = engine
        self.vocab_size = engine.vocab_size
        self.hidden_size = engine.hidden_size
        self.n_ctx = None  # bounded by the model's positions only

    def prefix_from_kv(self, kv: np.ndarray) -> Prefix:
        st = self.engine.state_from_kv(kv)
        return Prefix(int(kv.shape[3]), self.engine.state_bytes(st), st)

    def sequence(self, prefix: Prefix | None = None) -> "_OnnxSequence":
        return _OnnxSequence(self.engine, prefix)

    def close(self) -> None:
        self.engine = None


class _OnnxSequence:
    def __init__(self, engine, prefix: Prefix | None):
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


class LlamaCppBackend:
    name = "llamacpp"

    def __init__(self, engine):
        self.engine = engine
        self.vocab_size = engine.vocab_size
        self.hidden_size = engine.hidden_size
        self.n_ctx = engine.n_ctx

    def prefix_from_kv(self, kv: np.ndarray) -> Prefix:
        """A prefix-tuning KV ``[L, 2, h, P, hd]`` as a sequence-state blob (see ``state_from_kv``)."""
        blob = self.engine.state_from_kv(kv)
        return Prefix(int(kv.shape[3]), len(blob), blob)

    def prefix_from_blob(self, blob: bytes, length: int) -> Prefix:
        import ctypes

        return Prefix(length, len(blob), (ctypes.c_uint8 * len(blob)).from_buffer_copy(blob))

    def sequence(self, prefix: Prefix | None = None) -> "_LlamaSequence":
        return _LlamaSequence(self.engine, prefix)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


class _LlamaSequence:
    def __init__(self, engine, prefix: Prefix | None):
        self.engine = engine
        self.prefix = prefix
        self._held = False

    def __enter__(self):
        me = threading.get_ident()
        if self.engine.owner == me:
            raise EdgePromptError(
                "this thread already has a llama.cpp request open (an unfinished generate() stream?): "
                "one llama.cpp context runs one sequence at a time; finish or close the first stream."
            )
        self.engine.lock.acquire()
        self.engine.owner = me
        try:
            if self.engine.closed:
                raise EdgePromptError("the runtime is closed; open the bundle again.")
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
