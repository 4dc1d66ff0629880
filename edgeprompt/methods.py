"""The method registry and the interface every method implements (as PEFT registers its tuners).

A method is a folder (``prompt_tuning/``, ``prefix_tuning/``) with a config dataclass that
checks itself and a module that

* trains: ``module.kv(lm)`` gives the live KV prefix (gradient flows to the parameters);
* folds: ``module.fold(lm)`` gives the tensors stored in the bank (float32 numpy);
* deploys: ``method.kv_from_folded(lm, tensors)`` rebuilds the KV prefix from those tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Callable

import numpy as np

from .io import EdgePromptError


@dataclass
class PromptLearningConfig:
    """Fields every method shares (as PEFT's ``PromptLearningConfig``); subclasses add their own
    and name their initialisation enum in ``init_enum``."""

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
class MethodSpec:
    name: str
    config_cls: type
    module_cls: type
    #: (lm, tensors) -> KV prefix, for a folded task from the bank
    kv_from_folded: Callable[[Any, dict[str, np.ndarray]], Any]
    #: (tensors, model info) -> None; raises if the stored shapes do not fit the model
    check_folded: Callable[[dict[str, np.ndarray], Any], None]


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> None:
    if spec.name in _REGISTRY:
        raise ValueError(f"method {spec.name!r} is registered already")
    _REGISTRY[spec.name] = spec


def get_method(name: str) -> MethodSpec:
    _load_builtin()
    aliases = {"prompt": "prompt_tuning", "prefix": "prefix_tuning"}
    key = aliases.get(name, name)
    if key not in _REGISTRY:
        raise EdgePromptError(f"unknown method {name!r}; known methods: {', '.join(sorted(_REGISTRY))} (or prompt, prefix).")
    return _REGISTRY[key]


def all_methods() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def _load_builtin() -> None:
    from . import prefix_tuning, prompt_tuning  # noqa: F401  (they register themselves)


def config_from_dict(cls: type, d: dict[str, Any]):
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise EdgePromptError(f"{cls.__name__} has no option(s) {sorted(unknown)}; options: {sorted(names)}.")
    return cls(**d)
