"""The runtime's task store: what it keeps per task, and how a task's prefix is made when cold.

Scales to thousands of tasks: at open only each task's manifest is read (its method, spec, P and
files), never its tensors, and the tensors' sha256 is checked the first time they are read (once per
open). A cold prefix reads the task's tensors from disk into the backend; a prompt-tuning prefix,
which needs a prefill of its P rows, may instead be read from a disk cache of computed prefixes
(``prefix_dir``, as llama-cpp-python's ``LlamaDiskCache`` keeps text prompts), or from the KV the
bundle ships (``--with-kv``).
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from safetensors.numpy import load as _st_load

from edgeprompt.core import schema
from edgeprompt.core.bank import BankTask
from edgeprompt.core.bundle import Bundle
from edgeprompt.core.constants import TASK_MANIFEST_FILE, TASK_TENSORS_FILE, TaskFormKeys, TaskKeys, TaskRecordKeys
from edgeprompt.core.errors import BankError, EdgePromptError, RequestError
from edgeprompt.core.files import atomic_write_bytes
from edgeprompt.core.methods import MethodSpec, PrefixKind, get_method
from edgeprompt.core.model_info import ModelInfo
from edgeprompt.core.tasks import TaskSpec
from edgeprompt.runtimes.backend import Backend, Prefix


@dataclass
class TaskEntry:
    """One task as the runtime holds it: a few hundred bytes, no tensors."""

    name: str
    method: MethodSpec
    spec: TaskSpec
    num_virtual_tokens: int
    read_tensors: Callable[[], bytes]  # the task's prefix.safetensors, verified
    shipped: Callable[[], bytes] | None = None  # a prefix precomputed for this backend (--with-kv)
    key: str = ""  # sha256 of the tensors file: names the task's computed prefix in a disk cache
    _verbalizers: list[list[int]] | None = field(default=None, repr=False)


def _parse_manifest(data: bytes, where: str) -> dict:
    return schema.decode(data, schema.TaskManifest, where, BankError, "train or import the task again")


class TaskStore:
    """Tasks by name, thread-safe. Made by the runtime; see the module docstring."""

    def __init__(self, backend: Backend, info: ModelInfo, encode: Callable[[str], list[int]], model_key: str = "", prefix_dir: str | Path | None = None):
        self.backend, self.info, self.encode = backend, info, encode
        self.model_key = model_key  # names the exact model file: a computed prefix is valid for it only
        self.prefix_dir = Path(prefix_dir) if prefix_dir is not None else None
        self._tasks: dict[str, TaskEntry] = {}
        self._lock = threading.Lock()

    # -- registration -----------------------------------------------------------------------------
    def load_bundle_tasks(self, bundle: Bundle) -> None:
        """Every task the bundle's manifest lists (no others): manifests read and verified, tensors not."""
        for name, rec in bundle.tasks.items():
            rel = bundle.task_dir(name)
            m = _parse_manifest(bundle.read_verified(rel + TASK_MANIFEST_FILE), f"task {name!r} of bundle {bundle.path}")
            shipped = None
            form = rec.get(TaskRecordKeys.FORMS, {}).get(self.backend.prefix_form.value)
            if form and TaskFormKeys.FILE in form:
                srel = form[TaskFormKeys.FILE]
                shipped = lambda srel=srel: bundle.read_verified(srel)  # noqa: E731
            tensors_rel = rel + TASK_TENSORS_FILE
            sha = (bundle.manifest.get("files") or {}).get(tensors_rel, {}).get("sha256", "")
            self._put(self._entry(name, m, lambda r=tensors_rel: bundle.read_verified(r), shipped, sha))

    def add(self, task: BankTask) -> TaskEntry:
        """A bank task loaded into the running runtime: its tensors read and checked now, then hashed on each read."""
        data = (task.path / TASK_TENSORS_FILE).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        path = task.path / TASK_TENSORS_FILE

        def read() -> bytes:
            b = path.read_bytes()
            if hashlib.sha256(b).hexdigest() != sha:
                raise BankError(f"{path} changed since the task was added; add the task again.")
            return b

        entry = self._entry(task.name, task.manifest, read, None, sha)
        self.tensors(entry, data)  # shape, P and finiteness checked now, not at the first request
        return self._put(entry)

    def _entry(self, name: str, m: dict, read: Callable[[], bytes], shipped, sha: str) -> TaskEntry:
        self.info.check_compatible(ModelInfo.from_dict(m[TaskKeys.BASE_MODEL]), f"task {name!r}")
        method = get_method(m[TaskKeys.METHOD])
        spec = TaskSpec.from_manifest(m)
        P = m[TaskKeys.NUM_VIRTUAL_TOKENS]
        if isinstance(P, bool) or not isinstance(P, int) or P < 1:
            raise BankError(f"task {name!r}: num_virtual_tokens is {P!r}; it must be a positive integer.")
        return TaskEntry(name, method, spec, P, read, shipped, key=sha)

    def _put(self, e: TaskEntry) -> TaskEntry:
        with self._lock:
            self._tasks[e.name] = e
        return e

    # -- lookup -----------------------------------------------------------------------------------
    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._tasks)

    def get(self, name: str) -> TaskEntry:
        with self._lock:
            e = self._tasks.get(name)
        if e is None:
            have = self.names()
            shown = ", ".join(have[:20]) + (f" ... ({len(have)} in all)" if len(have) > 20 else "")
            raise RequestError(f"unknown task {name!r}; this runtime has: {shown or 'none'} (or task=None for the plain model).")
        return e

    def is_current(self, e: TaskEntry) -> bool:
        with self._lock:
            return self._tasks.get(e.name) is e

    def verbalizers(self, e: TaskEntry) -> list[list[int]]:
        """Token ids of each label's verbalizer (classification), encoded on first use."""
        if e._verbalizers is None:
            e._verbalizers = e.spec.verbalizer_ids(self.encode)
        return e._verbalizers

    def items(self) -> list[tuple[str, TaskEntry]]:
        with self._lock:
            return list(self._tasks.items())

    # -- cold prefixes ----------------------------------------------------------------------------
    def tensors(self, e: TaskEntry, data: bytes | None = None) -> dict[str, np.ndarray]:
        """The task's folded tensors, read (verified), then checked: shape, P, finite."""
        data = e.read_tensors() if data is None else data
        try:
            t = _st_load(data)
        except Exception as err:  # safetensors raises several types for a torn or foreign file
            raise BankError(f"tensors of task {e.name!r} are not a readable safetensors file ({err}).") from None
        e.method.check_tensors(t, self.info, where=f"task {e.name!r}")
        P = e.method.num_virtual_tokens(t, self.info)
        if P != e.num_virtual_tokens:
            raise BankError(f"task {e.name!r}: its tensors hold P={P}, its manifest says {e.num_virtual_tokens}; the task is damaged.")
        return t

    def compute_prefix(self, e: TaskEntry) -> Prefix:
        """A cold prefix: from the task's KV (prefix kind KV), or for rows a shipped KV, the disk cache, or a prefill."""
        arr = e.method.prefix_array(self.tensors(e))
        if e.method.prefix_kind == PrefixKind.KV:
            return self.backend.prefix_from_kv(arr)
        if e.shipped is not None:
            p = self._from_bytes(e, e.shipped, "the KV shipped in the bundle")
            if p is not None:
                return p
        cached = self._disk_path(e)
        if cached is not None and cached.is_file():
            p = self._from_bytes(e, cached.read_bytes, f"the disk cache {cached}")
            if p is not None:
                return p
        p = self.prefill(arr)
        if cached is not None:
            atomic_write_bytes(cached, self.backend.prefix_to_bytes(p))
        return p

    def prefill(self, rows: np.ndarray) -> Prefix:
        """Rows ``[P, d]`` run through the model as input embeddings, snapshotted: a prompt's prefix."""
        with self.backend.sequence(None) as seq:
            seq.feed_embeds(rows)
            return seq.snapshot()

    def _from_bytes(self, e: TaskEntry, read: Callable[[], bytes], what: str) -> Prefix | None:
        try:
            return self.backend.prefix_from_bytes(read(), e.num_virtual_tokens)
        except EdgePromptError as err:  # a blob of another llama.cpp version: prefill, and say so
            warnings.warn(f"task {e.name!r}: {what} was refused ({err}); prefilling its prompt instead.", stacklevel=3)
            if what.startswith("the KV shipped"):
                e.shipped = None
            return None

    def _disk_path(self, e: TaskEntry) -> Path | None:
        if self.prefix_dir is None or not e.key:
            return None
        key = hashlib.sha256(f"{self.model_key}|{self.backend.name}|{self.backend.version}|{e.key}".encode()).hexdigest()[:24]
        return self.prefix_dir / f"{e.name}-{key}{self.backend.prefix_suffix}"
