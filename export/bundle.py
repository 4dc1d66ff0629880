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

from edgeprompt.bank import BankTask, PromptBank
from edgeprompt.constants import (
    BANK_FILE,
    BUNDLE_BANK_DIR,
    BUNDLE_FORMAT,
    BUNDLE_KV_DIR,
    BUNDLE_MANIFEST_FILE,
    BUNDLE_MODEL_DIR,
    BUNDLE_PROBES_DIR,
    BUNDLE_TOKENIZER_FILE,
    BUNDLE_VERSION,
    FULL_PRECISION_QUANTS,
    GGUF_MODEL_FILE,
    LLAMA_STATE_SUFFIX,
    ONNX_EMBEDDINGS_FILE,
    ONNX_MODEL_FILE,
    PARITY_FP32_MAX_ABS,
    PROBES_FILE,
    PROBES_REFERENCE_FILE,
    QUANT_TYPES,
    TASK_TENSORS_FILE,
    TASKS_DIR,
    TENSOR_EMBEDDINGS,
    TENSOR_KV_PREFIX,
    TENSOR_PROMPT_EMBEDDINGS,
    TENSOR_REFERENCE_LOGITS,
    BundleKeys,
    FileKeys,
    Method,
    ModelFormat,
    ModelKeys,
    TaskForm,
    TaskFormKeys,
    TaskKeys,
    TaskRecordKeys,
    TaskKind,
    TokenizerKeys,
)
from edgeprompt.io import EdgePromptError, atomic_directory, atomic_write_bytes, atomic_write_json, atomic_write_safetensors, file_sha256
from edgeprompt.parity import PLAIN, Probe, check_fp32, compare, probes_json

VIRTUAL_PARITY_SUFFIX = "#virtual_tokens"

#: Texts for the plain-model probes and for tasks whose data cannot be rebuilt.
GENERIC_PROBES = (
    "The weather today is",
    "I can't believe the game last night, what a finish!",
    "Write a short note to thank a colleague for their help.",
    "My phone battery died again at 3pm #annoying",
    "The capital of France is",
    "Honestly the new update is fine, nothing special.",
    "Breakfast: two eggs, toast and 1 coffee.",
    "We won 2-1 in the last minute!!!",
)


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

    def __post_init__(self):
        try:
            self.format = ModelFormat(self.format).value
        except ValueError:
            raise EdgePromptError(f"export format {self.format!r} is not supported; choose onnx or gguf.") from None
        ok = QUANT_TYPES[ModelFormat(self.format)]
        if self.quant not in ok:
            raise EdgePromptError(f"quantization {self.quant!r} is not supported for {self.format}; choose one of: {', '.join(ok)}.")
        if self.virtual_tokens and self.format != "gguf":
            raise EdgePromptError("--virtual-tokens folds prompts into a GGUF vocabulary; use it with --format gguf.")
        if self.virtual_tokens and self.quant == "source":
            raise EdgePromptError("--virtual-tokens rewrites the embedding table; it cannot pass the source GGUF through: pick a quant.")
        if self.probes_per_task < 1:
            raise EdgePromptError("probes_per_task must be at least 1.")


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


def _probes(tasks: list[BankTask], n: int) -> list[Probe]:
    """``n`` probes per task from its test split (the data record in its manifest), and ``n`` plain."""
    from edgeprompt.api import dataset_for_task

    out: list[Probe] = []
    for t in tasks:
        try:
            ex = dataset_for_task(t).test[:n]
            out += [Probe(t.name, e.text, e.label if t.spec.kind == TaskKind.CLASSIFICATION else None) for e in ex]
        except EdgePromptError:
            out += [Probe(t.name, s) for s in GENERIC_PROBES[:n]]
    out += [Probe(PLAIN, s) for s in (GENERIC_PROBES * (n // len(GENERIC_PROBES) + 1))[:n]]
    return out


def _reference_logits(lm, tasks: dict[str, BankTask], probes: list[Probe]) -> np.ndarray:
    """torch fp32 next-token logits ``[N, V]`` for each probe (the same inputs the runtime builds)."""
    import torch

    from edgeprompt.api import task_kv
    from edgeprompt.prefix import logits_at, text_hidden

    kvs = {}
    rows = []
    with torch.no_grad():
        for p in probes:
            if p.task == PLAIN:
                kv, ids = None, lm.encode(p.text)
            else:
                if p.task not in kvs:
                    kvs[p.task] = task_kv(lm, tasks[p.task])
                kv, ids = kvs[p.task], tasks[p.task].spec.encode_input(lm.encode, p.text)
            x = torch.tensor([ids])
            h = text_hidden(lm, kv, x, torch.ones_like(x))[0, -1]  # the LM head on the last position only
            rows.append(logits_at(lm, h).float().numpy())
    return np.stack(rows)


def _export_onnx(lm, cfg: ExportConfig, tmp: Path, scratch: Path, log) -> dict:
    from .onnx_decoder import export_decoder
    from .onnx_quant import op_types, quantize

    log("exporting the ONNX decoder (dynamo exporter) ...")
    fp32 = export_decoder(lm, scratch / ONNX_MODEL_FILE)
    rel = f"{BUNDLE_MODEL_DIR}/{ONNX_MODEL_FILE}"
    log(f"quantizing: {cfg.quant} ...")
    quantize(fp32, tmp / rel, cfg.quant)
    emb_rel = f"{BUNDLE_MODEL_DIR}/{ONNX_EMBEDDINGS_FILE}"
    atomic_write_safetensors(tmp / emb_rel, {TENSOR_EMBEDDINGS: lm.embeddings.detach().float().numpy()})
    return {ModelKeys.FILE: rel, ModelKeys.EMBEDDINGS: emb_rel, ModelKeys.TENSOR_TYPES: op_types(tmp / rel)}


def _export_gguf(lm, model_spec, cfg: ExportConfig, tasks: list[BankTask], tmp: Path, scratch: Path, log) -> dict:
    from edgeprompt.models import DEFAULT_MODEL, default_gguf_path

    from .gguf_convert import write_gguf
    from .gguf_quant import quantize, tensor_types

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
                if t.method == Method.PROMPT_TUNING:
                    e = t.tensors()[TENSOR_PROMPT_EMBEDDINGS]
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


def export_bundle(
    out: str | Path,
    bank: str | Path | None = None,
    model: str | Path = "default",
    config: ExportConfig | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    _fail_after: str | None = None,
) -> ExportResult:
    """Write a bundle to ``out`` (see the module docstring). Returns its path and manifest."""
    cfg = config or ExportConfig()
    out = Path(out)
    _quiet_tool_logs()
    if out.exists() and not overwrite:
        raise EdgePromptError(f"{out} already exists; pass --overwrite to replace it (it is replaced only once the new bundle is complete).")
    if out.exists():
        _check_replaceable(out, bank, model)
    pbank = PromptBank(bank) if bank is not None else None
    tasks = _select_tasks(pbank, cfg.tasks)
    from edgeprompt.models import FrozenLM, resolve_model_dir

    resolve_model_dir(model)  # unsupported architecture: refused here, before any work
    t0 = time.perf_counter()
    lm = FrozenLM.load(model)
    if pbank is not None and pbank.base_model() is not None:
        lm.info.check_compatible(pbank.base_model(), f"bank {pbank.root}")
    for t in tasks:
        lm.info.check_compatible(t.base_model, f"task {t.name!r}")
    timings: dict = {"load_s": round(time.perf_counter() - t0, 1)}
    with atomic_directory(out) as tmp:
        scratch = tmp / ".work"
        scratch.mkdir()
        t1 = time.perf_counter()
        if cfg.format == ModelFormat.ONNX.value:
            model_rec = _export_onnx(lm, cfg, tmp, scratch, log)
        else:
            model_rec = _export_gguf(lm, model, cfg, tasks, tmp, scratch, log)
        timings["model_s"] = round(time.perf_counter() - t1, 1)
        shutil.rmtree(scratch)
        if _fail_after == "model":
            raise EdgePromptError("simulated failure after the model was written (test hook).")
        from edgeprompt.models import canonical_tokenizer_json

        atomic_write_bytes(tmp / BUNDLE_TOKENIZER_FILE, canonical_tokenizer_json(lm.tokenizer).encode())
        # the bank: bank.json and the chosen task folders, as they are
        task_recs: dict[str, dict] = {}
        if pbank is not None:
            (tmp / BUNDLE_BANK_DIR / TASKS_DIR).mkdir(parents=True)
            shutil.copy2(pbank.root / BANK_FILE, tmp / BUNDLE_BANK_DIR / BANK_FILE)
            for t in tasks:
                shutil.copytree(t.path, tmp / BUNDLE_BANK_DIR / TASKS_DIR / t.name)
                tensors = t.tensors()
                key = TENSOR_PROMPT_EMBEDDINGS if t.method == Method.PROMPT_TUNING else TENSOR_KV_PREFIX
                form = TaskForm.EMBEDDINGS if t.method == Method.PROMPT_TUNING else TaskForm.KV_PREFIX
                task_recs[t.name] = {
                    TaskKeys.METHOD: t.method.value,
                    TaskKeys.KIND: t.spec.kind.value,
                    TaskKeys.NUM_VIRTUAL_TOKENS: t.num_virtual_tokens,
                    TaskRecordKeys.FORMS: {
                        form.value: {
                            TaskFormKeys.FILE: f"{BUNDLE_BANK_DIR}/{TASKS_DIR}/{t.name}/{TASK_TENSORS_FILE}",
                            TaskFormKeys.BYTES: int(tensors[key].nbytes),
                        }
                    },
                }
                vt = model_rec.get(ModelKeys.VIRTUAL_TOKENS, {}).get(t.name)
                if vt:
                    task_recs[t.name][TaskRecordKeys.FORMS][TaskForm.VIRTUAL_TOKENS.value] = {TaskFormKeys.IDS: vt}
        tk = lm.tokenizer
        manifest = {
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
        atomic_write_json(tmp / BUNDLE_MANIFEST_FILE, manifest)  # provisional: lets the runtime open tmp
        # the parity gate, through the runtime on the files just written
        t2 = time.perf_counter()
        log("parity gate: torch fp32 reference vs the exported model ...")
        probes = _probes(tasks, cfg.probes_per_task)
        by_name = {t.name: t for t in tasks}
        ref = _reference_logits(lm, by_name, probes)
        from edgeprompt.runtimes import open_bundle

        rt = open_bundle(tmp, threads=cfg.threads, verify=False, n_ctx=4096)
        try:
            cand = np.stack([rt.logits(p.task or None, p.text) for p in probes])
            V = ref.shape[1]
            results = compare(ref, cand, probes, rt.label_ids(), max_abs=PARITY_FP32_MAX_ABS if cfg.quant in FULL_PRECISION_QUANTS else None)
            if cfg.quant in FULL_PRECISION_QUANTS:
                check_fp32(results, f"{cfg.format} {cfg.quant} export")
            parity = {t: r.to_dict() for t, r in results.items()}
            # stock llama.cpp runs a --virtual-tokens task from token ids: the (quantized) embedding
            # rows it then reads are checked too, as TASK#virtual_tokens
            for name, ids in model_rec.get(ModelKeys.VIRTUAL_TOKENS, {}).items():
                rows = [i for i, p in enumerate(probes) if p.task == name]
                vt_probes = [probes[i] for i in rows]
                got = []
                for p in vt_probes:
                    with rt.backend.sequence(None) as seq:
                        got.append(seq.feed_ids(list(ids) + rt.input_ids(name, p.text))[:V])
                r = compare(ref[rows], np.stack(got), vt_probes, rt.label_ids())[name]
                parity[f"{name}{VIRTUAL_PARITY_SUFFIX}"] = r.to_dict()
            if cfg.with_kv:
                for t in tasks:
                    if t.method != Method.PROMPT_TUNING:
                        continue
                    p = rt.prefix(t.name)
                    if rt.backend.name == "onnx":
                        rel = f"{BUNDLE_KV_DIR}/{t.name}.safetensors"
                        kv = rt.backend.engine.state_to_kv(p.data)
                        atomic_write_safetensors(tmp / rel, {TENSOR_KV_PREFIX: kv})
                        task_recs[t.name][TaskRecordKeys.FORMS][TaskForm.KV_PREFIX.value] = {TaskFormKeys.FILE: rel, TaskFormKeys.BYTES: int(kv.nbytes)}
                    else:
                        rel = f"{BUNDLE_KV_DIR}/{t.name}{LLAMA_STATE_SUFFIX}"
                        atomic_write_bytes(tmp / rel, bytes(p.data))
                        task_recs[t.name][TaskRecordKeys.FORMS][TaskForm.LLAMA_STATE.value] = {TaskFormKeys.FILE: rel, TaskFormKeys.BYTES: p.nbytes}
        finally:
            rt.close()
        timings["parity_s"] = round(time.perf_counter() - t2, 1)
        pdir = tmp / BUNDLE_PROBES_DIR
        pdir.mkdir()
        atomic_write_json(pdir / PROBES_FILE, probes_json(probes))
        atomic_write_safetensors(pdir / PROBES_REFERENCE_FILE, {TENSOR_REFERENCE_LOGITS: ref.astype(np.float32)})
        if _fail_after == "parity":
            raise EdgePromptError("simulated failure after the parity gate (test hook).")
        files = {}
        for f in sorted(tmp.rglob("*")):
            rel = f.relative_to(tmp).as_posix()
            if f.is_file() and rel != BUNDLE_MANIFEST_FILE and not f.name.startswith("."):
                files[rel] = {FileKeys.SHA256: file_sha256(f), FileKeys.BYTES: f.stat().st_size}
        timings["total_s"] = round(time.perf_counter() - t0, 1)
        manifest.update({BundleKeys.PARITY: parity, BundleKeys.FILES: files, BundleKeys.EXPORT_SECONDS: timings})
        atomic_write_json(tmp / BUNDLE_MANIFEST_FILE, manifest)
    log(f"wrote {out}")
    return ExportResult(out, manifest, timings)
