"""The sweep behind the training defaults: dev accuracy on the tweets task for a grid of settings.

One process loads SmolLM2-135M once and trains each configuration from scratch, evaluating the
dev split (300 tweets) along the way; rows are appended to benchmarks/sweep.md as they finish,
so a partial sweep is still a record. The rates in edgeprompt/methods/*/config.py (``default_lr``) cite this
table.

    python benchmarks/sweep.py --method prompt --lr 0.1 0.3 1.0 --P 20 --steps 120
    python benchmarks/sweep.py --method prefix --lr 3e-3 1e-2 3e-2 --P 20 --steps 120

``--dataset sms-spam`` or ``drug-reviews`` (the small, skewed sets of ``benchmarks/quality.py``, on its stratified
split for ``--seed``) trains as ``edgeprompt train`` does there: steps, cadence and the training cut adapted to the
data, class weights and macro-F1 selection; its rows (dev macro-F1 along the run) go to
``benchmarks/sweep_small.md``. Two sweeps can share the 2 cores with ``--threads 1`` each.

    python benchmarks/sweep.py --dataset sms-spam --method prefix --lr 0.1 0.03 --seed 1 --threads 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=["prompt", "prefix"], required=True)
    ap.add_argument("--lr", type=float, nargs="+", required=True)
    ap.add_argument("--P", type=int, nargs="+", default=[20])
    ap.add_argument("--init", nargs="+", default=["text"])
    ap.add_argument("--batch-size", type=int, nargs="+", default=[8])
    ap.add_argument("--max-length", type=int, nargs="+", default=None, help="default: 96 on the tweets, adapted to the data on the others")
    ap.add_argument("--encoder", nargs="+", default=["model+mlp"], help="prefix only")
    ap.add_argument("--mlp-lr-ratio", type=float, nargs="+", default=[1e-3], help="prefix only")
    ap.add_argument("--steps", type=int, default=None, help="default: 120 on the tweets, adapted to the data on the others")
    ap.add_argument("--eval-every", type=int, default=40)
    ap.add_argument("--balance", choices=["weights", "sampling", "none"], default=None, help="small datasets only; default: auto (class weights when skewed)")
    ap.add_argument(
        "--objective", choices=["vocab", "labels"], default="vocab", help="small datasets only: the loss's softmax over the vocabulary or the labels' tokens"
    )
    ap.add_argument("--dataset", choices=["tweets", "sms-spam", "drug-reviews"], default="tweets")
    ap.add_argument("--seed", type=int, default=0, help="split and training seed (small datasets)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="default: benchmarks/sweep.md (tweets), benchmarks/sweep_small.md (others)")
    args = ap.parse_args()
    if args.balance and args.dataset == "tweets":
        ap.error("--balance is for the small datasets; the tweets sweep trains with balance=auto")
    if args.objective != "vocab" and args.dataset == "tweets":
        ap.error("--objective is for the small datasets; the tweets sweep trains with objective=vocab")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dataset != "tweets":
        return small(args)
    args.max_length = args.max_length or [96]
    args.steps = args.steps or 120
    args.out = args.out or str(HERE / "sweep.md")

    from edgeprompt.core.data import load_tweets
    from edgeprompt.core.methods import get_method
    from edgeprompt.train.loop import TrainConfig, train
    from edgeprompt.train.models import FrozenLM

    lm = FrozenLM.load("default")
    data = load_tweets()
    spec_m = get_method(args.method)
    out = Path(args.out)
    if not out.exists():
        out.write_text(
            "# Training sweep on the tweets task (SmolLM2-135M, dev split of 300 tweets)\n\n"
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads.\n"
            "Each row trains from scratch; `dev@k` is dev accuracy after k steps. `train s` and `s/step` are wall time including\n"
            "the dev evaluations, on a machine that may be doing other work: compare accuracies here, times in train_step.py.\n"
            "Command: see the `cmd` column (python benchmarks/sweep.py ...).\n\n"
            "| method | lr | P | init | batch | max_len | steps | dev@steps | best dev | train s | s/step | cmd |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        )
    cmd = _cmd(args)
    for lr, P, init, bs, ml, encoder, ratio, mcfg in _grid(args, spec_m):
        tcfg = TrainConfig(steps=args.steps, batch_size=bs, lr=lr, max_length=ml, eval_every=args.eval_every, eval_examples=300, checkpoint_every=10**9)
        t0 = time.perf_counter()
        res = train(lm, data, spec_m.name, mcfg, tcfg, progress=False)
        wall = time.perf_counter() - t0
        curve = ", ".join(f"{h['step']}:{h['dev']['accuracy']:.3f}" for h in res.history)
        train_s = res.history[-1].get("wall_s", wall)
        label = f"{args.method} ({encoder}, mlp lr x{ratio:g})" if encoder else args.method
        row = (
            f"| {label} | {lr:g} | {P} | {init} | {bs} | {ml} | {args.steps} | {curve} | {res.best_dev['accuracy']:.3f} "
            f"| {train_s:.0f} | {wall / args.steps:.2f} | `{cmd}` |\n"
        )
        _append(out, row)
        print(json.dumps({"lr": lr, "P": P, "init": init, "history": res.history}), file=open(HERE / "out_sweep.jsonl", "a"))


def _cmd(args) -> str:
    """The row's command line: every argument given or defaulted, but --out (and the prefix-only ones for prompt tuning)."""
    skip = {"out"} | ({"encoder", "mlp_lr_ratio"} if args.method != "prefix" else set()) | ({"objective"} if args.objective == "vocab" else set())
    return "sweep.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items() if k not in skip and v is not None
    )


def _grid(args, spec_m):
    """Every setting of the sweep: (lr, P, init, batch, max_length, encoder, mlp ratio, method config)."""
    extra = list(itertools.product(args.encoder, args.mlp_lr_ratio)) if args.method == "prefix" else [(None, None)]
    for lr, P, init, bs, ml, (encoder, ratio) in itertools.product(args.lr, args.P, args.init, args.batch_size, args.max_length or [None], extra):
        mcfg = spec_m.config_cls(num_virtual_tokens=P, init=init, **({"encoder": encoder, "mlp_lr_ratio": ratio} if encoder else {}))
        yield lr, P, init, bs, ml, encoder, ratio, mcfg


def _append(out: Path, row: str) -> None:
    """A row goes to the table as soon as its run ends, so a partial sweep is still a record."""
    with open(out, "a") as f:
        f.write(row)
    print(row, end="", flush=True)


def small(args) -> None:
    """One row per setting: dev macro-F1 (and accuracy) along an *after* run of ``benchmarks/quality.py``."""
    import torch
    from quality import DATASETS

    from edgeprompt.core.methods import get_method
    from edgeprompt.train.loop import TrainConfig, adapt_to_dataset, resolved, train
    from edgeprompt.train.models import FrozenLM

    lm = FrozenLM.load("default")
    data, _ = DATASETS[args.dataset](args.seed, True)
    spec_m = get_method(args.method)
    out = Path(args.out or HERE / "sweep_small.md")
    if not out.exists():
        out.write_text(
            "# Training sweep on the small, skewed datasets of benchmarks/quality.py (SmolLM2-135M)\n\n"
            "Each row trains from scratch as `edgeprompt train` does on that data (class weights, macro-F1 selection,\n"
            "steps and training cut adapted to the data; the settings in the row override), on the stratified split of\n"
            "`seed`. `dev@steps` is dev macro-F1 / accuracy after k steps (dev: 100 rows). Only dev is scored: the test\n"
            "split stays for benchmarks/quality.py. `train s` includes the dev evaluations, on cores that may be shared.\n\n"
            "| dataset | seed | method | lr | P | batch | max_len | steps | dev@steps (macro-F1/acc) | best dev F1 | last-3 mean F1 | train s | threads | cmd |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        )
    cmd = _cmd(args)
    for lr, P, init, bs, ml, encoder, ratio, mcfg in _grid(args, spec_m):
        chosen = {k: v for k, v in (("steps", args.steps), ("max_length", ml)) if v}  # the rest adapts to the data
        if args.balance:
            chosen["balance"] = args.balance
        if args.objective != "vocab":
            chosen["objective"] = args.objective
        base = TrainConfig(seed=args.seed, batch_size=bs, lr=lr, eval_every=args.eval_every, checkpoint_every=10**9, **chosen)
        tcfg, _ = adapt_to_dataset(lm, data, base, {"eval_every", *chosen})
        t0 = time.perf_counter()
        res = train(lm, data, spec_m.name, mcfg, tcfg, progress=False)
        wall = time.perf_counter() - t0
        f1s = [h["dev"]["macro_f1"] for h in res.history if "dev" in h]
        curve = ", ".join(f"{h['step']}:{h['dev']['macro_f1']:.3f}/{h['dev']['accuracy']:.2f}" for h in res.history if "dev" in h)
        label = f"{args.method} ({encoder}, mlp lr x{ratio:g})" if encoder else args.method
        label += {"none": ", no class weights", "sampling": ", class-balanced batches"}.get(resolved(tcfg, data)[0], "")
        if tcfg.objective != "vocab":
            label += f", {tcfg.objective} objective"
        row = (
            f"| {args.dataset} | {args.seed} | {label} | {lr:g} | {P} | {bs} | {tcfg.max_length} | {tcfg.steps} | {curve} | {max(f1s):.3f} "
            f"| {sum(f1s[-3:]) / len(f1s[-3:]):.3f} | {wall:.0f} | {torch.get_num_threads()} | `{cmd}` |\n"
        )
        _append(out, row)


if __name__ == "__main__":
    main()
