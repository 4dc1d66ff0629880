"""Measurements that need a process of their own: memory by stage, and banks of 1 to 1,000 tasks.

The profiler runs ``python -m edgeprompt.profile.children KIND 'JSON args'``; the child prints one JSON
line. A child's RSS is that runtime's alone: nothing of the profiler's earlier stages is in it.

Memory stages: the interpreter with the runtime imported; the bundle open (weights mapped or loaded, the
llama.cpp KV cache and compute buffers allocated); the first request (arenas, an ONNX sequence's KV);
a task's prefix cached; then ``concurrent`` sequences held at once (their KV), per sequence.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgeprompt.profile.memory import mapped_files, peak_rss, rss


def memory_child(a: dict) -> dict:
    from edgeprompt.profile.bundle_profile import synthetic_tasks, text_ids
    from edgeprompt.runtimes.runtime import open_bundle

    stages = {"imported": rss()}
    rt = open_bundle(a["bundle"], threads=a["threads"], cache_mb=a["cache_mb"], n_ctx=a["n_ctx"])
    stages["opened"] = rss()
    engine = rt.backend.memory()
    maps = mapped_files(a["bundle"])
    ids = text_ids(rt, a["text"])
    with rt.backend.sequence(None) as seq:
        logits = seq.feed_ids(ids)
        for _ in range(a["decode"]):
            logits = seq.feed_ids([int(np.argmax(logits[: rt.vocab_size]))])
    stages["first_request"] = rss()
    synth = synthetic_tasks(rt, Path(a["scratch"]), [a["P"]])
    for task in synth.values():
        rt.logits(task, "hello")
    stages["prefixes_cached"] = rss()
    cache_bytes = rt.cache.stats.bytes
    held, per_seq = [], []
    for _ in range(a["concurrent"]):  # sequences held at once: ONNX runs them concurrently, each with its KV
        before = rss()
        with rt.backend.sequence(None) as seq:
            seq.feed_ids(ids)
            held.append(seq.snapshot())
        per_seq.append(rss() - before)
    stages["concurrent"] = rss()
    out = {
        "stages": stages,
        "peak_rss": peak_rss(),
        "engine": engine,
        "mapped": maps,
        "prefix_cache_bytes": cache_bytes,
        "prefix_bytes": {k[0]: rt.prefix(v).nbytes for k, v in synth.items()},
        "snapshot_bytes": [h.nbytes for h in held],
        "rss_per_concurrent_sequence": per_seq,
        "text_tokens": len(ids),
    }
    rt.close()
    return out


def bank_child(a: dict) -> dict:
    """A bundle with N tasks of one method: open time, RSS, then requests cycling over the tasks."""
    from edgeprompt.runtimes.runtime import open_bundle

    r0 = rss()
    t = time.perf_counter()
    rt = open_bundle(a["bundle"], threads=a["threads"], cache_mb=a["cache_mb"], n_ctx=a["n_ctx"])
    open_s = time.perf_counter() - t
    r_open = rss()
    names = rt.tasks
    rt.classify(names[0], a["text"])  # warm-up, excluded
    s0 = (rt.cache.stats.hits, rt.cache.stats.misses)
    lat = []
    for i in range(a["requests"]):
        t = time.perf_counter()
        rt.classify(names[(i + 1) % len(names)], a["text"])
        lat.append(time.perf_counter() - t)
    hits, misses = rt.cache.stats.hits - s0[0], rt.cache.stats.misses - s0[1]
    out = {
        "tasks": len(names),
        "open_s": open_s,
        "rss_imported": r0,
        "rss_open": r_open,
        "rss_end": rss(),
        "peak_rss": peak_rss(),
        "cache_bytes": rt.cache.stats.bytes,
        "hit_rate": hits / max(hits + misses, 1),
        "request_s": {"mean": statistics.fmean(lat), "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)), "n": len(lat)},
    }
    rt.close()
    return out


def run(kind: str, args: dict, timeout: float = 1800) -> dict:
    """Run a child; its JSON, or ``{"error": ...}`` with its last line of stderr."""
    r = subprocess.run([sys.executable, "-m", "edgeprompt.profile.children", kind, json.dumps(args)], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def bank_bundle(plain: Path, method: str, n: int, P: int, out: Path, seed: int = 0) -> Path:
    """``plain``'s files (hard links) plus ``n`` synthetic tasks of ``method``, listed and hashed in a new manifest."""
    from edgeprompt.core.bank import PromptBank
    from edgeprompt.core.bundle import Bundle
    from edgeprompt.core.constants import (
        BUNDLE_BANK_DIR,
        BUNDLE_MANIFEST_FILE,
        TASK_TENSORS_FILE,
        TASKS_DIR,
        BundleKeys,
        TaskFormKeys,
        TaskKeys,
        TaskRecordKeys,
    )
    from edgeprompt.core.files import atomic_write_bytes, file_sha256
    from edgeprompt.core.methods import get_method
    from edgeprompt.profile.bundle_profile import SYNTHETIC_SPEC

    b = Bundle.open(plain, verify=False)
    info = b.base_model
    m = get_method(method)
    shutil.copytree(plain, out, copy_function=_link_or_copy, ignore=shutil.ignore_patterns(BUNDLE_BANK_DIR))
    bank = PromptBank(out / BUNDLE_BANK_DIR)
    rng = np.random.default_rng(seed)
    shape = [P if s is None else s for s in m.folded_shape(info)]
    manifest = json.loads((plain / BUNDLE_MANIFEST_FILE).read_text())
    files = {k: v for k, v in manifest.get(BundleKeys.FILES, {}).items() if not k.startswith(BUNDLE_BANK_DIR + "/")}
    tasks = {}
    for i in range(n):
        name = f"t{i:04d}"
        t = bank.add(name, m, {m.tensor_key: (0.02 * rng.standard_normal(shape)).astype(np.float32)}, SYNTHETIC_SPEC, info)
        rel = f"{BUNDLE_BANK_DIR}/{TASKS_DIR}/{name}/"
        for f in t.path.iterdir():
            files[rel + f.name] = {"sha256": file_sha256(f), "bytes": f.stat().st_size}
        tasks[name] = {
            TaskKeys.METHOD: m.name,
            TaskKeys.KIND: SYNTHETIC_SPEC.kind.value,
            TaskKeys.NUM_VIRTUAL_TOKENS: P,
            TaskRecordKeys.FORMS: {m.bundle_form.value: {TaskFormKeys.FILE: rel + TASK_TENSORS_FILE, TaskFormKeys.BYTES: int(np.prod(shape)) * 4}},
        }
    bank_json = out / BUNDLE_BANK_DIR / "bank.json"
    files[f"{BUNDLE_BANK_DIR}/bank.json"] = {"sha256": file_sha256(bank_json), "bytes": bank_json.stat().st_size}
    for lock in (out / BUNDLE_BANK_DIR).rglob(".*"):  # the bank's lock files: not bundle files
        if lock.is_file():
            lock.unlink()
    manifest[BundleKeys.TASKS] = tasks
    manifest[BundleKeys.FILES] = files
    manifest.pop(BundleKeys.PARITY, None)
    atomic_write_bytes(out / BUNDLE_MANIFEST_FILE, json.dumps(manifest, indent=1).encode())
    return out


def _link_or_copy(src, dst):
    try:
        Path(dst).hardlink_to(src)
    except OSError:
        shutil.copy2(src, dst)


if __name__ == "__main__":
    kind, args = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps({"memory": memory_child, "bank": bank_child}[kind](args)))
