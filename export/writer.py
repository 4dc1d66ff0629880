"""``edgeprompt export``: the frozen model quantized once, plus a bank's tasks, as one bundle.

Order of work (a failure at any step leaves nothing where the user asked for the bundle: the
bundle is built in a temporary sibling folder and renamed into place at the end):

1. check the options, the bank and the model (unsupported format, quant, architecture or a bank
   of another base model: refused before any work);
2. export the model (ONNX: dynamo export + onnxruntime quantization; GGUF: gguf-py conversion,
   or the source GGUF passed through, + llama.cpp quantization);
3. copy the tasks, the tokenizer; optionally fold prompt-tuning tasks into KV prefixes computed
   by the exported model itself, or into extra token ids of the GGUF (``virtual_tokens``);
4. the parity gate: probes through the torch fp32 reference and through the runtime on the
   exported files; an fp32 export that differs by more than 1e-3 fails;
5. sha256 of every file, then ``manifest.json`` last.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

from edgeprompt.core.bank import BankTask, PromptBank
from edgeprompt.core.constants import (
    BANK_FILE,
    BUNDLE_BANK_DIR,
    BUNDLE_FORMAT,
    BUNDLE_KV_DIR,
    BUNDLE_MANIFEST_FILE,
    BUNDLE_MODEL_DIR,
    BUNDLE_PROBES_DIR,
    BUNDLE_TOKENIZER_FILE,
    BUNDLE_VERSION,
    EMBEDDING_DTYPES,
    EMBEDDINGS_INT8_BLOCK,
    GGUF_MODEL_FILE,
    ONNX_EMBEDDINGS_FILE,
    ONNX_MODEL_FILE,
    PROBES_FILE,
    PROBES_REFERENCE_FILE,
    TASK_TENSORS_FILE,
    TASKS_DIR,
    TENSOR_EMBEDDINGS,
    TENSOR_EMBEDDINGS_SCALE,
    TENSOR_REFERENCE_LOGITS,
    BundleKeys,
    FileKeys,
    ModelFormat,
    ModelKeys,
    TaskForm,
    TaskFormKeys,
    TaskKeys,
    TaskRecordKeys,
    TokenizerKeys,
)
from edgeprompt.core.errors import EdgePromptError, ModelNotSupportedError
from edgeprompt.core.files import atomic_directory, atomic_write_bytes, atomic_write_json, atomic_write_safetensors, file_sha256
from edgeprompt.core.parity import probes_json
from edgeprompt.export.formats import FORMATS, check_supported
from edgeprompt.export.parity_gate import make_probes, reference_logits, run_gate


@dataclass
class ExportConfig:
    """What to export. Checked on construction (before any work).

    Args:
        format: ``onnx`` or ``gguf``.
        quant: ONNX ``fp32 | int8 | int8-dynamic | int4``; GGUF ``f32 | f16 | q8_0 | q4_0 | q4_k_m``, or
            ``source`` to pass the input GGUF through unchanged.
        tasks: the bank's tasks to include (default all).
        with_kv: also ship each prompt-tuning task as a KV prefix computed by the exported model.
        virtual_tokens: (GGUF) fold the prompt-tuning prompts into the vocabulary as extra ids.
        probes_per_task: parity probes per task (and for the plain model).
    """

    format: str = "onnx"
    quant: str = "fp32"
    tasks: list[str] | None = None
    with_kv: bool = False
    virtual_tokens: bool = False
    probes_per_task: int = 8
    threads: int | None = None
    embeddings: str = "fp32"
    accuracy_level: int | None = None

    def __post_init__(self):
        try:
            self.format = ModelFormat(self.format).value
        except ValueError:
            raise ModelNotSupportedError(f"export format {self.format!r} is not supported; choose {' or '.join(f.value for f in FORMATS)}.") from None
        ok = FORMATS[ModelFormat(self.format)].quants
        if self.quant not in ok:
            raise ModelNotSupportedError(f"quantization {self.quant!r} is not supported for {self.format}; choose one of: {', '.join(ok)}.")
        if self.virtual_tokens and self.format != "gguf":
            raise EdgePromptError("--virtual-tokens folds prompts into a GGUF vocabulary; use it with --format gguf.")
        if self.virtual_tokens and self.quant == "source":
            raise EdgePromptError("--virtual-tokens rewrites the embedding table; it cannot pass the source GGUF through: pick a quant.")
        if self.probes_per_task < 1:
            raise EdgePromptError("probes_per_task must be at least 1.")
        if self.embeddings not in EMBEDDING_DTYPES:
            raise EdgePromptError(f"--embeddings {self.embeddings!r}: choose one of {', '.join(EMBEDDING_DTYPES)}.")
        if self.accuracy_level is not None:
            from edgeprompt.export.onnx.quant import ACCURACY_LEVELS

            if self.format != "onnx" or self.quant not in ("int8", "int4"):
                raise EdgePromptError("--accuracy-level sets the activations of ONNX MatMulNBits: use it with --format onnx --quant int8 or int4.")
            if self.accuracy_level not in ACCURACY_LEVELS:
                raise EdgePromptError(f"--accuracy-level {self.accuracy_level}: choose 0 (fp32 activations) or 4 (int8, faster); 1-3 are fp32, fp16, bf16.")
        if self.embeddings != "fp32" and self.format != "onnx":
            raise EdgePromptError("--embeddings sets the ONNX bundle's separate embedding table; a GGUF's table is quantized with the model (--quant).")


@dataclass
class ExportResult:
    path: Path
    manifest: dict
    timings: dict = field(default_factory=dict)


def _quiet_tool_logs() -> None:
    import logging

    for name in ("onnxruntime.quantization", "onnxruntime", "gguf", "gguf.gguf_writer", "torch.onnx", "onnxscript"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _tool_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("edgeprompt", "torch", "transformers", "onnx", "onnxruntime", "onnxscript", "gguf", "llama_cpp_python", "tokenizers", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _check_replaceable(out: Path, bank, model) -> None:
    """--overwrite replaces a bundle, or an empty folder, never anything else (nor what it reads)."""
    if out.is_dir() and not any(out.iterdir()):
        return
    m = out / BUNDLE_MANIFEST_FILE
    try:
        is_bundle = out.is_dir() and json.loads(m.read_text()).get(BundleKeys.FORMAT) == BUNDLE_FORMAT
    except (OSError, ValueError, AttributeError):
        is_bundle = False
    if not is_bundle:
        raise EdgePromptError(f"{out} exists and is not an edgeprompt bundle; --overwrite replaces only bundles: choose another -o.")
    for src in (bank, model):
        if src is not None and Path(src).exists():
            s = Path(src).resolve()
            if s == out.resolve() or out.resolve() in s.parents:
                raise EdgePromptError(f"-o {out} holds the input {src}; write the bundle elsewhere.")


def _select_tasks(bank: PromptBank | None, names: list[str] | None) -> list[BankTask]:
    if bank is None:
        if names:
            raise EdgePromptError("tasks were named but no bank was given; pass --bank BANK.")
        return []
    if not bank.exists:
        raise EdgePromptError(f"no prompt bank at {bank.root}; train a task first (edgeprompt train) or pass another --bank.")
    have = bank.names()
    if names is None:
        return bank.tasks()
    missing = [n for n in names if n not in have]
    if missing:
        raise EdgePromptError(f"task(s) {', '.join(missing)} not in bank {bank.root}; it has: {', '.join(have) or 'none'}.")
    return [bank.task(n) for n in names]


def _source_gguf(model_spec) -> Path | None:
    """The GGUF the model was converted from (the embedded default, or a .gguf given), else None."""
    from edgeprompt.train.models import DEFAULT_MODEL, default_gguf_path

    if model_spec in (None, DEFAULT_MODEL):
        return default_gguf_path()
    p = Path(model_spec)
    return p if p.suffix.lower() == ".gguf" and p.is_file() else None


def _export_onnx(lm, cfg: ExportConfig, tmp: Path, scratch: Path, log, model_spec=None) -> dict:
    from edgeprompt.export.onnx.decoder import export_decoder
    from edgeprompt.export.onnx.quant import ACCURACY_LEVEL, op_types, quantize

    log("exporting the ONNX decoder (dynamo exporter) ...")
    fp32 = export_decoder(lm, scratch / ONNX_MODEL_FILE)
    rel = f"{BUNDLE_MODEL_DIR}/{ONNX_MODEL_FILE}"
    transcoded = None
    level = ACCURACY_LEVEL if cfg.accuracy_level is None else cfg.accuracy_level
    src = _source_gguf(model_spec) if cfg.quant == "int4" else None
    if src is not None:  # the GGUF's own Q4/Q8 blocks, not a second rounding of their dequantized values
        from edgeprompt.export.onnx.transcode import transcode

        log(f"transcoding {src.name}'s Q4_0/Q4_1/Q8_0 blocks into MatMulNBits ...")
        transcoded = transcode(fp32, src, scratch / "transcoded" / ONNX_MODEL_FILE, level)
        fp32 = scratch / "transcoded" / ONNX_MODEL_FILE
    log(f"quantizing: {cfg.quant} ..." if transcoded is None or transcoded.get("left") else "every weight transcoded: nothing left to quantize")
    keep = transcoded.pop("keep_float", []) if transcoded is not None else []
    quantize(fp32, tmp / rel, "fp32" if transcoded is not None and not transcoded.get("left") else cfg.quant, exclude=keep, accuracy_level=level)
    emb_rel = f"{BUNDLE_MODEL_DIR}/{ONNX_EMBEDDINGS_FILE}"
    emb = lm.embeddings.detach().float().numpy()
    shared = False
    if cfg.embeddings == "int8" and cfg.quant in ("int8", "int4"):
        from edgeprompt.export.onnx.transcode import share_head_with_table

        shared = share_head_with_table(tmp / rel, emb, tmp / emb_rel)  # a tied Q8_0 head: the table is its weights
        if shared:
            log("the LM head and the embedding table share one Q8_0 copy of the embeddings")
    if not shared:
        atomic_write_safetensors(tmp / emb_rel, embedding_table(emb, cfg.embeddings))
    rec = {ModelKeys.FILE: rel, ModelKeys.EMBEDDINGS: emb_rel, ModelKeys.TENSOR_TYPES: op_types(tmp / rel)}
    if shared:
        rec[ModelKeys.EMBEDDINGS_IN_GRAPH] = True
    if transcoded is not None:
        rec[ModelKeys.TRANSCODED] = {"source": src.name, **transcoded}
    if cfg.embeddings != "fp32":
        rec[ModelKeys.EMBEDDINGS_DTYPE] = cfg.embeddings
    if cfg.quant in ("int8", "int4"):
        rec[ModelKeys.ACCURACY_LEVEL] = level
    return rec


def embedding_table(emb: np.ndarray, dtype: str) -> dict[str, np.ndarray]:
    """The bundle's embedding table ``[V, d]`` as ``dtype``: fp32; fp16; or int8 in blocks of 32 along ``d`` with a
    scale per block ``[V, d/32]`` (Q8_0's scheme: symmetric, the block's max |x| / 127, the scale rounded to fp16
    and kept as float32), read back by :meth:`OnnxEngine.embed` and the web app as ``int8 * scale``.

    A table that is already Q8_0 (a GGUF's ``token_embd``, dequantized by transformers: ``x = d·q`` with fp16
    ``d`` and ``max |q| = 127``) comes back bit for bit: ``fp16(max|x| / 127)`` is ``d`` again and ``x / d`` is ``q``.
    """
    if dtype == "fp32":
        return {TENSOR_EMBEDDINGS: np.ascontiguousarray(emb, dtype=np.float32)}
    if dtype == "fp16":
        return {TENSOR_EMBEDDINGS: emb.astype(np.float16)}
    from edgeprompt.export.onnx.quant import q8_0

    d = emb.shape[1]
    q, scale = q8_0(emb, EMBEDDINGS_INT8_BLOCK if d % EMBEDDINGS_INT8_BLOCK == 0 else d)  # no blocks of 32: one per row
    return {TENSOR_EMBEDDINGS: q, TENSOR_EMBEDDINGS_SCALE: scale}


def _export_gguf(lm, model_spec, cfg: ExportConfig, tasks: list[BankTask], tmp: Path, scratch: Path, log) -> dict:
    from edgeprompt.export.gguf.convert import write_gguf
    from edgeprompt.export.gguf.quant import quantize, tensor_types
    from edgeprompt.train.models import DEFAULT_MODEL, default_gguf_path

    rel = f"{BUNDLE_MODEL_DIR}/{GGUF_MODEL_FILE}"
    (tmp / BUNDLE_MODEL_DIR).mkdir(parents=True, exist_ok=True)
    rec: dict = {ModelKeys.FILE: rel}
    if cfg.quant == "source":
        src = default_gguf_path() if model_spec in (None, DEFAULT_MODEL) else Path(model_spec)
        if src.suffix.lower() != ".gguf":
            raise EdgePromptError(f"--quant source passes a GGUF through, but the model {model_spec} is not a .gguf file; pick a quant type.")
        log(f"passing {src.name} through ...")
        shutil.copyfile(src, tmp / rel)
    else:
        extra, names, owners = None, None, []
        if cfg.virtual_tokens:
            rows = []
            for t in tasks:
                if t.method_spec.takes_prefill:  # rows fed as input embeddings: they can be vocabulary rows
                    e = t.method_spec.prefix_array(t.tensors())
                    rows.append(e)
                    owners.append((t.name, e.shape[0]))
            if rows:
                extra = np.concatenate(rows).astype(np.float32)
                names = [f"<|edgeprompt:{n}:{i}|>" for n, P in owners for i in range(P)]
        log("converting to GGUF (gguf-py) ...")
        src_type = "f16" if cfg.quant == "f16" else "f32"
        f32 = scratch / f"model-{src_type}.gguf"
        info = write_gguf(lm.model, lm.tokenizer, f32, file_type=src_type, extra_embeddings=extra, extra_token_names=names)
        if cfg.quant in ("f32", "f16"):
            shutil.move(str(f32), tmp / rel)
        else:
            log(f"quantizing: {cfg.quant} (llama.cpp) ...")
            quantize(f32, tmp / rel, cfg.quant, threads=cfg.threads or 0)
        if extra is not None:
            ids = iter(info["virtual_token_ids"])
            rec[ModelKeys.VIRTUAL_TOKENS] = {n: [next(ids) for _ in range(P)] for n, P in owners}
            rec[ModelKeys.LOGIT_MASK] = list(info["virtual_token_ids"])
    rec[ModelKeys.TENSOR_TYPES] = tensor_types(tmp / rel)
    return rec


def _copy_tasks(pbank: PromptBank | None, tasks: list[BankTask], tmp: Path, model_rec: dict) -> dict[str, dict]:
    """Stage 3: bank.json and the chosen task folders, as they are; the manifest's record of each task."""
    recs: dict[str, dict] = {}
    if pbank is None:
        return recs
    (tmp / BUNDLE_BANK_DIR / TASKS_DIR).mkdir(parents=True)
    shutil.copy2(pbank.root / BANK_FILE, tmp / BUNDLE_BANK_DIR / BANK_FILE)
    for t in tasks:
        shutil.copytree(t.path, tmp / BUNDLE_BANK_DIR / TASKS_DIR / t.name)
        tensors, m = t.tensors(), t.method_spec
        forms = {
            m.bundle_form.value: {
                TaskFormKeys.FILE: f"{BUNDLE_BANK_DIR}/{TASKS_DIR}/{t.name}/{TASK_TENSORS_FILE}",
                TaskFormKeys.BYTES: int(tensors[m.tensor_key].nbytes),
            }
        }
        vt = model_rec.get(ModelKeys.VIRTUAL_TOKENS, {}).get(t.name)
        if vt:
            forms[TaskForm.VIRTUAL_TOKENS.value] = {TaskFormKeys.IDS: vt}
        recs[t.name] = {
            TaskKeys.METHOD: m.name,
            TaskKeys.KIND: t.spec.kind.value,
            TaskKeys.NUM_VIRTUAL_TOKENS: t.num_virtual_tokens,
            TaskRecordKeys.FORMS: forms,
        }
    return recs


def _manifest(lm, cfg: ExportConfig, model_rec: dict, task_recs: dict) -> dict:
    tk = lm.tokenizer
    return {
        BundleKeys.FORMAT: BUNDLE_FORMAT,
        BundleKeys.VERSION: BUNDLE_VERSION,
        BundleKeys.BASE_MODEL: lm.info.to_dict(),
        BundleKeys.MODEL: {
            ModelKeys.FORMAT: cfg.format,
            ModelKeys.QUANT: cfg.quant,
            ModelKeys.CONTEXT_LENGTH: int(getattr(lm.model.config, "max_position_embeddings", 2048)),
            **model_rec,
        },
        BundleKeys.TOKENIZER: {
            TokenizerKeys.ADD_BOS: False,
            TokenizerKeys.BOS_ID: tk.bos_token_id,
            TokenizerKeys.EOS_ID: tk.eos_token_id,
            TokenizerKeys.PAD_ID: tk.pad_token_id,
            TokenizerKeys.CHAT_TEMPLATE: getattr(tk, "chat_template", None),
        },
        BundleKeys.TASKS: task_recs,
        BundleKeys.TOOLS: _tool_versions(),
        BundleKeys.CREATED: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _ship_kv(rt, tasks: list[BankTask], tmp: Path, task_recs: dict) -> None:
    """``--with-kv``: each prefill-method task's prefix, computed by the exported model, in the backend's own form."""
    be = rt.backend
    for t in tasks:
        if not t.method_spec.takes_prefill:  # a KV prefix ships as it is already
            continue
        data = be.prefix_to_bytes(rt.prefix(t.name))
        rel = f"{BUNDLE_KV_DIR}/{t.name}{be.prefix_suffix}"
        atomic_write_bytes(tmp / rel, data)
        task_recs[t.name][TaskRecordKeys.FORMS][be.prefix_form.value] = {TaskFormKeys.FILE: rel, TaskFormKeys.BYTES: len(data)}


def _hash_files(tmp: Path) -> dict[str, dict]:
    files = {}
    for f in sorted(tmp.rglob("*")):
        rel = f.relative_to(tmp).as_posix()
        if f.is_file() and rel != BUNDLE_MANIFEST_FILE and not f.name.startswith("."):
            files[rel] = {FileKeys.SHA256: file_sha256(f), FileKeys.BYTES: f.stat().st_size}
    return files


def export_bundle(
    out: str | Path,
    bank: str | Path | None = None,
    model: str | Path = "default",
    config: ExportConfig | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    _fail_after: str | None = None,
) -> ExportResult:
    """Write a bundle to ``out`` in the stages of the module docstring. Returns its path and manifest."""
    from edgeprompt.runtimes import open_bundle
    from edgeprompt.train.models import FrozenLM, canonical_tokenizer_json, resolve_model_dir

    cfg = config or ExportConfig()
    out = Path(out)
    _quiet_tool_logs()
    # 1. options, bank, model: refused before any work
    if out.exists() and not overwrite:
        raise EdgePromptError(f"{out} already exists; pass --overwrite to replace it (it is replaced only once the new bundle is complete).")
    if out.exists():
        _check_replaceable(out, bank, model)
    pbank = PromptBank(bank) if bank is not None else None
    tasks = _select_tasks(pbank, cfg.tasks)
    check_supported(ModelFormat(cfg.format), cfg.quant, resolve_model_dir(model))
    t0 = time.perf_counter()
    lm = FrozenLM.load(model)
    if pbank is not None and pbank.base_model() is not None:
        lm.info.check_compatible(pbank.base_model(), f"bank {pbank.root}")
    for t in tasks:
        lm.info.check_compatible(t.base_model, f"task {t.name!r}")
    timings: dict = {"load_s": round(time.perf_counter() - t0, 1)}
    with atomic_directory(out) as tmp:
        # 2. the model
        scratch = tmp / ".work"
        scratch.mkdir()
        t1 = time.perf_counter()
        if cfg.format == ModelFormat.ONNX.value:
            model_rec = _export_onnx(lm, cfg, tmp, scratch, log, model)
        else:
            model_rec = _export_gguf(lm, model, cfg, tasks, tmp, scratch, log)
        timings["model_s"] = round(time.perf_counter() - t1, 1)
        shutil.rmtree(scratch)
        if _fail_after == "model":
            raise EdgePromptError("simulated failure after the model was written (test hook).")
        # 3. tokenizer and tasks; a provisional manifest lets the runtime open tmp
        atomic_write_bytes(tmp / BUNDLE_TOKENIZER_FILE, canonical_tokenizer_json(lm.tokenizer).encode())
        task_recs = _copy_tasks(pbank, tasks, tmp, model_rec)
        manifest = _manifest(lm, cfg, model_rec, task_recs)
        atomic_write_json(tmp / BUNDLE_MANIFEST_FILE, manifest)
        # 4. the parity gate, through the runtime on the files just written (and --with-kv from it)
        t2 = time.perf_counter()
        log("parity gate: torch fp32 reference vs the exported model ...")
        probes = make_probes(tasks, cfg.probes_per_task)
        ref = reference_logits(lm, {t.name: t for t in tasks}, probes)
        rt = open_bundle(tmp, threads=cfg.threads, verify=False, n_ctx=4096)
        try:
            what = f"{cfg.format} {cfg.quant} export"
            parity = run_gate(rt, ref, probes, rt.bundle.full_precision, what, model_rec.get(ModelKeys.VIRTUAL_TOKENS, {}))
            if cfg.with_kv:
                _ship_kv(rt, tasks, tmp, task_recs)
        finally:
            rt.close()
        timings["parity_s"] = round(time.perf_counter() - t2, 1)
        pdir = tmp / BUNDLE_PROBES_DIR
        pdir.mkdir()
        atomic_write_json(pdir / PROBES_FILE, probes_json(probes))
        atomic_write_safetensors(pdir / PROBES_REFERENCE_FILE, {TENSOR_REFERENCE_LOGITS: ref.astype(np.float32)})
        if _fail_after == "parity":
            raise EdgePromptError("simulated failure after the parity gate (test hook).")
        # 5. every file's sha256, then the manifest, last
        timings["total_s"] = round(time.perf_counter() - t0, 1)
        manifest.update({BundleKeys.PARITY: parity, BundleKeys.FILES: _hash_files(tmp), BundleKeys.EXPORT_SECONDS: timings})
        atomic_write_json(tmp / BUNDLE_MANIFEST_FILE, manifest)
    log(f"wrote {out}")
    return ExportResult(out, manifest, timings)
