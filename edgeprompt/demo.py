"""``edgeprompt demo``: the main job, end to end, on the embedded default model and the tweets.

1. train a prompt-tuning and a prefix-tuning task on the tweets (reused when the bank has them for this model);
2. export a GGUF q8_0 bundle (with the prompt-tuning task also as virtual tokens for stock llama.cpp) and an
   ONNX int8 bundle (reused when they hold exactly these tasks);
3. classify a few real test tweets, swapping tasks per request on the torch-free runtime;
4. profile both bundles (``--quick``) and write the report; print where it is and its headline.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

DEMO_TASKS = {"tweets-prompt": "prompt_tuning", "tweets-prefix": "prefix_tuning"}
#: (format, quant, folder, export options)
#: The ONNX bundle's int8 table is the tied LM head's own Q8_0 copy (one copy), and for the embedded GGUF, whose
#: ``token_embd`` is Q8_0, exactly its weights: 108 MiB less than an fp32 table at no cost in logits.
DEMO_BUNDLES = (("gguf", "q8_0", "tweets-gguf-q8_0", {"virtual_tokens": True}), ("onnx", "int8", "tweets-onnx-int8", {"embeddings": "int8"}))


def _bundle_is_current(path: Path, bank, quant: str, options: dict) -> bool:
    """The bundle exists, was exported as ``quant`` with the demo's embedding table, and holds the bank's demo
    tasks, byte for byte (by sha256)."""
    from edgeprompt.core.bundle import Bundle
    from edgeprompt.core.constants import TASK_TENSORS_FILE, BundleKeys, ModelKeys
    from edgeprompt.core.errors import EdgePromptError
    from edgeprompt.core.files import file_sha256

    try:
        b = Bundle.open(path, verify=False)
    except EdgePromptError:
        return False
    if set(b.tasks) != set(DEMO_TASKS):
        return False
    model = b.manifest.get(BundleKeys.MODEL, {})
    if model.get(ModelKeys.QUANT) != quant or model.get(ModelKeys.EMBEDDINGS_DTYPE, "fp32") != options.get("embeddings", "fp32"):
        return False
    files = b.manifest.get("files", {})
    for name in DEMO_TASKS:
        rel = b.task_dir(name) + TASK_TENSORS_FILE
        if files.get(rel, {}).get("sha256") != file_sha256(bank.task(name).path / TASK_TENSORS_FILE):
            return False
    return True


def run_demo(
    workdir: str | Path = ".",
    bank_dir: str | Path = "edgeprompt-bank",
    out: str | Path = "edgeprompt-profile",
    steps: int | None = None,
    log: Callable[[str], None] = print,
    model: str | Path = "default",
    data=None,
    data_args: dict | None = None,
    profile_config=None,
) -> dict:
    """Returns ``{"timings": {stage: s}, "classified": [...], "report": path, "headline": [...]}``.

    ``model``, ``data`` (a :class:`~edgeprompt.core.data.Dataset`, with the ``data_args`` that rebuild it) and
    ``profile_config`` default to the embedded SmolLM2, the tweets and ``ProfileConfig.quick()``; the tests
    pass a tiny model and data."""
    from edgeprompt.core.bank import PromptBank
    from edgeprompt.core.data import load_tweets
    from edgeprompt.core.methods import get_method
    from edgeprompt.export.writer import ExportConfig, export_bundle
    from edgeprompt.profile import ProfileConfig, profile_bundles
    from edgeprompt.runtimes import open_bundle
    from edgeprompt.train.loop import TrainConfig, adapt_to_dataset
    from edgeprompt.train.models import FrozenLM
    from edgeprompt.train.workflows import format_reports, train_task

    work = Path(workdir)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    bank = PromptBank(work / bank_dir)
    if data is None:
        data, data_args = load_tweets(), {"source": "tweets"}
    lm = None
    for name, method in DEMO_TASKS.items():
        have = name in bank.names()
        if have:
            lm = lm or FrozenLM.load(model)
            if bank.task(name).base_model.fingerprint == lm.info.fingerprint and bank.task(name).method == method:
                log(f"[1/4] reusing {name} ({method}) from {bank.root}")
                continue
        lm = lm or FrozenLM.load(model)
        log(f"[1/4] training {name} ({method}) on {len(data.train)} {data.name} examples ...")
        spec = get_method(method)
        given = {} if steps is None else {"steps": steps, "eval_every": max(steps // 2, 1)}
        # the defaults `edgeprompt train` would choose for this data (steps, cadence, the training cut), said
        cfg, notes = adapt_to_dataset(lm, data, TrainConfig(**given), set(given))
        for note in notes:
            log(f"      {note}")
        task, summary = train_task(lm, data, data_args, method, spec.config_cls(), cfg, bank, name, overwrite=True, progress=True)
        if "reports" in summary:
            log(format_reports(task.spec, summary["reports"]))
    timings["train_s"] = time.perf_counter() - t0
    t = time.perf_counter()
    paths = []
    for fmt, quant, folder, kw in DEMO_BUNDLES:
        path = work / folder
        paths.append(path)
        if _bundle_is_current(path, bank, quant, kw):
            log(f"[2/4] reusing the {fmt} {quant} bundle {path}")
            continue
        log(f"[2/4] exporting {fmt} {quant} to {path} ...")
        export_bundle(
            path,
            bank=bank.root,
            model=model,
            config=ExportConfig(format=fmt, quant=quant, tasks=list(DEMO_TASKS), **kw),
            overwrite=True,
            log=lambda s: log("      " + s),
        )
    timings["export_s"] = time.perf_counter() - t
    t = time.perf_counter()
    classified = []
    with open_bundle(paths[0]) as rt:
        log(f"[3/4] classifying test tweets on {paths[0].name} ({rt.backend.name}), swapping tasks per request:")
        for ex in data.test[:4]:
            for name in DEMO_TASKS:
                c = rt.classify(name, ex.text)
                classified.append({"task": name, "text": ex.text, "label": c.label, "gold": ex.label, "p": c.probabilities[c.label]})
                log(f"      {name:<14} {c.label:<8} (p={c.probabilities[c.label]:.2f}, gold {ex.label:<8}) {ex.text[:60]!r}")
    timings["classify_s"] = time.perf_counter() - t
    t = time.perf_counter()
    log(f"[4/4] profiling both bundles (--quick) into {work / out} ...")
    res = profile_bundles(paths, work / out, profile_config or ProfileConfig.quick(eval_n=100), force=True, log=lambda s: log("      " + s))
    timings["profile_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    return {"timings": timings, "classified": classified, "report": str(work / out / "report.html"), "headline": res.get("headline", [])}
