"""Training cost per method and P: step time and peak RSS of a short run (``edgeprompt profile --train-cost``).

Each (method, P) runs in its own process, so its peak RSS is its own. A batch is ``B`` random token sequences
of ``T`` tokens with the loss on the last one (the step's cost does not depend on the tokens' values), with
each method's default config; the median step of ``steps`` after ``warmup`` is reported.

    python -m edgeprompt.train.cost '{"model": "default", "method": "prefix_tuning", "P": 20}'
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable

B, T = 8, 64


def child(a: dict) -> dict:
    import torch

    from edgeprompt.core.methods import get_method
    from edgeprompt.train.batching import Batch
    from edgeprompt.train.loop import loss_on_batch
    from edgeprompt.train.models import FrozenLM

    torch.set_num_threads(int(a.get("threads") or torch.get_num_threads()))
    lm = FrozenLM.load(a["model"])
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, lm.info.vocab_size, (B, T), generator=g)
    b = Batch(ids, torch.ones_like(ids), torch.arange(B), torch.full((B,), T - 1), ids[:, -1])
    spec = get_method(a["method"])
    cfg = spec.config_cls(num_virtual_tokens=a["P"])
    module = spec.trainer().module_cls(cfg, lm, init_text="Classify the text.")
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    times = []
    for i in range(a.get("warmup", 1) + a.get("steps", 3)):
        t0 = time.perf_counter()
        loss = loss_on_batch(lm, module, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= a.get("warmup", 1):
            times.append(time.perf_counter() - t0)
    return {
        "method": spec.name,
        "P": a["P"],
        "step_s": statistics.median(times),
        "step_s_all": times,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "trainable_params": sum(p.numel() for p in params),
        "batch": B,
        "tokens": T,
    }


def step_costs(
    model: str, methods: list[str], Ps: list[int], steps: int = 3, warmup: int = 1, threads: int | None = None, log: Callable[[str], None] = print
) -> list[dict]:
    rows = []
    for m in methods:
        for P in Ps:
            log(f"  training cost: {m}, P={P} (child process) ...")
            args = {"model": str(model), "method": m, "P": P, "steps": steps, "warmup": warmup, "threads": threads}
            r = subprocess.run([sys.executable, "-m", "edgeprompt.train.cost", json.dumps(args)], capture_output=True, text=True)
            if r.returncode != 0:
                rows.append({"method": m, "P": P, "error": (r.stderr.strip().splitlines() or ["?"])[-1]})
            else:
                rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return rows


if __name__ == "__main__":
    print(json.dumps(child(json.loads(sys.argv[1]))))
