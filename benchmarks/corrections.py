"""Test scores of a task a ``benchmarks/quality.py`` run saved, under each label-prior correction: none,
``content_free`` and ``train_prior`` (recomputed from the saved prompt, as training computes them). A diagnostic of
the correction ``--calibration auto`` kept on dev, never a selection: it reads the test split.

    python benchmarks/corrections.py /tmp/edgeprompt-quality-XXXX/bank-drug-reviews-3-after drug-reviews-prompt --dataset drug-reviews --seed 3

The bank folder is the run's (``quality.py`` leaves its work folder in the temporary directory); ``--dataset`` and
``--seed`` rebuild the run's split, the *after* one (stratified).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bank")
    ap.add_argument("task")
    import quality

    ap.add_argument("--dataset", required=True, choices=list(quality.DATASETS))
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--model", default="default")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from edgeprompt.core.bank import PromptBank
    from edgeprompt.core.metrics import classification_report
    from edgeprompt.train.batching import Encoder
    from edgeprompt.train.forward import prefix_length
    from edgeprompt.train.models import FrozenLM, resolve_model_dir
    from edgeprompt.train.scoring import content_free_calibration, label_logprobs, train_prior_calibration
    from edgeprompt.train.workflows import task_kv

    lm = FrozenLM.load(str(resolve_model_dir(args.model)))
    data, _ = quality.DATASETS[args.dataset](args.seed, True)
    task = PromptBank(args.bank).task(args.task)
    kept = task.spec.calibration.method if task.spec.calibration is not None else "none"
    spec = replace(task.spec, calibration=None)
    with torch.no_grad():
        kv = task_kv(lm, task)
        scores = label_logprobs(lm, kv, Encoder(lm, spec, None, prefix_len=prefix_length(kv)), data.test)  # [N, K], texts whole
        corrections = {"none": None, "content_free": content_free_calibration(lm, kv, spec), "train_prior": train_prior_calibration(lm, kv, spec, data.train)}
    gold = np.array([spec.labels.index(ex.label) for ex in data.test])
    print(f"{args.task} ({args.dataset}, seed {args.seed}, {len(gold)} test rows); kept on dev: {kept}")
    for name, cal in corrections.items():
        rep = classification_report(gold, replace(spec, calibration=cal).decide(scores).argmax(1), spec.labels)
        recall = ", ".join(f"{lab} {r:.0%}" for lab, r in rep.per_label_recall.items())
        print(f"  {name:13s}{' (kept)' if name == kept else '       '} accuracy {rep.accuracy:.1%}, macro-F1 {rep.macro_f1:.3f}; recall {recall}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
