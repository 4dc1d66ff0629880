"""The profiler's decode figure against ``benchmarks/runtime.py``'s, same bundle, threads, context and tokens.

    python benchmarks/profile_check.py --gguf BUNDLE [--threads 2 --tokens 64 --n-ctx 512 --repeats 3]

Each measurement runs in its own child process, the two alternating (and which runs first alternating too); the medians over ``--repeats`` are
printed with their ratio (target: within 3%). runtime.py's figure is tokens over their total time, fed as
a fixed id sequence; the profiler's are a greedy decode's median token time and tokens over total time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child_profiler(a) -> dict:
    from edgeprompt.profile.arms import measure, run_request
    from edgeprompt.runtimes import open_bundle

    sys.path.insert(0, str(HERE))
    from runtime import TEXT

    with open_bundle(a.gguf, threads=a.threads, n_ctx=a.n_ctx, verify=False) as rt:
        ids = rt.encode(TEXT)
        r = measure(lambda: run_request(rt.backend, None, ids, a.tokens, rt.vocab_size), reps=a.reps, warmup=a.warmup)
    return {"median_tok_s": r["decode_tok_s"], "mean_tok_s": r["decode_tok_s_mean"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gguf", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--n-ctx", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--reps", type=int, default=3, help="the profiler's repetitions per child (after --warmup)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--child", action="store_true")
    a = p.parse_args()
    if a.child:
        print(json.dumps(child_profiler(a)))
        return
    common = ["--gguf", a.gguf, "--threads", str(a.threads), "--tokens", str(a.tokens), "--n-ctx", str(a.n_ctx)]
    bench, prof_med, prof_mean = [], [], []

    def bench_child():
        r = subprocess.run(
            [sys.executable, str(HERE / "runtime.py"), "--child", "llama-ours", *common, "--swaps", "10", "--ttft-reps", "2"], capture_output=True, text=True
        )
        if r.returncode:
            raise SystemExit(r.stderr[-2000:])
        bench.append(json.loads(r.stdout.strip().splitlines()[-1])["eval_tps"])

    def profile_child():
        r = subprocess.run([sys.executable, __file__, "--child", *common, "--reps", str(a.reps), "--warmup", str(a.warmup)], capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(r.stderr[-2000:])
        got = json.loads(r.stdout.strip().splitlines()[-1])
        prof_med.append(got["median_tok_s"])
        prof_mean.append(got["mean_tok_s"])

    for i in range(a.repeats):  # the order alternates too: neither side always runs first
        for run in (bench_child, profile_child) if i % 2 == 0 else (profile_child, bench_child):
            run()
    b, pm, pn = statistics.median(bench), statistics.median(prof_med), statistics.median(prof_mean)
    print(f"benchmarks/runtime.py decode (our engine, raw eval): {b:.1f} tok/s  (runs: {', '.join(f'{x:.1f}' for x in bench)})")
    print(f"edgeprompt profile, plain arm, median token time:     {pm:.1f} tok/s  ratio {pm / b:.3f}")
    print(f"edgeprompt profile, plain arm, tokens / total time:   {pn:.1f} tok/s  ratio {pn / b:.3f}")


if __name__ == "__main__":
    main()
