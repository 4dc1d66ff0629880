"""Task accuracy per quantization, through the on-device runtime, for prompts trained on the fp32
model and against a quantized bundle (`edgeprompt train --against`).

    python benchmarks/quant_accuracy.py --bank BANK --tasks tweets-prompt,tweets-prompt-q4 \
        --bundles /tmp/bundles/gguf-f32,/tmp/bundles/gguf-q8_0,/tmp/bundles/gguf-q4_0 [--limit 1000]

Every task is classified on its own test split (rebuilt from its manifest's data record) by each
bundle's runtime (the tasks are added to the running runtime with add_task). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from edgeprompt.core.bank import PromptBank
from edgeprompt.core.data import dataset_for_task
from edgeprompt.core.metrics import classification_report
from edgeprompt.runtimes import open_bundle


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bank", required=True)
    p.add_argument("--tasks", required=True)
    p.add_argument("--bundles", required=True)
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    bank = PromptBank(a.bank)
    tasks = a.tasks.split(",")
    lines = [
        "| task (trained on) | " + " | ".join(b.rstrip("/").split("/")[-1] for b in a.bundles.split(",")) + " |",
        "|---|" + "---|" * len(a.bundles.split(",")),
    ]
    table: dict[str, list[str]] = {t: [] for t in tasks}
    for bpath in a.bundles.split(","):
        rt = open_bundle(bpath, threads=a.threads)
        for t in tasks:
            task = bank.task(t)
            if t not in rt.tasks:
                rt.add_task(a.bank, name=t)
            test = dataset_for_task(task).test[: a.limit]
            labels = task.spec.labels
            t0 = time.perf_counter()
            pred = np.array([labels.index(rt.classify(t, ex.text, truncate=True).label) for ex in test])
            gold = np.array([labels.index(ex.label) for ex in test])
            rep = classification_report(gold, pred, labels)
            table[t].append(f"{rep.accuracy:.1%} (F1 {rep.macro_f1:.3f})")
            print(f"{bpath} {t}: {rep.accuracy:.3%} macro-F1 {rep.macro_f1:.3f} on {len(test)} in {time.perf_counter() - t0:.0f} s", flush=True)
        rt.close()
    for t in tasks:
        ag = bank.task(t).manifest.get("trained_against")
        what = f"{ag['format']} {ag['quant']}" if ag else "fp32 torch"
        lines.append(f"| {t} ({what}) | " + " | ".join(table[t]) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
