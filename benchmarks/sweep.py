"""The sweep behind the training defaults: dev accuracy on the tweets task for a grid of settings.

One process loads SmolLM2-135M once and trains each configuration from scratch, evaluating the
dev split (300 tweets) along the way; rows are appended to benchmarks/sweep.md as they finish,
so a partial sweep is still a record. The defaults in edgeprompt/training.py cite this table.

    python benchmarks/sweep.py --method prompt --lr 0.1 0.3 1.0 --P 20 --steps 120
    python benchmarks/sweep.py --method prefix --lr 3e-3 1e-2 3e-2 --P 20 --steps 120
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
    ap.add_argument("--max-length", type=int, nargs="+", default=[96])
    ap.add_argument("--encoder", nargs="+", default=["model+mlp"], help="prefix only")
    ap.add_argument("--mlp-lr-ratio", type=float, nargs="+", default=[1e-3], help="prefix only")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--eval-every", type=int, default=40)
    ap.add_argument("--out", default=str(HERE / "sweep.md"))
    args = ap.parse_args()

    import torch

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
    cmd = "sweep.py " + " ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items() if k != "out")
    extra = list(itertools.product(args.encoder, args.mlp_lr_ratio)) if args.method == "prefix" else [(None, None)]
    for lr, P, init, bs, ml, (encoder, ratio) in itertools.product(args.lr, args.P, args.init, args.batch_size, args.max_length, extra):
        mcfg = spec_m.config_cls(num_virtual_tokens=P, init=init, **({"encoder": encoder, "mlp_lr_ratio": ratio} if encoder else {}))
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
        with open(out, "a") as f:
            f.write(row)
        print(row, end="", flush=True)
        print(json.dumps({"lr": lr, "P": P, "init": init, "history": res.history}), file=open(HERE / "out_sweep.jsonl", "a"))


if __name__ == "__main__":
    main()
