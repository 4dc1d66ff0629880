"""Safe file I/O: every write goes to a temporary name and is renamed into place, and nothing
is ever unpickled (safetensors and JSON only).

A process killed at any moment leaves either the previous file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
from safetensors.numpy import load_file as _np_load_file
from safetensors.numpy import save as _np_save_bytes

from edgeprompt.core.constants import PICKLE_SUFFIXES
from edgeprompt.core.errors import EdgePromptError


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    if not path.parent.name.startswith("."):  # never recreate an atomic_directory temporary
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def atomic_write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
    """Save numpy arrays (contiguous copies are made) as safetensors, atomically."""
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    atomic_write_bytes(path, _np_save_bytes(arrays, metadata=dict(metadata) if metadata else None))


def read_json(path: str | os.PathLike, what: str) -> Any:
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise EdgePromptError(f"{what} not found: {path}") from None
    except json.JSONDecodeError as e:
        raise EdgePromptError(f"{what} {path} is not valid JSON ({e}); restore it or remove it.") from None


def refuse_pickle(path: str | os.PathLike) -> None:
    """Raise for a pickle-based checkpoint: loading one runs arbitrary code."""
    p = Path(path)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise EdgePromptError(
            f"{p} is a pickle-based checkpoint ({p.suffix}); edgeprompt refuses pickles because loading "
            "one can run arbitrary code. Convert it to safetensors (e.g. save it again with "
            "safe_serialization=True) and pass the .safetensors file."
        )


def read_safetensors(path: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
    path = Path(path)
    refuse_pickle(path)
    if not path.exists():
        raise EdgePromptError(f"{what} not found: {path}")
    try:
        return _np_load_file(str(path))
    except Exception as e:  # safetensors raises several types for a torn or foreign file
        raise EdgePromptError(f"{what} {path} is not a readable safetensors file ({e}).") from None


@contextmanager
def _swap_lock(parent: Path) -> Iterator[None]:
    """Serialise the rename-aside/rename-in swap and its recovery among processes (POSIX flock)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the swap is still two renames
        yield
        return
    fd = os.open(parent / ".edgeprompt.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def atomic_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``final``.

    An existing ``final`` is first renamed aside (``.NAME.old-<ns>``) and removed only after the
    new one is in place, so a crash leaves either the old folder or the new one. The swap holds a
    lock that :func:`recover_directory` also takes, so a reader never "recovers" a folder in the
    middle of a swap. The temporary folder's name starts with a dot; readers ignore it. Its writer
    holds a lock on ``.NAME.tmp-XXXX.lock`` while it works, so a later writer can tell a folder
    left by a killed writer (lock free: removed) from one still being filled (lock held: kept).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(final)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    lock_fd = _hold_lock(tmp.with_name(tmp.name + ".lock"))
    try:
        tmp.mkdir()
        try:
            yield tmp
            with _swap_lock(final.parent):
                _recover_locked(final)
                old = None
                if final.exists():
                    old = final.parent / f".{final.name}.old-{time.time_ns()}"
                    os.replace(final, old)
                os.replace(tmp, final)
                _fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        _release_lock(lock_fd, tmp.with_name(tmp.name + ".lock"))


def _hold_lock(path: Path) -> int | None:
    try:
        import fcntl
    except ImportError:  # Windows: no flock; abandoned folders are left for the user
        return None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _release_lock(fd: int | None, path: Path) -> None:
    if fd is None:
        return
    with _suppress():
        path.unlink()
    os.close(fd)


def _remove_abandoned(final: Path) -> None:
    """Remove temporary folders of ``final`` whose writer is gone (its lock file is free)."""
    try:
        import fcntl
    except ImportError:
        return
    for lock in final.parent.glob(f".{final.name}.tmp-*.lock"):
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # a live writer
            continue
        shutil.rmtree(lock.with_name(lock.name[: -len(".lock")]), ignore_errors=True)
        with _suppress():
            lock.unlink()
        os.close(fd)


def _olds(final: Path) -> list[Path]:
    def ns(p: Path) -> int:
        try:
            return int(p.name.rsplit("-", 1)[1])
        except ValueError:
            return -1

    return sorted(final.parent.glob(f".{final.name}.old-*"), key=ns)


def _recover_locked(final: Path) -> None:
    olds = _olds(final)
    if not final.exists() and olds:
        os.replace(olds[-1], final)  # the newest copy set aside
        olds = olds[:-1]
    for stray in olds:
        shutil.rmtree(stray, ignore_errors=True)


def set_aside_copy(final: str | os.PathLike) -> Path | None:
    """Where a reader finds ``final``'s previous version when a crash cut an :func:`atomic_directory` swap
    between its two renames (``final`` missing, its copy set aside): that copy, or ``None``. Reads only:
    a reader may be on read-only media; the next writer (or :func:`recover_directory`) puts it back."""
    final = Path(final)
    if final.exists() or not final.parent.is_dir():
        return None
    olds = _olds(final)
    return olds[-1] if olds else None


def recover_directory(final: str | os.PathLike) -> None:
    """Finish an :func:`atomic_directory` swap that a crash cut between its two renames.

    If ``final`` is missing but a renamed-aside copy exists, the newest copy is put back; older
    copies are removed. Temporary folders are left alone: a live writer may own them.
    """
    final = Path(final)
    if not final.parent.is_dir() or (final.exists() and not any(final.parent.glob(f".{final.name}.old-*"))):
        return
    with _swap_lock(final.parent):
        _recover_locked(final)


@contextmanager
def _suppress() -> Iterator[None]:
    try:
        yield
    except OSError:
        pass


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()
