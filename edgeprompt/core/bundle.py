"""Reading a bundle written by ``edgeprompt export`` (torch-free: the runtimes use this).

Layout and keys: :mod:`edgeprompt.constants` (``BundleKeys`` and the file names). Opening a
bundle checks its format, that it was made for the model its bank was trained for, and (unless
told not to) every file's size and sha256 against the manifest, so a truncated or corrupted model
file is refused at open, by name, not discovered as garbage output later.
"""

from __future__ import annotations

import hashlib
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeprompt.core import schema
from edgeprompt.core.bank import PromptBank
from edgeprompt.core.constants import (
    BANK_FILE,
    BUNDLE_BANK_DIR,
    BUNDLE_KV_DIR,
    BUNDLE_MANIFEST_FILE,
    BUNDLE_PROBES_DIR,
    BUNDLE_TOKENIZER_FILE,
    FULL_PRECISION_QUANTS,
    PROBES_FILE,
    PROBES_REFERENCE_FILE,
    TASK_MANIFEST_FILE,
    TASKS_DIR,
    TENSOR_REFERENCE_LOGITS,
    BankKeys,
    BundleKeys,
    FileKeys,
    ModelFormat,
    ModelKeys,
    TaskFormKeys,
    TaskRecordKeys,
)
from edgeprompt.core.errors import BundleError
from edgeprompt.core.files import file_sha256, read_safetensors, set_aside_copy
from edgeprompt.core.model_info import ModelInfo
from edgeprompt.core.parity import ParityResult, Probe, load_probes


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path, verify: bool = True, lazy_tasks: bool = False) -> "Bundle":
        path = Path(path)
        aside = set_aside_copy(path)
        if aside is not None and (aside / BUNDLE_MANIFEST_FILE).is_file():  # an export --overwrite was cut between its renames
            warnings.warn(
                f"{path} is missing: an export over it was cut between its two renames; opening its previous version, "
                f"set aside as {aside.name} (export again, or any export to {path} puts it back).",
                stacklevel=2,
            )
            path = aside
        mpath = path / BUNDLE_MANIFEST_FILE
        if not path.is_dir() or not mpath.exists():
            raise BundleError(f"{path} is not an edgeprompt bundle (no {BUNDLE_MANIFEST_FILE}); make one with `edgeprompt export`.")
        m = schema.read(mpath, schema.BundleManifest, "bundle manifest", BundleError, "re-export the bundle")
        b = cls(path, m)
        b.checked = verify
        if verify:
            b.verify_files(lazy_tasks=lazy_tasks)
        bank_model = b._bank_model()
        if bank_model is not None:
            b.base_model.check_compatible(bank_model, f"the bank in bundle {path}")
        return b

    def _bank_model(self) -> ModelInfo | None:
        """The base model its bank records (``bank.json``, read verified: opening never writes)."""
        rel = f"{BUNDLE_BANK_DIR}/{BANK_FILE}"
        if rel not in (self.manifest.get(BundleKeys.FILES) or {}) and not (self.checked is False and (self.path / rel).is_file()):
            return None
        meta = schema.decode(self.read_verified(rel), schema.BankFile, f"bundle {self.path}: {rel}", BundleError, "re-export the bundle")
        return ModelInfo.from_dict(meta[BankKeys.BASE_MODEL])

    def resolve(self, rel: str) -> Path:
        """The path of a file the manifest names, confined to the bundle: relative, no ``..``, no symlink,
        a regular file (a FIFO or a device would hang a reader). Refused otherwise, without reading it."""
        if not isinstance(rel, str) or not rel or "\x00" in rel:
            raise BundleError(f"bundle {self.path}: {rel!r} is not a file name; the manifest is damaged: re-export the bundle.")
        parts = rel.replace("\\", "/").split("/")
        if rel.startswith("/") or os.path.isabs(rel) or any(p in ("", ".", "..") for p in parts):
            raise BundleError(f"bundle {self.path}: the manifest names {rel!r}, a path outside the bundle or not normalized; refused.")
        cur = self.path
        for i, part in enumerate(parts):
            cur = cur / part
            try:
                st = os.lstat(cur)
            except OSError:
                raise BundleError(f"bundle {self.path}: file {rel} is missing; re-export the bundle.") from None
            if stat.S_ISLNK(st.st_mode):
                raise BundleError(f"bundle {self.path}: {rel} is (or passes through) a symbolic link; a bundle holds its own files: refused.")
            last = i == len(parts) - 1
            if not last and not stat.S_ISDIR(st.st_mode):
                raise BundleError(f"bundle {self.path}: file {rel} is missing; re-export the bundle.")
            if last and not stat.S_ISREG(st.st_mode):
                raise BundleError(f"bundle {self.path}: {rel} is not a regular file (a FIFO, device or folder); refused.")
        return cur

    def task_dir(self, name: str) -> str:
        """A task's folder in the bundle, relative to it."""
        return f"{BUNDLE_BANK_DIR}/{TASKS_DIR}/{name}/"

    def verify_files(self, hashes: bool = True, lazy_tasks: bool = False) -> None:
        """Check every file the manifest lists: present, the recorded size, the recorded sha256.

        The files a runtime reads (model, embeddings, tokenizer, every task's tensors and shipped
        KV) must all be listed: a manifest that leaves one out is refused, not trusted.

        ``lazy_tasks``: the files of tasks (their folder in the bank and their shipped KV) get their
        size checked here but their sha256 only when first read (:meth:`read_verified`), so opening a
        bundle of 1,000 tasks hashes the model and the tokenizer, not 1,000 tasks.
        """
        files = self.manifest.get(BundleKeys.FILES) or {}
        needed = [self.model[ModelKeys.FILE], BUNDLE_TOKENIZER_FILE]
        if ModelKeys.EMBEDDINGS in self.model:
            needed.append(self.model[ModelKeys.EMBEDDINGS])
        if self.format == ModelFormat.ONNX:  # onnxruntime reads external data the graph names beside it: all must be checked
            model_dir = self.resolve(self.model[ModelKeys.FILE]).parent
            rel_dir = os.path.dirname(self.model[ModelKeys.FILE])
            needed += [f"{rel_dir}/{p.name}" if rel_dir else p.name for p in sorted(model_dir.iterdir())]
        for name, rec in self.tasks.items():
            needed += [f[TaskFormKeys.FILE] for f in rec.get(TaskRecordKeys.FORMS, {}).values() if TaskFormKeys.FILE in f]
            needed.append(f"{BUNDLE_BANK_DIR}/{TASKS_DIR}/{name}/{TASK_MANIFEST_FILE}")
        unlisted = [f for f in needed if f not in files]
        if unlisted:
            raise BundleError(
                f"bundle {self.path}: the manifest does not list {', '.join(unlisted)} among its checked files; "
                "the bundle is incomplete or was edited: re-export it."
            )
        for rel, rec in files.items():
            f = self.resolve(rel)
            if not isinstance(rec, dict) or not isinstance(rec.get(FileKeys.BYTES), int) or not isinstance(rec.get(FileKeys.SHA256), str):
                raise BundleError(f"bundle {self.path}: the manifest's record of {rel} lacks its bytes or sha256; re-export the bundle.")
            size = f.stat().st_size
            if size != rec[FileKeys.BYTES]:
                raise BundleError(
                    f"bundle {self.path}: file {rel} has {size:,} bytes, the manifest says {rec[FileKeys.BYTES]:,} "
                    "(truncated or replaced); re-export or re-copy the bundle."
                )
            if hashes and not (lazy_tasks and self.is_task_file(rel)) and file_sha256(f) != rec[FileKeys.SHA256]:
                raise BundleError(f"bundle {self.path}: file {rel} does not match its sha256 in the manifest (corrupted); re-copy the bundle.")

    def is_task_file(self, rel: str) -> bool:
        return rel.startswith(f"{BUNDLE_BANK_DIR}/{TASKS_DIR}/") or rel.startswith(f"{BUNDLE_KV_DIR}/")

    #: False when opened with ``verify=False`` (the export's own parity gate reads the bundle it is writing)
    checked = True

    def read_verified(self, rel: str) -> bytes:
        """A listed file's bytes, checked against its size and sha256 in the manifest (unless opened unverified)."""
        if not self.checked:
            try:
                return self.resolve(rel).read_bytes()
            except OSError as e:
                raise BundleError(f"bundle {self.path}: cannot read {rel} ({e.strerror}).") from None
        rec = (self.manifest.get(BundleKeys.FILES) or {}).get(rel)
        if rec is None:
            raise BundleError(f"bundle {self.path}: {rel} is not among the manifest's checked files; re-export the bundle.")
        try:
            data = self.resolve(rel).read_bytes()
        except OSError as e:
            raise BundleError(f"bundle {self.path}: cannot read {rel} ({e.strerror}); re-copy the bundle.") from None
        if len(data) != rec[FileKeys.BYTES] or hashlib.sha256(data).hexdigest() != rec[FileKeys.SHA256]:
            raise BundleError(f"bundle {self.path}: file {rel} does not match its size and sha256 in the manifest (corrupted); re-copy the bundle.")
        return data

    @property
    def base_model(self) -> ModelInfo:
        return ModelInfo.from_dict(self.manifest[BundleKeys.BASE_MODEL])

    @property
    def model(self) -> dict[str, Any]:
        return self.manifest[BundleKeys.MODEL]

    @property
    def format(self) -> ModelFormat:
        return ModelFormat(self.model[ModelKeys.FORMAT])

    @property
    def quant(self) -> str:
        return self.model[ModelKeys.QUANT]

    @property
    def full_precision(self) -> bool:
        """fp32 weights and an fp32 embedding table: the parity gate then holds logits to the fp32 bound."""
        return self.quant in FULL_PRECISION_QUANTS and self.model.get(ModelKeys.EMBEDDINGS_DTYPE, "fp32") == "fp32"

    def file(self, rel: str) -> Path:
        return self.resolve(rel)

    @property
    def model_file(self) -> Path:
        return self.resolve(self.model[ModelKeys.FILE])

    @property
    def tokenizer_file(self) -> Path:
        return self.resolve(BUNDLE_TOKENIZER_FILE)

    @property
    def bank(self) -> PromptBank:
        return PromptBank(self.path / BUNDLE_BANK_DIR)

    @property
    def tasks(self) -> dict[str, dict]:
        return self.manifest.get(BundleKeys.TASKS, {})

    @property
    def tokenizer(self) -> dict[str, Any]:
        return self.manifest.get(BundleKeys.TOKENIZER, {})

    def parity(self) -> dict[str, ParityResult]:
        """The parity results recorded at export."""
        return {t: ParityResult.from_dict(d) for t, d in self.manifest.get(BundleKeys.PARITY, {}).items()}

    def probes(self) -> tuple[list[Probe], np.ndarray]:
        """The probe set and the torch fp32 reference logits ``[N, V]`` stored at export."""
        probes = load_probes(self.resolve(f"{BUNDLE_PROBES_DIR}/{PROBES_FILE}"))
        ref = read_safetensors(self.resolve(f"{BUNDLE_PROBES_DIR}/{PROBES_REFERENCE_FILE}"), "reference logits")[TENSOR_REFERENCE_LOGITS]
        return probes, ref
