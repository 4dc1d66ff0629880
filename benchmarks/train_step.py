"""Training step time and peak RSS: edgeprompt against PEFT's own implementation, same config.

SmolLM2-135M (the embedded default), batch 8, 64 tokens, P=20, for prompt tuning and prefix
tuning. "prefix-mlp" is the same reparameterisation as PEFT's ``prefix_projection`` (MLP of
width 512) on both sides; "prefix" is edgeprompt's default encoder (frozen model + MLP), shown
against the same PEFT row. Each (implementation, method) runs in its own
process so that its peak RSS is its own; both see the same token ids and the same loss (cross
entropy on the label token, the last of the 64). Prints medians and ratios measured in this run.

    python benchmarks/train_step.py [--steps 8] [--warmup 2] [--threads N]
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

B, T, P = 8, 64, 20


def batch(lm):
    import torch

    from edgeprompt.core.data import load_tweets

    data = load_tweets()
    ids, rows = [], data.train
    i = 0
    for _ in range(B):
        seq = []
        while len(seq) < T:
            seq += lm.encode("Tweet: " + rows[i].text + "\n")
            i += 1
        ids.append(seq[: T - 1] + lm.encode(" " + rows[i].label))  # the label token closes the sequence
    return torch.tensor(ids)


def child(impl: str, method: str, steps: int, warmup: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from edgeprompt.train.models import FrozenLM

    lm = FrozenLM.load("default")
    ids = batch(lm)
    mask = torch.ones_like(ids)
    if impl == "edgeprompt":
        from edgeprompt.core.methods import get_method
        from edgeprompt.methods.prefix_tuning import PrefixTuningConfig
        from edgeprompt.methods.prompt_tuning import PromptTuningConfig
        from edgeprompt.train.batching import Batch
        from edgeprompt.train.loop import loss_on_batch

        if method == "prompt":
            cfg = PromptTuningConfig(num_virtual_tokens=P)
        else:
            cfg = PrefixTuningConfig(num_virtual_tokens=P, encoder_hidden_size=512, encoder="mlp" if method == "prefix-mlp" else "model+mlp")
        module = get_method(method.split("-")[0]).trainer().module_cls(cfg, lm, init_text="Classify the sentiment of the tweet.")
        b = Batch(ids, mask, torch.arange(B), torch.full((B,), T - 1), ids[:, -1])
        params = [p for p in module.parameters() if p.requires_grad]
        step_fn = lambda: loss_on_batch(lm, module, b)  # noqa: E731
    else:
        from peft import PrefixTuningConfig, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

        if method == "prompt":
            cfg = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=P, prompt_tuning_init=PromptTuningInit.RANDOM)
        elif method != "prefix-mlp":
            raise SystemExit(f"PEFT has no {method!r}")
        else:
            cfg = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=P, prefix_projection=True, encoder_hidden_size=512)
        model = get_peft_model(lm.model, cfg)
        labels = torch.full_like(ids, -100)
        labels[:, -1] = ids[:, -1]
        params = [p for p in model.parameters() if p.requires_grad]
        step_fn = lambda: model(input_ids=ids, attention_mask=mask, labels=labels).loss  # noqa: E731
    opt = torch.optim.AdamW(params, lr=1e-3)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = step_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB on Linux
    return {"impl": impl, "method": method, "step_s": statistics.median(times), "peak_rss_mib": rss, "trainable": sum(p.numel() for p in params)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--child", nargs=2, metavar=("IMPL", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.steps, args.warmup, args.threads)))
        return
    res = {}
    runs = [("peft", "prompt"), ("edgeprompt", "prompt"), ("peft", "prefix-mlp"), ("edgeprompt", "prefix-mlp"), ("edgeprompt", "prefix")]
    for impl, method in runs:
        out = subprocess.run(
            [sys.executable, __file__, "--child", impl, method, "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        res[impl, method] = json.loads(out.strip().splitlines()[-1])
    print(f"SmolLM2-135M, batch {B}, {T} tokens, P={P}, {args.threads} threads, median of {args.steps} steps after {args.warmup} warm-up")
    print(f"{'method':<11} {'impl':<11} {'step s':>8} {'peak RSS MiB':>13} {'trainable':>10}")
    for impl, method in runs:
        r = res[impl, method]
        print(f"{method:<11} {impl:<11} {r['step_s']:>8.3f} {r['peak_rss_mib']:>13.0f} {r['trainable']:>10,}")
    for method, peer in (("prompt", "prompt"), ("prefix-mlp", "prefix-mlp"), ("prefix", "prefix-mlp")):
        ours, peft = res["edgeprompt", method], res["peft", peer]
        print(
            f"ratio {method:<11} speed {peft['step_s'] / ours['step_s']:.2f}x PEFT's   peak RSS {ours['peak_rss_mib'] / peft['peak_rss_mib']:.2f}x PEFT's  (PEFT {peer})"
        )


if __name__ == "__main__":
    main()
