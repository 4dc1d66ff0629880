"""The backend interface: what the runtime, the export's shipped-KV step and the profiler ask of an engine.

A backend runs one frozen model. A request is a *sequence*: started empty or from a :class:`Prefix`
(a task's cached start state), fed token ids or soft-prompt rows, each feed returning the next-token
logits ``[V]``, and snapshotted into a new :class:`Prefix`. Callers never ask which backend they hold
(as llama-cpp-python's ``BaseLlamaCache``): a difference between engines is a method here.

Two implementations: :mod:`edgeprompt.runtimes.onnx` (ONNX Runtime) and
:mod:`edgeprompt.runtimes.llamacpp` (llama.cpp). :data:`BACKENDS` maps each model format to its backend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Protocol, Sequence, runtime_checkable

import numpy as np

from edgeprompt.core.constants import ModelFormat, TaskForm


@dataclass
class Prefix:
    """A reusable start state: ``length`` positions, ``nbytes`` of memory, backend-specific ``data``."""

    length: int
    nbytes: int
    data: Any
    owner: Any = None  # the runtime's task entry it was made for (a replaced task's prefix is stale)


@runtime_checkable
class BackendSequence(Protocol):
    """One request in flight (a context manager: ``with backend.sequence(prefix) as seq:``)."""

    @property
    def length(self) -> int:
        """Positions in the sequence so far (prefix included)."""

    def feed_ids(self, ids: Sequence[int]) -> np.ndarray:
        """Append token ids ``[T]``; return the last position's logits ``[V]``."""

    def feed_embeds(self, embeds: np.ndarray) -> np.ndarray:
        """Append input-embedding rows ``[T, d]`` (a soft prompt); return the last logits ``[V]``."""

    def snapshot(self) -> Prefix:
        """The sequence so far as a :class:`Prefix` that can start any number of later sequences."""


@runtime_checkable
class Backend(Protocol):
    """An engine behind the runtime. See the module docstring."""

    name: str
    version: str  # the engine library's version (a computed prefix is valid for it only)
    format: ModelFormat
    vocab_size: int  # rows of the model's output (may exceed the base vocabulary: virtual tokens)
    hidden_size: int
    n_ctx: int | None  # positions a sequence may hold; None: bounded by the model's trained context
    #: the file form in which this backend's precomputed prefixes ship (``--with-kv``) and are cached on disk
    prefix_form: TaskForm
    prefix_suffix: str  # file name ending of that form
    #: whether starting a sequence from a prefix copies its bytes (llama.cpp writes the blob into its KV
    #: cache) or only references them (ONNX passes the arrays as past key/values): the profiler's cost model
    restore_copies: bool

    def sequence(self, prefix: Prefix | None = None) -> ContextManager[BackendSequence]: ...

    def prefix_from_kv(self, kv: np.ndarray) -> Prefix:
        """A per-layer KV prefix ``[L, 2, kv_heads, P, head_dim]`` (transformers' layout) as a start state."""

    def prefix_to_bytes(self, prefix: Prefix) -> bytes:
        """A prefix as a file of :attr:`prefix_form` (shipped in a bundle, or kept in a disk cache)."""

    def prefix_from_bytes(self, data: bytes, length: int) -> Prefix:
        """The inverse of :meth:`prefix_to_bytes`. Raises ``EdgePromptError`` for a blob this engine refuses."""

    def memory(self) -> dict[str, int]:
        """What the engine can say of its memory, in bytes (keys like ``weights``, ``kv_cache``, ``compute``)."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class BackendEntry:
    """A registered backend: its CLI name, the model format it runs, and how to open it on a bundle."""

    name: str
    format: ModelFormat
    #: (bundle, threads, n_ctx) -> Backend; imports its engine only when called
    open: Callable[[Any, int | None, int], Backend]
    install_hint: str


def _open_onnx(bundle, threads, n_ctx):
    from edgeprompt.runtimes.onnx.backend import open_onnx

    return open_onnx(bundle, threads, n_ctx)


def _open_llamacpp(bundle, threads, n_ctx):
    from edgeprompt.runtimes.llamacpp.backend import open_llamacpp

    return open_llamacpp(bundle, threads, n_ctx)


#: The backends, by name. ``auto`` (the CLI's default) picks the one whose format the bundle holds.
BACKENDS: dict[str, BackendEntry] = {
    "onnx": BackendEntry("onnx", ModelFormat.ONNX, _open_onnx, "pip install 'edgeprompt[runtime]'"),
    "llamacpp": BackendEntry("llamacpp", ModelFormat.GGUF, _open_llamacpp, "pip install 'edgeprompt[llamacpp]'"),
}


def backend_for_format(fmt: ModelFormat) -> BackendEntry:
    for e in BACKENDS.values():
        if e.format == fmt:
            return e
    raise KeyError(fmt)


def default_threads() -> int:
    """Physical-ish cores: all of them up to 4, then leave one for the rest of the system.

    Decoding is memory-bound; beyond ~4-6 threads on a laptop or a Pi it gains little and
    contends with everything else. ``EDGEPROMPT_THREADS`` overrides.
    """
    env = os.environ.get("EDGEPROMPT_THREADS")
    if env:
        return max(1, int(env))
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return n if n <= 4 else min(n - 1, 8)
