"""The method registry: what every part of edgeprompt needs to know about a method (torch-free).

A method is one folder, ``edgeprompt/methods/<name>/`` (as PEFT keeps ``tuners/<method>/``):

* ``__init__.py`` registers a :class:`MethodSpec` subclass: the method's *facts*, numpy only, read by the
  bank, the bundle writer, the runtimes and PEFT interop: the tensor it folds to and its shape, where P
  is in it, how a runtime turns it into a prefix (:class:`PrefixKind`), the bundle form, PEFT's layout;
* ``config.py``: the method's config dataclass, which checks itself (torch-free);
* ``model.py``: the training half (torch): the trainable module and ``kv_from_folded``, found by
  :meth:`MethodSpec.trainer` only when a method is trained or evaluated in torch.

Nothing outside a method's folder asks which method a task uses: it asks the spec.

>>> get_method("prompt").name
'prompt_tuning'
>>> get_method("prefix_tuning").prefix_kind.value
'kv'
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Callable, ClassVar

import numpy as np

from edgeprompt.core.constants import TaskForm
from edgeprompt.core.errors import BankError, EdgePromptError
from edgeprompt.core.model_info import ModelInfo

#: The built-in methods: folders under ``edgeprompt/methods/`` that register themselves on import.
BUILTIN_METHODS = ("prompt_tuning", "prefix_tuning")


class PrefixKind(str, Enum):
    """How a runtime turns a task's folded tensors into the state a request starts from."""

    EMBEDDINGS = "embeddings"  # rows [P, d] fed through the frozen model as input embeddings (a prefill)
    KV = "kv"  # a per-layer KV prefix [L, 2, kv_heads, P, head_dim], written into the cache as is


@dataclass
class PromptLearningConfig:
    """Fields every method's config shares (as PEFT's ``PromptLearningConfig``); subclasses add their
    own and name their initialisation enum in ``init_enum``."""

    num_virtual_tokens: int = field(default=20, metadata={"help": "P, the number of virtual tokens"})
    init_text: str | None = field(default=None, metadata={"help": "text for init=text (default: the task instruction)"})

    init_enum = None  # type: type[Enum]

    def __post_init__(self):
        if not 1 <= int(self.num_virtual_tokens) <= 1024:
            raise EdgePromptError(f"num_virtual_tokens={self.num_virtual_tokens} must be between 1 and 1024.")
        self.num_virtual_tokens = int(self.num_virtual_tokens)
        try:
            self.init = self.init_enum(self.init)
        except ValueError:
            raise EdgePromptError(f"{type(self).__name__}: init {self.init!r} is not one of {[i.value for i in self.init_enum]}.") from None

    def default_lr(self) -> float:
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {f.name: (v.value if isinstance(v := getattr(self, f.name), Enum) else v) for f in fields(self)}


@dataclass(frozen=True)
class Trainer:
    """The training half of a method (torch), from its ``model.py``.

    ``module_cls(config, lm, init_text=, label_text=, seed=)`` is an ``nn.Module`` with ``kv(lm)``,
    ``fold(lm) -> {tensor name: float32 array}`` and ``param_groups(lr)``; ``kv_from_folded(lm, tensors)``
    rebuilds the KV prefix from the folded tensors (the torch reference of the export's parity gate).
    """

    module_cls: type | None
    kv_from_folded: Callable[[Any, dict[str, np.ndarray]], Any]


class MethodSpec:
    """A method's facts. Subclass it in the method's folder, set the class attributes, register an instance.

    Shapes: ``folded_shape(info)`` gives the folded tensor's shape with ``None`` where P goes, e.g.
    ``(None, d)`` for prompt tuning and ``(L, 2, kv_heads, None, head_dim)`` for prefix tuning.
    """

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    config_cls: ClassVar[type]
    tensor_key: ClassVar[str]  # the folded tensor in the task's prefix.safetensors
    dim_names: ClassVar[tuple[str, ...]]  # its axes, for messages: ("P", "d"), ("L", "2", "kv_heads", "P", "head_dim")
    prefix_kind: ClassVar[PrefixKind]
    peft_type: ClassVar[str | None] = None  # PEFT's peft_type this method reads and writes, if any
    trainer_module: ClassVar[str | None] = None  # module that defines TRAINER (imported on demand: torch)

    # -- shapes -------------------------------------------------------------------------------
    def folded_shape(self, info: ModelInfo) -> tuple[int | None, ...]:
        raise NotImplementedError

    def p_axis(self, info: ModelInfo) -> int:
        return self.folded_shape(info).index(None)

    def check_tensors(self, tensors: dict[str, np.ndarray], info: ModelInfo, where: str = "the task") -> None:
        """Raise :class:`BankError` unless ``tensors`` hold this method's tensor, of the model's shape, finite."""
        t = tensors.get(self.tensor_key)
        if t is None:
            raise BankError(f"{where}: a {self.name} task needs the tensor {self.tensor_key!r}; found {sorted(tensors)}.")
        want = self.folded_shape(info)
        shown = "[" + ", ".join(n if w is None or n == str(w) else f"{n}={w}" for n, w in zip(self.dim_names, want)) + "]"
        if t.ndim != len(want) or any(w is not None and w != s for w, s in zip(want, t.shape)):
            raise BankError(f"{where}: {self.tensor_key} has shape {list(t.shape)}, but this model needs {shown} (P ≥ 1).")
        if t.shape[want.index(None)] < 1:
            raise BankError(f"{where}: {self.tensor_key} has P = 0 virtual tokens; it needs at least one.")
        if not np.isfinite(t).all():
            raise BankError(f"{where}: {self.tensor_key} holds NaN or Inf values; retrain or re-import the task.")

    def num_virtual_tokens(self, tensors: dict[str, np.ndarray], info: ModelInfo) -> int:
        return int(tensors[self.tensor_key].shape[self.p_axis(info)])

    # -- deployment ---------------------------------------------------------------------------
    def prefix_array(self, tensors: dict[str, np.ndarray]) -> np.ndarray:
        """What a runtime feeds the backend (float32): rows ``[P, d]`` or a KV ``[L, 2, h, P, hd]``,
        as ``prefix_kind`` says. Override when the folded tensor is not that array itself."""
        return np.asarray(tensors[self.tensor_key], dtype=np.float32)

    @property
    def bundle_form(self) -> TaskForm:
        """The form in which the folded task ships in a bundle."""
        return TaskForm.EMBEDDINGS if self.prefix_kind == PrefixKind.EMBEDDINGS else TaskForm.KV_PREFIX

    @property
    def takes_prefill(self) -> bool:
        """True when the prefix is computed by running rows through the model (so a bundle may ship
        that KV precomputed, ``--with-kv``, or the rows as GGUF tokens, ``--virtual-tokens``)."""
        return self.prefix_kind == PrefixKind.EMBEDDINGS

    # -- PEFT ---------------------------------------------------------------------------------
    def from_peft(self, weights: np.ndarray, P: int, info: ModelInfo) -> dict[str, np.ndarray]:
        """PEFT's ``prompt_embeddings`` tensor -> our folded tensors."""
        raise EdgePromptError(f"method {self.name} has no PEFT form.")

    def to_peft(self, tensors: dict[str, np.ndarray]) -> np.ndarray:
        """Our folded tensors -> PEFT's ``prompt_embeddings`` tensor."""
        raise EdgePromptError(f"method {self.name} has no PEFT form.")

    def peft_config(self, P: int, info: ModelInfo) -> dict[str, Any]:
        """The PEFT config fields (besides task type) that describe this method's adapter."""
        raise EdgePromptError(f"method {self.name} has no PEFT form.")

    # -- training (torch) ---------------------------------------------------------------------
    def trainer(self) -> Trainer:
        if self.trainer_module is None:
            raise EdgePromptError(f"method {self.name} has no training module registered.")
        return importlib.import_module(self.trainer_module).TRAINER

    def __repr__(self) -> str:
        return f"<method {self.name}>"


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method; a name or alias that is taken already is refused."""
    _load_builtin()
    taken = {n for s in _REGISTRY.values() for n in (s.name, *s.aliases)}
    clash = {spec.name, *spec.aliases} & taken
    if clash:
        raise ValueError(f"method name(s) {sorted(clash)} are registered already")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_method(name: str) -> None:
    """Remove a method added by :func:`register_method` (tests register toy methods)."""
    if name in BUILTIN_METHODS:
        raise ValueError(f"{name} is built in")
    _REGISTRY.pop(name, None)


def get_method(name: str) -> MethodSpec:
    _load_builtin()
    for spec in _REGISTRY.values():
        if name == spec.name or name in spec.aliases:
            return spec
    known = ", ".join(f"{s.name} ({', '.join(s.aliases)})" if s.aliases else s.name for s in _REGISTRY.values())
    raise EdgePromptError(f"unknown method {name!r}; known methods: {known}.")


def all_methods() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


_loading = False


def _load_builtin() -> None:
    global _loading
    if _loading or all(n in _REGISTRY for n in BUILTIN_METHODS):
        return
    _loading = True
    try:
        for n in BUILTIN_METHODS:
            importlib.import_module(f"edgeprompt.methods.{n}")  # each registers itself
    finally:
        _loading = False


def config_from_dict(cls: type, d: dict[str, Any]):
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise EdgePromptError(f"{cls.__name__} has no option(s) {sorted(unknown)}; options: {sorted(names)}.")
    return cls(**d)
