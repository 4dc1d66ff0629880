"""The prompt bank: many folded tasks for one frozen base model (torch-free; runtimes read it).

Layout and keys are in :mod:`edgeprompt.constants`. Each task is one folder written to a
temporary name and renamed into place, so a writer killed at any moment leaves the bank readable
with the previous version of the task (or without the new task), never a torn one.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeprompt.core import schema
from edgeprompt.core.constants import (
    BANK_FILE,
    BANK_FORMAT,
    BANK_VERSION,
    TASK_FORMAT,
    TASK_MANIFEST_FILE,
    TASK_TENSORS_FILE,
    TASK_VERSION,
    TASKS_DIR,
    BankKeys,
    TaskKeys,
)
from edgeprompt.core.errors import BankError
from edgeprompt.core.files import atomic_directory, atomic_write_json, atomic_write_safetensors, read_safetensors, recover_directory
from edgeprompt.core.methods import MethodSpec, get_method
from edgeprompt.core.model_info import ModelInfo
from edgeprompt.core.tasks import INPUT_RULE, TaskSpec

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def check_task_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):  # fullmatch: "$" would let a trailing newline through
        raise BankError(f"task name {name!r} is not allowed: use 1-100 letters, digits, '_', '-' or '.', starting with a letter or digit.")
    return name


def read_task_folder(path: Path, where: str = "") -> "BankTask":
    """A task folder (``manifest.json`` + ``prefix.safetensors``), its name, format, version and keys checked;
    its tensors are checked when read (:meth:`BankTask.tensors`) or added to a runtime. Reads only."""
    path = Path(path)
    name = check_task_name(path.name)
    if not (path / TASK_MANIFEST_FILE).is_file():
        raise BankError(f"{path} is not a task folder (no {TASK_MANIFEST_FILE}).")
    m = schema.read(
        path / TASK_MANIFEST_FILE,
        schema.TaskManifest,
        f"manifest of task {name!r}" + (f" in {where}" if where else ""),
        BankError,
        "remove the task and train or import it again",
    )
    return BankTask(name, path, m)


@dataclass
class BankTask:
    """One task of a bank: its manifest, and its tensors read on demand."""

    name: str
    path: Path
    manifest: dict[str, Any]

    @property
    def method(self) -> str:
        """The registered method's name (``prompt_tuning``, ``prefix_tuning``, ...)."""
        return self.method_spec.name

    @property
    def method_spec(self) -> MethodSpec:
        return get_method(self.manifest[TaskKeys.METHOD])

    @property
    def spec(self) -> TaskSpec:
        return TaskSpec.from_manifest(self.manifest)

    @property
    def num_virtual_tokens(self) -> int:
        return int(self.manifest[TaskKeys.NUM_VIRTUAL_TOKENS])

    @property
    def base_model(self) -> ModelInfo:
        return ModelInfo.from_dict(self.manifest[TaskKeys.BASE_MODEL])

    def tensors(self) -> dict[str, np.ndarray]:
        """The folded tensors, checked against the shapes and dtypes the manifest declares."""
        t = read_safetensors(self.path / TASK_TENSORS_FILE, f"tensors of task {self.name!r}")
        declared = self.manifest.get(TaskKeys.TENSORS, {})
        for key, d in declared.items():
            if key not in t:
                raise BankError(f"task {self.name!r}: {TASK_TENSORS_FILE} lacks tensor {key!r} that its manifest declares.")
            if list(t[key].shape) != list(d["shape"]) or str(t[key].dtype) != d["dtype"]:
                raise BankError(
                    f"task {self.name!r}: tensor {key!r} is {list(t[key].shape)} {t[key].dtype}, but the manifest says "
                    f"{d['shape']} {d['dtype']}; the task is corrupt: remove it and import or train it again."
                )
        return t


class PromptBank:
    """A folder of tasks for one base model.

    >>> bank = PromptBank("edgeprompt-bank")          # doctest: +SKIP
    >>> [t.name for t in bank.tasks()]                 # doctest: +SKIP
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- the bank ---------------------------------------------------------------------------
    @property
    def exists(self) -> bool:
        return (self.root / BANK_FILE).is_file()

    def base_model(self) -> ModelInfo | None:
        if not self.exists:
            return None
        meta = schema.read(self.root / BANK_FILE, schema.BankFile, "bank file", BankError)
        return ModelInfo.from_dict(meta[BankKeys.BASE_MODEL])

    def _ensure(self, info: ModelInfo) -> None:
        current = self.base_model()
        if current is None:
            atomic_write_json(
                self.root / BANK_FILE,
                {BankKeys.FORMAT: BANK_FORMAT, BankKeys.VERSION: BANK_VERSION, BankKeys.BASE_MODEL: info.to_dict()},
            )
        else:
            current.check_compatible(info, f"a task for base model {info.name}")

    def check_model(self, info: ModelInfo) -> None:
        """Refuse a model other than the one this bank is for (naming both)."""
        current = self.base_model()
        if current is not None:
            info.check_compatible(current, f"bank {self.root}")

    # -- tasks ------------------------------------------------------------------------------
    def _task_dir(self, name: str) -> Path:
        return self.root / TASKS_DIR / check_task_name(name)

    def names(self) -> list[str]:
        d = self.root / TASKS_DIR
        if not d.is_dir():
            return []
        for p in list(d.iterdir()):
            if p.name.startswith(".") and ".old-" in p.name:
                recover_directory(d / p.name[1:].rsplit(".old-", 1)[0])
        return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))

    def tasks(self) -> list[BankTask]:
        return [self.task(n) for n in self.names()]

    def task(self, name: str) -> BankTask:
        path = self._task_dir(name)
        recover_directory(path)
        if not path.is_dir():
            known = self.names()
            raise BankError(f"no task {name!r} in bank {self.root}; tasks: {', '.join(known) if known else '(none)'}.")
        return read_task_folder(path, where=f"bank {self.root}")

    def add(
        self,
        name: str,
        method: MethodSpec | str,
        tensors: dict[str, np.ndarray],
        spec: TaskSpec,
        info: ModelInfo,
        extra: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> BankTask:
        """Write a folded task (float32 tensors) and its manifest, atomically."""
        spec_m = method if isinstance(method, MethodSpec) else get_method(method)
        tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
        spec_m.check_tensors(tensors, info, where=f"task {name!r}")
        path = self._task_dir(name)
        if path.exists() and not overwrite:
            raise BankError(f"bank {self.root} already has a task {name!r}; pass --overwrite to replace it or choose another --name.")
        self._ensure(info)
        P = spec_m.num_virtual_tokens(tensors, info)
        manifest = {
            TaskKeys.FORMAT: TASK_FORMAT,
            TaskKeys.VERSION: TASK_VERSION,
            TaskKeys.NAME: name,
            TaskKeys.METHOD: spec_m.name,
            TaskKeys.KIND: spec.kind.value,
            TaskKeys.NUM_VIRTUAL_TOKENS: P,
            TaskKeys.TENSORS: {k: {"shape": list(v.shape), "dtype": "float32"} for k, v in tensors.items()},
            TaskKeys.TEMPLATE: spec.template,
            TaskKeys.INSTRUCTION: spec.instruction,
            TaskKeys.LABELS: list(spec.labels),
            TaskKeys.VERBALIZERS: dict(spec.verbalizers),
            **({TaskKeys.CALIBRATION: spec.calibration.to_dict()} if spec.calibration is not None else {}),
            TaskKeys.BASE_MODEL: info.to_dict(),
            TaskKeys.CREATED: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            TaskKeys.INPUT_RULE: dict(INPUT_RULE),
            **(extra or {}),
        }
        with atomic_directory(path) as tmp:
            atomic_write_safetensors(tmp / TASK_TENSORS_FILE, tensors, metadata={"format": TASK_FORMAT, "method": spec_m.name})
            atomic_write_json(tmp / TASK_MANIFEST_FILE, manifest)
        return self.task(name)

    def update_manifest(self, name: str, **fields: Any) -> BankTask:
        """Merge fields into a task's manifest (e.g. metrics measured after training), atomically."""
        task = self.task(name)
        atomic_write_json(task.path / TASK_MANIFEST_FILE, {**task.manifest, **fields})
        return self.task(name)

    def remove(self, name: str) -> None:
        path = self._task_dir(name)
        if not path.is_dir():
            self.task(name)  # raises, listing the tasks
        trash = path.parent / f".{name}.removed"
        shutil.rmtree(trash, ignore_errors=True)
        path.rename(trash)  # one rename: the task is gone at once
        shutil.rmtree(trash, ignore_errors=True)


def bank_size_bytes(task: BankTask) -> int:
    return sum(f.stat().st_size for f in task.path.iterdir() if f.is_file())
