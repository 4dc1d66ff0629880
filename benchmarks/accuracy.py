"""Tweets test accuracy: edgeprompt's default training against the zero-shot baseline and against
PEFT's own training given the same wall time, for prompt tuning and prefix tuning.

SmolLM2-135M (embedded default), the built-in tweets split (1,000 test tweets, 3 classes). Our run
uses the library defaults: ``TrainConfig()`` (edgeprompt/train/loop.py) and each method's ``default_lr()``
(edgeprompt/methods/*/config.py, chosen from benchmarks/sweep.md), with the tweets' 96-token cut and no
label-prior correction (benchmarks/quality.py runs the CLI's full path, calibration included). PEFT trains the
same template and label tokens with its recipe from the issue (prompt: text init, lr 0.3; prefix:
MLP, lr 1e-2; AdamW, batch 8) until it has used our whole wall time, dev evaluations included.
Every model is scored by the same scorer (PEFT's prompt is read through the PEFT-parity-tested
import), so the accuracies differ only by training.

    python benchmarks/accuracy.py [--methods prompt prefix] [--out benchmarks/accuracy.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEFT_LR = {"prompt": 0.3, "prefix": 1e-2}


def train_for(model, lm, data, lr: float, budget_s: float, seed: int = 0, batch_size: int = 8) -> int:
    """PEFT's side of a same-wall-time comparison: AdamW on ``model``'s trainable parameters, our batches (same
    order, template and label tokens), the loss on the targets only, until ``budget_s`` is used. Returns the
    steps taken; leaves ``model`` in eval mode."""
    import torch

    from edgeprompt.train.batching import Encoder, collate
    from edgeprompt.train.loop import batch_indices

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    enc = Encoder(lm, data.spec, 96)
    t0, step = time.perf_counter(), 0
    model.train()
    while time.perf_counter() - t0 < budget_s:
        idx = batch_indices(len(data.train), batch_size, seed, step)
        b = collate([enc.example(data.train[i]) for i in idx], lm.pad_token_id)
        labels = torch.full_like(b.input_ids, -100)
        labels[b.tgt_rows, b.tgt_pos] = b.tgt_ids
        loss = model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
    model.eval()
    return step


def peft_train(lm_dir: str, data, method: str, P: int, budget_s: float, batch_size: int = 8, seed: int = 0):
    """PEFT's own training, for ``budget_s`` seconds; returns its folded tensors and step count."""
    import numpy as np
    import torch
    from peft import PrefixTuningConfig, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    from edgeprompt.methods.prefix_tuning.model import flat_to_kv
    from edgeprompt.train.models import FrozenLM

    torch.manual_seed(seed)
    lm = FrozenLM.load(lm_dir)
    if method == "prompt":
        cfg = PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=P,
            prompt_tuning_init=PromptTuningInit.TEXT,
            prompt_tuning_init_text=data.spec.instruction,
            tokenizer_name_or_path=lm_dir,
        )
    else:
        cfg = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=P, prefix_projection=True, encoder_hidden_size=512)
    model = get_peft_model(lm.model, cfg)
    t0 = time.perf_counter()
    step = train_for(model, lm, data, PEFT_LR[method], budget_s, seed, batch_size)
    wall = time.perf_counter() - t0
    with torch.no_grad():
        saved = model.get_prompt_embedding_to_save("default").float()
    if method == "prompt":
        return {"prompt_embeddings": saved.numpy()}, step, wall
    return {"kv_prefix": np.ascontiguousarray(flat_to_kv(saved, lm.info).numpy())}, step, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["prompt", "prefix"])
    ap.add_argument("--out", default=str(HERE / "accuracy.md"))
    args = ap.parse_args()

    import torch

    from edgeprompt.core.data import load_tweets
    from edgeprompt.core.methods import get_method
    from edgeprompt.train.loop import TrainConfig, train
    from edgeprompt.train.models import FrozenLM, resolve_model_dir
    from edgeprompt.train.scoring import evaluate, instruction_kv

    lm_dir = str(resolve_model_dir("default"))
    lm = FrozenLM.load(lm_dir)
    data = load_tweets()
    rows = []
    with torch.no_grad():
        zs = evaluate(lm, instruction_kv(lm, data.spec), data.spec, data.test, 96)
    for method in args.methods:
        spec_m = get_method(method)
        mcfg = spec_m.config_cls()
        tcfg = TrainConfig()
        t0 = time.perf_counter()
        res = train(lm, data, spec_m.name, mcfg, tcfg, progress=False)
        wall = time.perf_counter() - t0
        with torch.no_grad():
            ours = evaluate(lm, res.module.kv(lm), data.spec, data.test, 96)
        tensors, peft_steps, peft_wall = peft_train(lm_dir, data, method, mcfg.num_virtual_tokens, wall)
        with torch.no_grad():
            peft = evaluate(lm, spec_m.trainer().kv_from_folded(lm, tensors), data.spec, data.test, 96)
        rows.append((method, res, wall, ours, peft, peft_steps, peft_wall))
        print(
            f"{method}: ours {ours.accuracy:.3f} in {wall:.0f}s ({res.steps} steps, lr {res.lr:g}); "
            f"PEFT {peft.accuracy:.3f} in {peft_wall:.0f}s ({peft_steps} steps); zero-shot {zs.accuracy:.3f}",
            flush=True,
        )
    lines = [
        "# Tweets test accuracy (SmolLM2-135M, 1,000 test tweets, 3 classes)\n",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads. "
        f"Command: `python benchmarks/accuracy.py --methods {' '.join(args.methods)}` ({time.strftime('%Y-%m-%d')}).\n",
        f"Zero-shot baseline (instruction + template, no soft prompt): **{zs.accuracy:.1%}** (macro-F1 {zs.macro_f1:.3f}).\n",
        "| method | edgeprompt (defaults) | steps, lr | wall s (incl. dev evals) | vs zero-shot | PEFT, same wall time | PEFT steps | macro-F1 ours / PEFT |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, res, wall, ours, peft, ps, pw in rows:
        lines.append(
            f"| {method} | **{ours.accuracy:.1%}** | {res.steps}, {res.lr:g} | {wall:.0f} | {100 * (ours.accuracy - zs.accuracy):+.1f} pts "
            f"| {peft.accuracy:.1%} | {ps} ({pw:.0f} s) | {ours.macro_f1:.3f} / {peft.macro_f1:.3f} |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
