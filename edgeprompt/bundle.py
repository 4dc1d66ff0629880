"""Reading a bundle written by ``edgeprompt export`` (torch-free: the runtimes use this).

Layout and keys: :mod:`edgeprompt.constants` (``BundleKeys`` and the file names). Opening a
bundle checks its format, that it was made for the model its bank was trained for, and (unless
told not to) every file's size and sha256 against the manifest, so a truncated or corrupted model
file is refused at open, by name, not discovered as garbage output later.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .bank import PromptBank
from .constants import (
    BUNDLE_BANK_DIR,
    BUNDLE_FORMAT,
    BUNDLE_MANIFEST_FILE,
    BUNDLE_PROBES_DIR,
    BUNDLE_TOKENIZER_FILE,
    BUNDLE_VERSION,
    PROBES_FILE,
    TASK_MANIFEST_FILE,
    TASKS_DIR,
    FileKeys,
    TaskFormKeys,
    TaskRecordKeys,
    PROBES_REFERENCE_FILE,
    TENSOR_REFERENCE_LOGITS,
    BundleKeys,
    ModelFormat,
    ModelKeys,
)
from .io import EdgePromptError, file_sha256, read_json, read_safetensors
from .models import ModelInfo
from .parity import ParityResult, Probe, load_probes


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> "Bundle":
        path = Path(path)
        mpath = path / BUNDLE_MANIFEST_FILE
        if not path.is_dir() or not mpath.exists():
            raise EdgePromptError(f"{path} is not an edgeprompt bundle (no {BUNDLE_MANIFEST_FILE}); make one with `edgeprompt export`.")
        m = read_json(mpath, "bundle manifest")
        if m.get(BundleKeys.FORMAT) != BUNDLE_FORMAT:
            raise EdgePromptError(f"{mpath}: format {m.get(BundleKeys.FORMAT)!r} is not {BUNDLE_FORMAT!r}.")
        if int(m.get(BundleKeys.VERSION, 0)) > BUNDLE_VERSION:
            raise EdgePromptError(
                f"{mpath}: bundle version {m.get(BundleKeys.VERSION)} is newer than this edgeprompt reads ({BUNDLE_VERSION}); upgrade edgeprompt."
            )
        b = cls(path, m)
        if verify:
            b.verify_files()
        bank_model = b.bank.base_model()
        if bank_model is not None:
            b.base_model.check_compatible(bank_model, f"the bank in bundle {path}")
        return b

    def verify_files(self, hashes: bool = True) -> None:
        """Check every file the manifest lists: present, the recorded size, the recorded sha256.

        The files a runtime reads (model, embeddings, tokenizer, every task's tensors and shipped
        KV) must all be listed: a manifest that leaves one out is refused, not trusted.
        """
        files = self.manifest.get(BundleKeys.FILES) or {}
        needed = [self.model[ModelKeys.FILE], BUNDLE_TOKENIZER_FILE]
        if ModelKeys.EMBEDDINGS in self.model:
            needed.append(self.model[ModelKeys.EMBEDDINGS])
        for name, rec in self.tasks.items():
            needed += [f[TaskFormKeys.FILE] for f in rec.get(TaskRecordKeys.FORMS, {}).values() if TaskFormKeys.FILE in f]
            needed.append(f"{BUNDLE_BANK_DIR}/{TASKS_DIR}/{name}/{TASK_MANIFEST_FILE}")
        unlisted = [f for f in needed if f not in files]
        if unlisted:
            raise EdgePromptError(
                f"bundle {self.path}: the manifest does not list {', '.join(unlisted)} among its checked files; "
                "the bundle is incomplete or was edited: re-export it."
            )
        for rel, rec in files.items():
            f = self.path / rel
            if not f.exists():
                raise EdgePromptError(f"bundle {self.path}: file {rel} is missing; re-export the bundle.")
            size = f.stat().st_size
            if size != rec[FileKeys.BYTES]:
                raise EdgePromptError(
                    f"bundle {self.path}: file {rel} has {size:,} bytes, the manifest says {rec[FileKeys.BYTES]:,} "
                    "(truncated or replaced); re-export or re-copy the bundle."
                )
            if hashes and file_sha256(f) != rec[FileKeys.SHA256]:
                raise EdgePromptError(f"bundle {self.path}: file {rel} does not match its sha256 in the manifest (corrupted); re-copy the bundle.")

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

    def file(self, rel: str) -> Path:
        return self.path / rel

    @property
    def model_file(self) -> Path:
        return self.path / self.model[ModelKeys.FILE]

    @property
    def tokenizer_file(self) -> Path:
        return self.path / BUNDLE_TOKENIZER_FILE

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
        d = self.path / BUNDLE_PROBES_DIR
        probes = load_probes(d / PROBES_FILE)
        ref = read_safetensors(d / PROBES_REFERENCE_FILE, "reference logits")[TENSOR_REFERENCE_LOGITS]
        return probes, ref
