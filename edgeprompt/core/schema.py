"""One schema per file kind edgeprompt reads, checked on read (msgspec): bundle manifest, probe set, ``bank.json``,
task manifest, PEFT adapter config, checkpoint state.

A file that does not fit its schema is refused with the reader's typed error naming the file, the key (as a
path: ``model.context_length``, ``tasks.pt.forms``) and what was expected, never a traceback or a silent
coercion (labels ``"ab"`` are not the labels a and b; ``1e400`` is not a version). Unknown keys are allowed (a
newer writer may add some); the format and version are checked first, so a newer file says so. Readers get
the plain JSON object back (``dict``) once it fits; the schema is the contract, the keys are in
:mod:`edgeprompt.core.constants`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from edgeprompt.core.constants import (
    BANK_FORMAT,
    BANK_VERSION,
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    MAX_LABELS,
    TASK_FORMAT,
    TASK_VERSION,
)
from edgeprompt.core.errors import EdgePromptError, check_version

MAX_FILE_BYTES = 256 << 20  # a manifest larger than this is not one of ours (a device file, a hostile blob)
MAX_VIRTUAL_TOKENS = 4096

Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\Z")]  # a task name (bank.check_task_name)
Count = Annotated[int, Meta(ge=0, le=2**53)]
Positive = Annotated[int, Meta(ge=1, le=2**31)]
TokenId = Annotated[int, Meta(ge=0, le=2**31)]
Finite = Annotated[float, Meta(ge=-1e300, le=1e300)]  # JSON has no NaN; this also refuses 1e400 (inf)
Fraction = Annotated[float, Meta(ge=0.0, le=1.0)]
Sha256 = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}\Z")]
RelPath = Annotated[str, Meta(min_length=1, max_length=4096)]  # confinement: Bundle.resolve
Text = Annotated[str, Meta(max_length=1 << 20)]


class Versioned(Struct):
    """A file that names its format and version (checked first, by :func:`decode`)."""

    FORMAT: ClassVar[str] = ""
    VERSION: ClassVar[int] = 0

    format: str
    version: int


class BaseModel(Struct):
    """``ModelInfo``: the base model a bank, task or bundle was made for."""

    fingerprint: Annotated[str, Meta(min_length=1, max_length=128)]
    hidden_size: Positive
    num_layers: Positive
    num_kv_heads: Positive
    head_dim: Positive
    vocab_size: Positive
    name: str = "?"
    architecture: str = "?"


# -- bundle ---------------------------------------------------------------------------------------
class FileRecord(Struct):
    sha256: Sha256
    bytes: Count


class ModelRecord(Struct):
    format: Literal["onnx", "gguf"]
    quant: Annotated[str, Meta(min_length=1, max_length=64)]
    file: RelPath
    context_length: Positive | None = None
    embeddings: RelPath | UnsetType = UNSET  # absent or a path, never null
    embeddings_dtype: Literal["fp32", "fp16", "int8"] = "fp32"
    accuracy_level: Annotated[int, Meta(ge=0, le=4)] | None = None
    embeddings_in_graph: bool = False
    tensor_types: dict[str, Count] = {}
    virtual_tokens: dict[Name, list[TokenId]] = {}
    logit_mask: list[TokenId] = []


class TokenizerRecord(Struct):
    add_bos: bool = False
    bos_token_id: TokenId | None = None
    eos_token_id: TokenId | None = None
    pad_token_id: TokenId | None = None
    chat_template: Text | None = None


class FormRecord(Struct):
    # absent, or a value: never null (readers test "file" in the record, then use it)
    file: RelPath | UnsetType = UNSET
    bytes: Count | UnsetType = UNSET
    ids: list[TokenId] | UnsetType = UNSET


class TaskRecord(Struct):
    method: Annotated[str, Meta(min_length=1, max_length=100)]
    kind: Literal["classification", "generation"]
    num_virtual_tokens: Annotated[int, Meta(ge=1, le=MAX_VIRTUAL_TOKENS)]
    forms: dict[Literal["embeddings", "kv_prefix", "llama_state", "virtual_tokens"], FormRecord]


class ParityRecord(Struct):
    probes: Count = 0
    max_abs_logit_diff: Finite | None = None
    top1_agreement: Fraction | None = None
    label_agreement: Fraction | None = None
    accuracy_reference: Fraction | None = None
    accuracy_export: Fraction | None = None
    passed: bool | None = None


class BundleManifest(Versioned):
    FORMAT: ClassVar[str] = BUNDLE_FORMAT
    VERSION: ClassVar[int] = BUNDLE_VERSION

    base_model: BaseModel
    model: ModelRecord
    files: dict[RelPath, FileRecord] = {}  # every file a runtime reads must be listed (Bundle.verify_files)
    tokenizer: TokenizerRecord = msgspec.field(default_factory=TokenizerRecord)
    tasks: dict[Name, TaskRecord] = {}
    parity: dict[str, ParityRecord] = {}
    tools: dict[str, str] = {}


class Probe(Struct):
    task: Annotated[str, Meta(max_length=200)]
    text: Text
    label: str | None = None


# -- bank -----------------------------------------------------------------------------------------
class BankFile(Versioned):
    FORMAT: ClassVar[str] = BANK_FORMAT
    VERSION: ClassVar[int] = BANK_VERSION

    base_model: BaseModel


class TensorRecord(Struct):
    shape: Annotated[list[Positive], Meta(min_length=1, max_length=8)]
    dtype: Literal["float32"]


class CalibrationRecord(Struct):
    log_prior: Annotated[list[Finite], Meta(min_length=2, max_length=MAX_LABELS)]
    method: str = "content_free"
    inputs: list[Text] = []


class TaskManifest(Versioned):
    FORMAT: ClassVar[str] = TASK_FORMAT
    VERSION: ClassVar[int] = TASK_VERSION

    method: Annotated[str, Meta(min_length=1, max_length=100)]
    kind: Literal["classification", "generation"]
    num_virtual_tokens: Annotated[int, Meta(ge=1, le=MAX_VIRTUAL_TOKENS)]
    tensors: Annotated[dict[str, TensorRecord], Meta(min_length=1)]
    template: Text
    base_model: BaseModel
    name: Name | None = None
    instruction: Text = ""
    labels: Annotated[list[Annotated[str, Meta(min_length=1, max_length=1000)]], Meta(max_length=MAX_LABELS)] = []
    verbalizers: dict[str, Annotated[str, Meta(min_length=1, max_length=1000)]] = {}
    calibration: CalibrationRecord | None = None


# -- interop and training -------------------------------------------------------------------------
class PeftAdapterConfig(Struct):
    """What edgeprompt reads of PEFT's ``adapter_config.json`` (PEFT writes many more keys)."""

    peft_type: Annotated[str, Meta(min_length=1, max_length=64)]
    num_virtual_tokens: Annotated[int, Meta(ge=1, le=MAX_VIRTUAL_TOKENS)] | None = None
    token_dim: Positive | None = None
    num_layers: Positive | None = None
    num_attention_heads: Positive | None = None
    num_transformer_submodules: Positive | None = None
    task_type: str | None = None
    base_model_name_or_path: str | None = None


class CheckpointState(Versioned):
    """``state.json`` of a training checkpoint (the tensors are in ``tensors.safetensors``)."""

    FORMAT: ClassVar[str] = CHECKPOINT_FORMAT
    VERSION: ClassVar[int] = CHECKPOINT_VERSION

    step: Count
    best_step: Annotated[int, Meta(ge=-1, le=2**53)]
    best_score: Finite | None
    best_dev: dict[str, Any] | None
    history: list[dict[str, Any]]
    loss_ema: Finite | None
    wall_s: Finite
    param_groups: Annotated[list[dict[str, Any]], Meta(min_length=1)]


# -- reading --------------------------------------------------------------------------------------
def _where(e: msgspec.ValidationError) -> str:
    """msgspec's ``Expected `int`, got `str` - at `$.model.context_length``` as ``model.context_length: expected ...``."""
    msg = str(e)
    what, _, at = msg.partition(" - at `")
    at = at.rstrip("`").removeprefix("$").lstrip(".")
    if what.endswith(" - at `key` in"):  # a dict key: "... - at `key` in `$.tasks`"
        what = what[: -len(" - at `key` in")]
    what = what[0].lower() + what[1:] if what else what
    return f"{at}: {what}" if at else what


def decode(raw: bytes, schema: type[Struct] | Any, where: str, error: type[EdgePromptError] = EdgePromptError, fix: str = "") -> Any:
    """``raw`` JSON checked against ``schema`` (a Struct, or a type such as ``list[Probe]``); returns the plain
    JSON value. A schema with ``FORMAT``/``VERSION`` has them checked first (a newer version says so)."""
    fix = f"; {fix}" if fix else ""
    try:
        obj = msgspec.json.decode(raw)
    except msgspec.DecodeError as e:
        raise error(f"{where} is not valid JSON ({e}){fix}.") from None
    fmt = getattr(schema, "FORMAT", None)
    if fmt:
        if not isinstance(obj, dict) or obj.get("format") != fmt:
            found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
            raise error(f"{where} is not an {fmt} file (its format is {found!r}){fix}.")
        check_version(obj.get("version"), schema.VERSION, where)
    try:
        msgspec.convert(obj, schema, strict=True)
    except msgspec.ValidationError as e:
        raise error(f"{where} is damaged: {_where(_name_keys(obj, schema, e))}{fix}.") from None
    return obj


def _name_keys(obj: Any, schema: Any, e: msgspec.ValidationError) -> msgspec.ValidationError:
    """msgspec says ``$.tasks[...]`` for a value in a dict: find which key, by checking that dict's entries
    one at a time, so the message says ``tasks.pt``."""
    for _ in range(4):  # nested dicts: one key per pass
        msg = str(e)
        at = msg.partition(" - at `")[2]
        if "[...]" not in at:
            return e
        prefix = at[: at.index("[...]")]
        steps = re.findall(r"\.([^.\[]+)|\[(\d+)\]", prefix.removeprefix("$"))
        parent, holder = obj, None
        try:
            for name, index in steps:
                parent = parent[name] if name else parent[int(index)]
        except (KeyError, IndexError, TypeError):
            return e
        if not isinstance(parent, dict):
            return e
        for key, value in parent.items():
            trial = _replace(obj, steps, {key: value})
            try:
                msgspec.convert(trial, schema, strict=True)
            except msgspec.ValidationError as e2:
                holder = e2
                shown = f".{key}" if re.fullmatch(r"[^.\[\]]+", key) else f"[{json.dumps(key)}]"
                e = msgspec.ValidationError(msg.replace(prefix + "[...]", prefix + shown, 1))
                break
        if holder is None:
            return e
    return e


def _replace(obj: Any, steps: list, value: Any) -> Any:
    """A copy of ``obj`` with the container at ``steps`` replaced by ``value`` (copies only the path)."""
    if not steps:
        return value
    (name, index), rest = steps[0], steps[1:]
    if name:
        return {**obj, name: _replace(obj[name], rest, value)}
    i = int(index)
    return [*obj[:i], _replace(obj[i], rest, value), *obj[i + 1 :]]


def read(path: str | Path, schema: type[Struct] | Any, what: str, error: type[EdgePromptError] = EdgePromptError, fix: str = "") -> Any:
    """Read and :func:`decode` a file (at most :data:`MAX_FILE_BYTES`; a missing file is ``error`` too)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a folder, not a file.") from None
    if len(raw) > MAX_FILE_BYTES:
        raise error(f"{what} {path} is larger than {MAX_FILE_BYTES >> 20} MiB; it is not an edgeprompt file.")
    return decode(raw, schema, f"{what} {path}", error, fix)
