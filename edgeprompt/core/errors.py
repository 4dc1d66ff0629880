"""The errors edgeprompt raises (as ExecuTorch's ``exir/error.py`` separates user errors from internal checks).

User errors derive from :class:`EdgePromptError`; the message names the thing that is wrong and how to fix
it. The CLI prints them without a traceback, the HTTP server answers them with a 4xx. Anything else is an
internal fault (a 500, a traceback): :func:`internal_check` raises :class:`InternalError` and, unlike
``assert``, still fires under ``python -O``.
"""

from __future__ import annotations

from pathlib import Path


class EdgePromptError(Exception):
    """A user-facing error: the message names the thing that is wrong and how to fix it."""


class DataError(EdgePromptError):
    """A dataset file, column, label or split the user gave cannot be used."""


class BankError(EdgePromptError):
    """A prompt bank or one of its tasks is missing, damaged, or made for another model."""


class BundleError(EdgePromptError):
    """A bundle is missing, damaged, incomplete, or inconsistent with its manifest."""


class FormatVersionError(EdgePromptError):
    """A file was written by a newer edgeprompt (a newer bank, bundle, task or checkpoint format)."""

    def __init__(self, what: str, found: object, supported: int):
        super().__init__(f"{what} has format version {found}, newer than this edgeprompt reads ({supported}); upgrade edgeprompt.")
        self.found, self.supported = found, supported


class ModelNotSupportedError(EdgePromptError):
    """The model's architecture, or the requested format or quantization, is not supported."""


class RequestError(EdgePromptError):
    """A runtime request is wrong: an unknown task, an empty or too long text, a bad option."""


class InternalError(RuntimeError):
    """A broken internal invariant (a bug, or a native library that changed under us); never a user error."""


def internal_check(condition: object, message: str) -> None:
    """Raise :class:`InternalError` unless ``condition``; survives ``python -O`` (unlike ``assert``)."""
    if not condition:
        raise InternalError(message)


def check_version(found: object, supported: int, what: str) -> int:
    """A format version read from a file: an integer no newer than ``supported``, else a typed error."""
    if isinstance(found, bool) or not isinstance(found, int):
        raise (
            FormatVersionError(what, repr(found), supported)
            if found is not None
            else EdgePromptError(f"{what} has no format version; it is not a file this edgeprompt wrote.")
        )
    if found > supported:
        raise FormatVersionError(what, found, supported)
    return found


class TrainingInterrupted(Exception):
    """Ctrl-C during training: a checkpoint was written; ``--resume`` continues from it."""

    def __init__(self, step: int, checkpoint: Path):
        super().__init__(f"training interrupted at step {step}; checkpoint saved to {checkpoint}. Continue with --resume.")
        self.step, self.checkpoint = step, checkpoint
