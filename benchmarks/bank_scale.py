"""Bank scale: a runtime holding 1, 10, 100 and 1,000 tasks of each method, against the old design.

    python benchmarks/bank_scale.py                       # exports the embedded SmolLM2 as GGUF q8_0 once
    python benchmarks/bank_scale.py --bundle DIR --counts 1,10,100,1000 --cache-mb 64 --old-ref 5d8a872

Each bundle is the plain q8_0 bundle plus N synthetic tasks (P=20; random tensors of the method's shape:
right for memory and time, meaningless as tasks). Every measurement runs in its own child process, so its
RSS is that runtime's own, and twice: with this tree's code ("new") and with the code at ``--old-ref``
("old", checked out by ``git archive`` into a scratch folder: the design before the task store, which
read and kept every task's tensors and hashed every file at open). Measured per child:

- open: ``open_bundle`` wall time (verify on: the new store hashes each task's manifest at open and its
  tensors on first read, once per open; the old one hashed every file);
- RSS after open (the task store's own cost) and after the request cycle (the prefix cache filled, up to
  ``--cache-mb``), each against the plain bundle's child at the same stage; the cache's bytes;
- swap: getting the task's prefix into a fresh sequence; *cold* in a first pass over all N tasks (read from
  disk into the backend, or a prefill of the P rows), *warm* when re-requesting the task just used (a cache
  hit); p50/p99 each;
- a request cycle (classify a short tweet, task ``i % N``) with a ``--cache-mb`` prefix cache: hit rate,
  mean and p99 latency;
- ``add_task`` of one task folder;
- prompt tuning only, new design: the cold swap again with ``prefix_dir`` (computed prefixes kept on disk
  beside the tasks, filled by a first pass): a read instead of a prefill.

Results go to stdout as a table and to ``--json`` (default ``benchmarks/bank_scale.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TEXT = "Just got back from the beach and the sunset was amazing, can't wait to go again!"
METHODS = ("prompt_tuning", "prefix_tuning")


def status_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


# -- the child: one runtime, one bundle ------------------------------------------------------------
def child(a) -> dict:
    import edgeprompt
    from edgeprompt.runtimes.runtime import open_bundle

    kw = {"prefix_dir": a.prefix_dir} if a.prefix_dir else {}
    rss_start = status_kib("VmRSS")
    t0 = time.perf_counter()
    rt = open_bundle(a.bundle, threads=a.threads, cache_mb=a.cache_mb, **kw)
    open_s = time.perf_counter() - t0
    rss_open = status_kib("VmRSS")
    names = list(rt.tasks)
    out = {
        "code": str(Path(edgeprompt.__file__).resolve().parent.parent),
        "tasks": len(names),
        "open_s": open_s,
        "rss_start_kib": rss_start,
        "rss_open_kib": rss_open,
    }
    if not names:
        rt.logits(None, TEXT)
        out.update(rss_end_kib=status_kib("VmRSS"), hwm_kib=status_kib("VmHWM"))
        return out

    def swap(task: str) -> float:
        t = time.perf_counter()
        with rt.backend.sequence(rt.prefix(task)):
            pass
        return time.perf_counter() - t

    rt.classify(names[0], TEXT)  # warm-up (excluded): first-use allocations of the engine
    if a.prefix_dir:  # fill the disk cache, then drop the memory cache: the timed pass reads from disk
        for n in names:
            rt.prefix(n)
        rt.cache.__init__(a.cache_mb)
    cold, warm = [], []
    for n in names:  # pass 1: every task cold once (the warm-up's task is cached: skip it)
        if n == names[0]:
            continue
        cold.append(swap(n))
        warm.append(swap(n))  # re-requested at once: a cache hit
    s0 = (rt.cache.stats.hits, rt.cache.stats.misses)
    lat = []
    for i in range(a.requests):
        t = time.perf_counter()
        rt.classify(names[(i + 1) % len(names)], TEXT)
        lat.append(time.perf_counter() - t)
    hits, misses = rt.cache.stats.hits - s0[0], rt.cache.stats.misses - s0[1]
    adds = []
    for d in sorted(p for p in Path(a.extra).iterdir() if p.is_dir()):
        t = time.perf_counter()
        rt.add_task(d)
        adds.append(time.perf_counter() - t)
    out.update(
        cold_ms={"p50": 1e3 * pct(cold, 50), "p99": 1e3 * pct(cold, 99), "n": len(cold)},
        warm_ms={"p50": 1e3 * pct(warm, 50), "p99": 1e3 * pct(warm, 99), "n": len(warm)},
        request_ms={"mean": 1e3 * statistics.fmean(lat), "p50": 1e3 * pct(lat, 50), "p99": 1e3 * pct(lat, 99), "n": len(lat)},
        hit_rate=hits / max(hits + misses, 1),
        add_task_ms={"median": 1e3 * statistics.median(adds), "max": 1e3 * max(adds), "n": len(adds)},
        rss_end_kib=status_kib("VmRSS"),
        hwm_kib=status_kib("VmHWM"),
        cache_kib=rt.cache.stats.bytes // 1024,
    )
    rt.close()
    return out


# -- the parent: bundles, children, the table ------------------------------------------------------
def plain_bundle(path: Path) -> Path:
    if not (path / "manifest.json").exists():
        print(f"exporting the embedded SmolLM2 as GGUF q8_0 to {path} (once) ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "edgeprompt", "export", "--no-bank", "--format", "gguf", "--quant", "q8_0", "-o", str(path), "--probes", "2"], check=True
        )
    return path


def synthetic_tensors(method: str, info, P: int, rng) -> dict:
    from edgeprompt.core.methods import get_method

    spec = get_method(method)
    shape = [P if s is None else s for s in spec.folded_shape(info)]
    return {spec.tensor_key: (0.02 * rng.standard_normal(shape)).astype(np.float32)}


def make_bank(root: Path, method: str, n: int, info, P: int, seed: int = 0):
    from edgeprompt.core.bank import PromptBank
    from edgeprompt.core.tasks import TaskSpec

    spec = TaskSpec(template="Tweet: {text}\nSentiment:", instruction="Classify the sentiment.\n", labels=["negative", "neutral", "positive"])
    bank = PromptBank(root)
    rng = np.random.default_rng(seed)
    for i in range(n):
        bank.add(f"t{i:04d}", method, synthetic_tensors(method, info, P, rng), spec, info)
    return bank


def make_bundle(plain: Path, bank, n: int, out: Path) -> Path:
    """The plain bundle (model file hard-linked) plus the bank's first ``n`` tasks, listed and hashed."""
    from edgeprompt.export.writer import _copy_tasks, _hash_files

    shutil.copytree(plain, out, copy_function=os.link)
    m = json.loads((plain / "manifest.json").read_text())
    (out / "manifest.json").unlink()
    tasks = [bank.task(x) for x in bank.names()[:n]]
    m["tasks"] = _copy_tasks(bank, tasks, out, m["model"])
    m["files"] = _hash_files(out)
    (out / "manifest.json").write_text(json.dumps(m, indent=1))
    return out


def old_tree(ref: str, scratch: Path) -> Path:
    """The code at ``ref``, laid out by import name (the package-dir mapping) for ``PYTHONPATH``."""
    src = scratch / "old-src"
    src.mkdir()
    arc = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=arc, check=True)
    mirror = scratch / "old" / "edgeprompt"
    mirror.mkdir(parents=True)
    for p in (src / "edgeprompt").iterdir():
        (mirror / p.name).symlink_to(p)
    for pkg in ("export", "runtimes"):
        (mirror / pkg).symlink_to(src / pkg)
    return mirror.parent


def run_child(bundle: Path, extra: Path, a, pythonpath: Path | None, prefix_dir: Path | None = None) -> dict:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--bundle", str(bundle), "--extra", str(extra)]
    cmd += ["--threads", str(a.threads), "--cache-mb", str(a.cache_mb), "--requests", str(a.requests)]
    if prefix_dir:
        cmd += ["--prefix-dir", str(prefix_dir)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, help="a plain GGUF bundle (default: export the embedded SmolLM2 q8_0 into --work)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgeprompt-bank-scale")
    ap.add_argument("--counts", default="1,10,100,1000")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--P", type=int, default=20)
    ap.add_argument("--cache-mb", type=float, default=64.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--requests", type=int, default=200, help="classify requests in the cycle")
    ap.add_argument("--old-ref", default="5d8a872", help="git ref of the old design ('' to skip)")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "bank_scale.json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--extra", help=argparse.SUPPRESS)
    ap.add_argument("--prefix-dir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a)))
        return

    from edgeprompt.core.bundle import Bundle

    a.work.mkdir(parents=True, exist_ok=True)
    plain = plain_bundle(a.bundle or a.work / "smollm2-q8_0")
    info = Bundle.open(plain, verify=False).base_model
    counts = [int(c) for c in a.counts.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="bank-scale-", dir=a.work))
    designs = {"new": None}
    if a.old_ref:
        designs["old"] = old_tree(a.old_ref, scratch)
    results: dict = {"setup": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items() if k not in ("child", "extra", "prefix_dir")}, "runs": []}
    empty = scratch / "empty-extra"
    empty.mkdir()
    for design, pp in designs.items():
        r = run_child(plain, empty, a, pp)
        results["runs"].append({"design": design, "method": None, "tasks": 0, **r})
        print(f"{design}: plain bundle RSS {r.get('rss_end_kib', 0) / 1024:.0f} MiB  {r.get('error', '')}", flush=True)
    base = {r["design"]: (r.get("rss_open_kib", 1), r.get("rss_end_kib", 1)) for r in results["runs"]}
    for method in a.methods.split(","):
        bank = make_bank(scratch / f"bank-{method}", method, max(counts), info, a.P)
        extra = scratch / f"extra-{method}"
        make_bank(scratch / f"extra-bank-{method}", method, 5, info, a.P, seed=1)
        shutil.copytree(scratch / f"extra-bank-{method}" / "tasks", extra)
        size = sum(f.stat().st_size for f in (bank.root / "tasks" / bank.names()[0]).iterdir())
        print(f"\n{method}: P={a.P}, {size / 1024:.0f} KiB per task on disk, cache {a.cache_mb:.0f} MB", flush=True)
        print(
            f"{'design':<10}{'N':>6}{'open s':>8}{'+RSS open':>11}{'+RSS end':>10}{'cache':>7}{'cold p50/p99 ms':>18}{'warm p50/p99 ms':>18}"
            f"{'hit':>6}{'req mean/p99 ms':>18}{'add ms':>8}"
        )
        for n in counts:
            b = make_bundle(plain, bank, n, scratch / f"bundle-{method}-{n}")
            variants = [(d, pp, None) for d, pp in designs.items()]
            if method == "prompt_tuning":
                variants.append(("new+disk", None, scratch / f"prefixes-{method}-{n}"))
            for design, pp, pdir in variants:
                r = run_child(b, extra, a, pp, pdir)
                results["runs"].append({"design": design, "method": method, "tasks": n, **r})
                if "error" in r:
                    print(f"{design:<10}{n:>6}  failed: {r['error']}", flush=True)
                    continue
                b0 = base[design.split("+")[0]]
                at_open, at_end = r["rss_open_kib"] / b0[0] - 1, r["rss_end_kib"] / b0[1] - 1
                print(
                    f"{design:<10}{n:>6}{r['open_s']:>8.3f}{100 * at_open:>10.1f}%{100 * at_end:>9.1f}%{r.get('cache_kib', 0) / 1024:>6.0f}M"
                    f"{r['cold_ms']['p50']:>9.2f}/{r['cold_ms']['p99']:<8.2f}{r['warm_ms']['p50']:>9.3f}/{r['warm_ms']['p99']:<8.3f}"
                    f"{r['hit_rate']:>6.2f}{r['request_ms']['mean']:>9.1f}/{r['request_ms']['p99']:<8.1f}{r['add_task_ms']['median']:>8.2f}",
                    flush=True,
                )
            shutil.rmtree(b)
    a.json.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {a.json}")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
