"""Runtime benchmarks: decode speed against stock peers, task swaps, TTFT, RSS, roofline.

Every figure is a ratio against a peer measured in the same run, on the same file and threads.
Each measurement runs in its own child process (so peak RSS is that runtime's own), peers
alternate, and the median of ``--repeats`` runs is reported.

    python benchmarks/optimum_export.py -o /tmp/optimum-smollm2        # once: optimum's own ONNX export
    python benchmarks/runtime.py --gguf BUNDLE_GGUF --onnx BUNDLE_ONNX --optimum /tmp/optimum-smollm2 \
        --task tweets-prompt --threads 2 --tokens 64

Measured:
- decode tokens/s, llama.cpp: our engine vs stock ``llama_cpp.Llama`` (same GGUF, threads), both as a
  raw eval loop over the same token ids and as greedy generation (``create_completion`` vs ``generate``);
- decode tokens/s, ONNX: our engine vs optimum's ``ORTModelForCausalLM.generate`` on optimum's own
  export (the same file for both), and our engine on our own graph;
- task swap, warm (prefix restored from the cache) p50/p99 and cold (prefill of the P-token prompt);
- time to first token with a warm task prefix vs the plain model on the same user text;
- peak RSS of each child; decode tokens/s against the memory-bandwidth roofline (bandwidth measured in
  this run with a streaming read; bytes per token = the weights read per token + the KV read).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TEXT = "Tweet: Just got back from the beach and the sunset was amazing, can't wait to go again this weekend!\nSentiment (negative, neutral or positive):"


def rss_mib() -> float:
    """Peak RSS of this process. VmHWM, not ru_maxrss: ru_maxrss survives exec, so a child
    started by a large parent would report the parent's peak."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bandwidth_gbs(mib: int = 512, reps: int = 5) -> float:
    a = np.ones(mib * 2**20 // 8)
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        a.sum()
        best = max(best, a.nbytes / (time.perf_counter() - t) / 1e9)
    return best


# -- children -------------------------------------------------------------------------------------
def child_llama_stock(a) -> dict:
    import llama_cpp

    from edgeprompt.core.bundle import Bundle

    b = Bundle.open(a.gguf, verify=False)
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(b.model_file), n_ctx=a.n_ctx, n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
    load_s = time.perf_counter() - t0
    ids = llm.tokenize(TEXT.encode(), add_bos=False, special=False)
    follow = _follow_ids(a)
    llm.reset()
    llm.eval(ids)
    t = time.perf_counter()
    for tok in follow:
        llm.eval([tok])
    eval_tps = len(follow) / (time.perf_counter() - t)
    llm.reset()
    t = time.perf_counter()
    out = llm.create_completion(ids, max_tokens=a.tokens, temperature=0.0, top_k=1)
    gen_s = time.perf_counter() - t
    n = out["usage"]["completion_tokens"]
    return {"load_s": load_s, "eval_tps": eval_tps, "gen_tokens": n, "gen_s": gen_s, "rss_mib": rss_mib()}


def _follow_ids(a) -> list[int]:
    from tokenizers import Tokenizer

    from edgeprompt.core.bundle import Bundle

    tok = Tokenizer.from_file(str(Bundle.open(a.gguf, verify=False).tokenizer_file))
    words = " the sunset was amazing and we stayed on the beach until it was dark" * 20
    return tok.encode(words, add_special_tokens=False).ids[: a.tokens]


def child_llama_ours(a) -> dict:
    from edgeprompt.runtimes import open_bundle

    t0 = time.perf_counter()
    rt = open_bundle(a.gguf, threads=a.threads, n_ctx=a.n_ctx, verify=False, cache_mb=a.cache_mb)
    load_s = time.perf_counter() - t0
    res = {"load_s": load_s}
    ids = rt.encode(TEXT)
    follow = _follow_ids(a)
    with rt.backend.sequence(None) as seq:
        seq.feed_ids(ids)
        t = time.perf_counter()
        for tok in follow:
            seq.feed_ids([tok])
        res["eval_tps"] = len(follow) / (time.perf_counter() - t)
    rt.eos_token_id = None  # same token count as the peer's max_tokens unless it stops: compare per token
    t = time.perf_counter()
    for _ in rt.generate(None, TEXT, max_new_tokens=a.tokens):
        pass
    res.update(gen_tokens=a.tokens, gen_s=time.perf_counter() - t)  # no EOS: exactly a.tokens tokens
    res.update(_swaps_and_ttft(rt, a))
    res["rss_mib"] = rss_mib()
    res["model_bytes"] = os.path.getsize(rt.bundle.model_file)
    return res


def _swaps_and_ttft(rt, a) -> dict:
    tasks = rt.tasks
    if not tasks:
        return {}
    out = {}
    for name in tasks:  # cold swap per task: prompt tuning prefills P rows, prefix tuning only wraps its KV
        e = rt.store.get(name)
        cold = []
        for _ in range(5):
            rt.cache.drop(name)
            e_shipped, e.shipped = e.shipped, None
            t = time.perf_counter()
            rt.prefix(name)
            cold.append(time.perf_counter() - t)
            e.shipped = e_shipped
        stored = len(e.read_tensors())
        out[f"cold:{name}"] = {
            "method": e.method.name,
            "cold_ms_p50": 1e3 * statistics.median(cold),
            "prefix_tokens": rt.prefix(name).length,
            "cached_bytes": rt.prefix(name).nbytes,
            "stored_bytes": stored,
        }
    out["swap_cold_ms_p50"] = out[f"cold:{tasks[0]}"]["cold_ms_p50"]
    for t_ in tasks:
        rt.prefix(t_)
    warm = []
    for i in range(a.swaps):
        task = tasks[i % len(tasks)]
        t = time.perf_counter()
        p = rt.prefix(task)  # the cache lookup
        with rt.backend.sequence(p):  # the restore into the live sequence (llama.cpp: state blob copy)
            warm.append(time.perf_counter() - t)
    warm.sort()
    out["swap_warm_ms_p50"] = 1e3 * warm[len(warm) // 2]
    out["swap_warm_ms_p99"] = 1e3 * warm[int(len(warm) * 0.99) - 1]
    ids = rt.input_ids(tasks[0], TEXT.split("\n")[0])
    tt_task, tt_plain = [], []
    for _ in range(a.ttft_reps):
        t = time.perf_counter()
        with rt.backend.sequence(rt.prefix(tasks[0])) as seq:
            seq.feed_ids(ids)
        tt_task.append(time.perf_counter() - t)
        t = time.perf_counter()
        with rt.backend.sequence(None) as seq:
            seq.feed_ids(ids)
        tt_plain.append(time.perf_counter() - t)
    out["ttft_task_ms"] = 1e3 * statistics.median(tt_task)
    out["ttft_plain_ms"] = 1e3 * statistics.median(tt_plain)
    out["ttft_input_tokens"] = len(ids)
    return out


def child_onnx_ours(a, model_dir: str | None = None) -> dict:
    from edgeprompt.runtimes.backend import OnnxBackend
    from edgeprompt.runtimes.onnx.engine import OnnxEngine

    if model_dir:  # optimum's export: the same file the peer runs
        t0 = time.perf_counter()
        eng = OnnxEngine(Path(model_dir) / "model.onnx", None, threads=a.threads)
        be = OnnxBackend(eng)
        rt = None
    else:
        from edgeprompt.runtimes import open_bundle

        t0 = time.perf_counter()
        rt = open_bundle(a.onnx, threads=a.threads, verify=False, cache_mb=a.cache_mb)
        be = rt.backend
    load_s = time.perf_counter() - t0
    from tokenizers import Tokenizer

    from edgeprompt.core.bundle import Bundle

    tok = Tokenizer.from_file(str(Bundle.open(a.gguf, verify=False).tokenizer_file))
    ids = tok.encode(TEXT, add_special_tokens=False).ids
    follow = _follow_ids(a)
    res = {"load_s": load_s}
    seq = be.sequence(None)
    seq.feed_ids(ids)
    t = time.perf_counter()
    for t_ in follow:
        seq.feed_ids([t_])
    res["eval_tps"] = len(follow) / (time.perf_counter() - t)
    # greedy generation, the same loop Runtime.generate runs (argmax, feed back)
    seq = be.sequence(None)
    t = time.perf_counter()
    logits = seq.feed_ids(ids)
    for _ in range(a.tokens):
        logits = seq.feed_ids([int(np.argmax(logits))])
    res.update(gen_tokens=a.tokens, gen_s=time.perf_counter() - t)
    if rt is not None:
        res.update(_swaps_and_ttft(rt, a))
    res["rss_mib"] = rss_mib()
    return res


def child_onnx_optimum(a) -> dict:
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    torch.set_num_threads(a.threads)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    t0 = time.perf_counter()
    model = ORTModelForCausalLM.from_pretrained(a.optimum, session_options=so, use_io_binding=False)
    load_s = time.perf_counter() - t0
    from tokenizers import Tokenizer

    from edgeprompt.core.bundle import Bundle

    tok = Tokenizer.from_file(str(Bundle.open(a.gguf, verify=False).tokenizer_file))
    ids = torch.tensor([tok.encode(TEXT, add_special_tokens=False).ids])
    model.generate(ids, max_new_tokens=4, do_sample=False)  # warm-up
    t = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.tokens, min_new_tokens=a.tokens, do_sample=False)
    gen_s = time.perf_counter() - t
    return {"load_s": load_s, "gen_tokens": int(out.shape[1] - ids.shape[1]), "gen_s": gen_s, "rss_mib": rss_mib()}


CHILDREN = {
    "llama-stock": child_llama_stock,
    "llama-ours": child_llama_ours,
    "onnx-ours": lambda a: child_onnx_ours(a),
    "onnx-ours-on-optimum": lambda a: child_onnx_ours(a, a.optimum),
    "onnx-optimum": child_onnx_optimum,
}


def run_child(name: str, argv: list[str]) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", name, *argv], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"child {name} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gguf", required=True, help="a GGUF bundle (edgeprompt export --format gguf)")
    p.add_argument("--onnx", help="an ONNX bundle")
    p.add_argument("--optimum", help="optimum's ONNX export of the same model (benchmarks/optimum_export.py)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--n-ctx", type=int, default=512)
    p.add_argument("--swaps", type=int, default=400)
    p.add_argument("--ttft-reps", type=int, default=15)
    p.add_argument("--cache-mb", type=float, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child")
    p.add_argument("--out", help="write the JSON results here")
    a = p.parse_args()
    if a.child:
        print(json.dumps(CHILDREN[a.child](a)))
        return
    argv = [x for x in sys.argv[1:] if x not in ("--out", a.out)]
    names = ["llama-stock", "llama-ours"]
    if a.onnx:
        names.append("onnx-ours")
    if a.optimum:
        names += ["onnx-optimum", "onnx-ours-on-optimum"]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    bw = []
    for r in range(a.repeats):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            runs[n].append(run_child(n, argv))
            print(
                f"  run {r + 1}/{a.repeats} {n}: {json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in runs[n][-1].items()})}", file=sys.stderr
            )
        bw.append(bandwidth_gbs())

    def med(n, k):
        vals = [x[k] for x in runs[n] if k in x]
        if vals and isinstance(vals[0], dict):
            return {kk: (statistics.median([v[kk] for v in vals]) if isinstance(vals[0][kk], (int, float)) else vals[0][kk]) for kk in vals[0]}
        return statistics.median(vals) if vals else None

    res = {"threads": a.threads, "tokens": a.tokens, "repeats": a.repeats, "bandwidth_gbs": statistics.median(bw), "medians": {}}
    for n in names:
        res["medians"][n] = {k: med(n, k) for k in runs[n][0]}
    M = res["medians"]
    s, o = M["llama-stock"], M["llama-ours"]
    res["llamacpp_eval_ratio"] = o["eval_tps"] / s["eval_tps"]
    res["llamacpp_generate_ratio"] = (o["gen_tokens"] / o["gen_s"]) / (s["gen_tokens"] / s["gen_s"])
    res["llamacpp_rss_ratio"] = o["rss_mib"] / s["rss_mib"]
    res["ttft_ratio"] = o["ttft_task_ms"] / o["ttft_plain_ms"]
    # roofline: every weight byte is read once per decoded token (the tied output matrix included)
    from gguf import GGUFReader

    from edgeprompt.core.bundle import Bundle

    weight_bytes = sum(int(t.n_bytes) for t in GGUFReader(str(Bundle.open(a.gguf, verify=False).model_file)).tensors)
    res["weight_bytes"] = weight_bytes
    res["roofline_tps"] = res["bandwidth_gbs"] * 1e9 / weight_bytes
    res["llamacpp_roofline_fraction"] = o["eval_tps"] / res["roofline_tps"]
    if a.optimum:
        opt, ours = M["onnx-optimum"], M["onnx-ours-on-optimum"]
        res["onnx_generate_ratio_vs_optimum"] = (ours["gen_tokens"] / ours["gen_s"]) / (opt["gen_tokens"] / opt["gen_s"])
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
