"""``edgeprompt profile``: every stage, in order, each saved as it completes.

``results.json`` is rewritten after every stage with ``complete: false`` and the stages still ``missing``,
so an interrupted run (Ctrl-C, a crash, a kill) leaves what it measured and says what it did not.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from edgeprompt.core.bundle import Bundle
from edgeprompt.core.errors import EdgePromptError
from edgeprompt.core.methods import PrefixKind
from edgeprompt.profile import children, costmodel, devices, report
from edgeprompt.profile.bundle_profile import BundleProfiler, accuracy, synthetic_tasks, threads_sweep
from edgeprompt.profile.environment import environment, usable_cores
from edgeprompt.profile.memory import bandwidth_gbs
from edgeprompt.runtimes.backend import default_threads


class ProfileError(EdgePromptError):
    """A profile cannot run as asked (an output folder in the way, an unknown device, ...)."""


@dataclass
class ProfileConfig:
    """What ``edgeprompt profile`` measures; every sweep is a list a flag sets. ``quick()`` is the demo's."""

    threads: list[int] = field(default_factory=list)  # sweep; [] = 1..cores
    threads_main: int = 0  # the thread count of every other figure; 0 = the runtime's default
    P: list[int] = field(default_factory=lambda: [5, 10, 20, 50, 100])
    P_main: int = 20
    text_lengths: list[int] = field(default_factory=lambda: [16, 64, 256])
    text_main: int = 64
    tasks: list[int] = field(default_factory=lambda: [1, 10, 100, 1000])
    bank_requests: int = 100
    decode: int = 32
    decode_sweep: int = 8
    reps: int = 5
    reps_open: int = 3
    reps_swap: int = 30  # swaps alone (milliseconds each)
    warmup: int = 1
    global_warmup: int = 3  # plain requests before the first arm, excluded
    cache_mb: float = 64.0
    n_ctx: int = 2048
    concurrent: int = 3
    eval_n: int = 0  # test examples per task classified through the runtime (--eval N)
    devices: list[str] = field(default_factory=devices.builtin_names)

    @classmethod
    def quick(cls, **kw) -> "ProfileConfig":
        base = dict(
            threads=[0], P=[5, 20, 100], text_lengths=[16, 128], tasks=[1, 100], bank_requests=40, decode=16, decode_sweep=4, reps=3, reps_open=1, reps_swap=15
        )
        base.update(kw)
        return cls(**base)

    def resolve(self) -> "ProfileConfig":
        self.threads_main = self.threads_main or default_threads()
        self.threads = sorted({t or self.threads_main for t in self.threads} or set(range(1, usable_cores() + 1)))
        if self.P_main not in self.P:
            self.P = sorted({*self.P, self.P_main})
        if self.text_main not in self.text_lengths:
            self.text_lengths = sorted({*self.text_lengths, self.text_main})
        for name, vals in (("P", self.P), ("text lengths", self.text_lengths), ("tasks", self.tasks), ("threads", self.threads)):
            if not vals or any(v < 1 for v in vals):
                raise ProfileError(f"{name} {vals}: each must be a positive integer.")
        if max(self.text_lengths) + max(self.P) + self.decode + 8 > self.n_ctx:
            raise ProfileError(f"the longest text ({max(self.text_lengths)}) + P ({max(self.P)}) + decode ({self.decode}) exceeds n_ctx {self.n_ctx}.")
        return self


STAGES = ("environment", "bandwidth", "bundles", "training", "cost_model", "projections", "report")


def _open(path: Path, threads: int, cfg: ProfileConfig):
    from edgeprompt.runtimes.runtime import open_bundle

    return open_bundle(path, threads=threads, cache_mb=cfg.cache_mb, n_ctx=cfg.n_ctx)


def profile_bundles(
    bundles: list[str | Path],
    out: str | Path,
    config: ProfileConfig | None = None,
    force: bool = False,
    device_files: list[str] = (),
    log: Callable[[str], None] = print,
    train_cost: Callable[[], list[dict]] | None = None,
) -> dict:
    """Profile each bundle on its own backend, write ``out/{results.json,report.md,report.html}``; the results.

    ``train_cost``: a callable (from the train layer, which this torch-free package does not import) that
    measures training step time and peak RSS per method and P; its rows go to ``results["training"]``."""
    cfg = (config or ProfileConfig()).resolve()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise ProfileError(f"{out} exists and is not empty; pass --force to replace its report, or choose another --out.")
    paths = []
    for b in bundles:
        p = Path(b)
        Bundle.open(p, verify=False)  # a readable manifest, or a clear error, before any work
        paths.append(p)
    devs = [devices.load(d) for d in cfg.devices] + [devices.load(f) for f in device_files]
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {
        "schema": report.RESULTS_SCHEMA,
        "version": report.RESULTS_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "complete": False,
        "missing": list(STAGES),
        "config": asdict(cfg),
        "bundles": [],
    }

    def done(stage: str) -> None:
        if stage in res["missing"]:
            res["missing"].remove(stage)
        report.write(out, res)

    scratch = Path(tempfile.mkdtemp(prefix="edgeprompt-profile-"))
    try:
        res["environment"] = environment()
        done("environment")
        log(f"memory bandwidth, {cfg.threads} threads ...")
        res["bandwidth_gbs"] = {t: bandwidth_gbs(t)["gbs"] for t in sorted({*cfg.threads, cfg.threads_main})}
        done("bandwidth")
        for i, p in enumerate(paths):
            log(f"bundle {p} ...")
            bp: dict = {"path": str(p)}
            res["bundles"].append(bp)
            try:
                _profile_one(p, cfg, scratch / f"b{i}", bp, log, lambda: report.write(out, res))
            except EdgePromptError as e:
                bp["error"] = str(e)
                log(f"  failed: {e}")
        done("bundles")
        if train_cost is not None:
            log("training cost (needs the train extra) ...")
            res["training"] = train_cost()
        done("training")
        pubs, models = None, {}
        for i, bp in enumerate(res["bundles"]):
            if "arms" in bp and "error" not in bp:
                models[i] = m = _cost_model(bp, res, cfg)
                if pubs is None:
                    pubs = costmodel.published_checks(m, devs)
        res["published_checks"] = pubs or []
        done("cost_model")
        res["projections"] = []
        for i, m in models.items():
            bp = res["bundles"][i]
            facts = _facts(bp)
            for d in devs:
                res["projections"].append({"bundle": f"{bp['format']} {bp['quant']}", **costmodel.project(m, d, facts)})
        res["devices"] = {d["name"]: d for d in devs}
        done("projections")
        res["complete"] = True
        res["headline"] = report.headline(res)
        done("report")
    except KeyboardInterrupt:
        res["interrupted"] = True
        report.write(out, res)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return res


def _profile_one(path: Path, cfg: ProfileConfig, scratch: Path, bp: dict, log, save) -> None:
    scratch.mkdir(parents=True)
    rt = _open(path, cfg.threads_main, cfg)
    try:
        info = rt.bundle.base_model
        mem = rt.backend.memory()
        bp.update(
            format=rt.bundle.format.value,
            quant=rt.bundle.quant,
            backend=rt.backend.name,
            model=info.to_dict(),
            model_bytes=mem.get("weights"),
            engine_memory=mem,
            restore_copies=rt.backend.restore_copies,
            P_main=cfg.P_main,
            text_main=cfg.text_main,
            decode_tokens=cfg.decode,
        )
        prof = BundleProfiler(rt, cfg, scratch, log)
        log("  open time ...")
        bp["open_s"] = prof.open_times(path, lambda p: _open(p, cfg.threads_main, cfg))
        synth = synthetic_tasks(rt, scratch, cfg.P)
        real = {"embeddings": [], "kv": []}
        for name in rt.bundle.tasks:
            real[rt.store.get(name).method.prefix_kind.value].append((name, False))
        pool = {k: (v or [(synth[(k, cfg.P_main)], True)]) for k, v in real.items()}
        bp["arms"] = prof.arms(pool)
        save()
        bp["p_sweep"] = prof.p_sweep(synth)
        save()
        warm = {"prompt_warm": synth[("embeddings", cfg.P_main)], "prefix_warm": synth[("kv", cfg.P_main)]}
        bp["text_sweep"] = prof.text_sweep(warm)
        for row in bp["text_sweep"]:
            for arm, task in warm.items():
                row[f"{arm}_prefix_bytes"] = rt.prefix(task).nbytes
        bp["kv_growth"] = prof.kv_growth(cfg.P_main)
        bp["accuracy"] = accuracy(rt, cfg.eval_n, log)
        save()
    finally:
        rt.close()
    log("  threads sweep ...")
    bp["threads_sweep"] = threads_sweep(path, cfg, lambda p, threads: _open(p, threads, cfg), log)
    save()
    log("  memory by stage (child process) ...")
    args = {
        "bundle": str(path),
        "threads": cfg.threads_main,
        "cache_mb": cfg.cache_mb,
        "n_ctx": cfg.n_ctx,
        "text": cfg.text_main,
        "decode": cfg.decode,
        "P": cfg.P_main,
        "concurrent": cfg.concurrent,
    }
    bp["memory"] = children.run("memory", {**args, "scratch": str(scratch / "mem")})
    bp["memory_breakdown"] = _breakdown(bp["memory"], bp)
    save()
    bp["bank_sweep"] = _bank_sweep(path, cfg, scratch, log, save, bp)


def _bank_sweep(path: Path, cfg: ProfileConfig, scratch: Path, log, save, bp: dict) -> list[dict]:
    rows = bp.setdefault("bank_sweep", [])
    for kind in (PrefixKind.EMBEDDINGS, PrefixKind.KV):
        from edgeprompt.profile.bundle_profile import method_for

        method = method_for(kind)
        for n in cfg.tasks:
            log(f"  bank: {n} {method} tasks (child process) ...")
            d = scratch / f"bank-{method}-{n}"
            children.bank_bundle(path, method, n, cfg.P_main, d)
            task_bytes = sum(f.stat().st_size for f in (d / "bank" / "tasks" / "t0000").iterdir())
            r = children.run(
                "bank",
                {
                    "bundle": str(d),
                    "threads": cfg.threads_main,
                    "cache_mb": cfg.cache_mb,
                    "n_ctx": cfg.n_ctx,
                    "requests": max(cfg.bank_requests, min(2 * n, 300)),  # twice round the bank where it fits: hits show
                    "text": "so tired of this rain",
                },
            )
            shutil.rmtree(d, ignore_errors=True)
            r.update(method=method, tasks=n, task_bytes=task_bytes, cache_budget=int(cfg.cache_mb * 2**20), synthetic=True)
            ps = next((x for x in bp.get("p_sweep", []) if x["kind"] == kind.value and x["P"] == cfg.P_main), None)
            r["prefix_bytes"] = ps["prefix_resident"] if ps else 0
            rows.append(r)
            save()
    return rows


def _breakdown(mem: dict, bp: dict) -> dict:
    """RSS split into weights (mapped/resident or loaded), KV cache, prefix cache, compute/arenas, the rest."""
    if not mem or "error" in mem:
        return {}
    st, eng = mem["stages"], mem.get("engine", {})
    total = st["concurrent"]
    mapped = mem.get("mapped", {})
    w_res = sum(v["resident"] for v in mapped.values())
    w_map = sum(v["mapped"] for v in mapped.values())
    out: dict = {}
    if w_map:
        out["weights, mapped (file size)"] = {"bytes": w_map, "from": "/proc/self/smaps: the model file's mapping (not all resident)"}
        out["weights, resident"] = {"bytes": w_res, "from": "/proc/self/smaps: resident pages of the mapping"}
    else:
        out["weights, loaded"] = {
            "bytes": eng.get("weights", 0) + eng.get("embeddings", 0),
            "from": "the engine: model file bytes + embedding table (onnxruntime copies them in)",
        }
        w_res = out["weights, loaded"]["bytes"]
    kv = eng.get("kv_cache", 0)
    if kv:
        out["KV cache (allocated for n_ctx)"] = {"bytes": kv, "from": "the engine: n_ctx x L x 2 x kv_heads x head_dim x element size"}
    seqs = sum(mem.get("snapshot_bytes", []))
    out["concurrent sequences' KV"] = {
        "bytes": seqs,
        "from": f"{len(mem.get('snapshot_bytes', []))} sequences of {mem.get('text_tokens')} tokens held (snapshot sizes)",
    }
    out["prefix cache"] = {"bytes": mem.get("prefix_cache_bytes", 0), "from": "the runtime's cache statistics"}
    arena = max(st["first_request"] - st["opened"], 0)
    out["compute buffers and arenas (first request)"] = {"bytes": arena, "from": "RSS growth at the first request"}
    out["interpreter and libraries"] = {"bytes": st["imported"], "from": "RSS with the runtime imported"}
    known = w_res + kv + seqs + out["prefix cache"]["bytes"] + arena + st["imported"]
    out["the rest"] = {"bytes": max(total - known, 0), "from": f"RSS {total / 2**20:.1f} MiB minus the above"}
    return out


def _cost_model(bp: dict, res: dict, cfg: ProfileConfig) -> costmodel.CostModel:
    eng = bp["engine_memory"]
    W = eng.get("weights") or bp.get("model_bytes") or 0
    kv = bp.get("kv_growth") or []
    k = kv[-1]["bytes_per_position"] if kv else eng.get("kv_bytes_per_position", 0)
    N = eng.get("n_params") or _params_estimate(bp)
    m = costmodel.CostModel(
        W,
        k,
        N,
        res["bandwidth_gbs"],
        cfg.threads_main,
        costmodel.read_rate_bps(Path(bp["path"]) / "tokenizer.json"),
        costmodel.hash_rate_bps(),
        restore_copies=bp.get("restore_copies", True),
    )
    plain = bp["arms"]["plain"][0]
    ts = sorted(bp["text_sweep"], key=lambda r: r["text_tokens"])
    short = (ts[0]["text_tokens"], ts[0]["plain"]["ttft_s"]["median"])
    long = (ts[-1]["text_tokens"], ts[-1]["plain"]["ttft_s"]["median"]) if len(ts) > 1 else None
    m.calibrate(plain["decode_tok_s"], plain["text_tokens"] + cfg.decode / 2, short, long)
    m.calibration["threads"] = cfg.threads_main
    ps = {(r["kind"], r["P"]): r for r in bp.get("p_sweep", [])}
    pe, kvr = ps.get(("embeddings", cfg.P_main)), ps.get(("kv", cfg.P_main))
    m.calibrate_swaps(
        (pe["prefix_resident"], pe["swap"]["warm_s"]["median"]) if pe else None,
        (kvr["tensors_file"], kvr["prefix_resident"], kvr["swap"]["cold_s"]["median"] - kvr["swap"]["warm_s"]["median"]) if kvr else None,
    )
    checks = costmodel.check(m, bp, bp.get("bank_sweep"))
    bp["cost_model"] = {"model": m.to_dict(), "checks": checks, "errors": costmodel.error_summary(checks)}
    return m


def _params_estimate(bp: dict) -> float:
    """Parameters from the file size when the engine cannot say (ONNX): bytes per weight by quant."""
    per = {"fp32": 4.0, "int8": 1.1, "int4": 0.6, "int8-dynamic": 1.05}.get(bp["quant"], 2.0)
    return (bp.get("model_bytes") or 0) / per


def _facts(bp: dict) -> dict:
    ps = {(r["kind"], r["P"]): r for r in bp.get("p_sweep", [])}
    pe, kv = ps.get(("embeddings", bp["P_main"]), {}), ps.get(("kv", bp["P_main"]), {})
    m = bp["cost_model"]["model"]
    return {
        "W": m["weights_bytes"],
        "k": m["kv_bytes_per_position"],
        "N": m["n_params"],
        "P": bp["P_main"],
        "text": bp["text_main"],
        "prompt_prefix_bytes": pe.get("prefix_resident", 0),
        "kv_prefix_bytes": kv.get("prefix_resident", 0),
        "kv_file_bytes": kv.get("tensors_file", 0),
    }
