"""Test scores of a task a ``benchmarks/quality.py`` run saved, under each label-prior correction: none,
``content_free`` and ``train_prior`` (each recomputed from the saved prompt by training's own ``choose_calibration``).
A diagnostic of the correction ``--calibration auto`` kept on dev, never a selection: it reads the test split.

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

    from edgeprompt.core.bank import PromptBank
    from edgeprompt.core.constants import CalibrationMethod
    from edgeprompt.train.models import FrozenLM, resolve_model_dir
    from edgeprompt.train.workflows import choose_calibration, task_kv

    lm = FrozenLM.load(str(resolve_model_dir(args.model)))
    data, _ = quality.DATASETS[args.dataset](args.seed, True)
    task = PromptBank(args.bank).task(args.task)
    kept = task.spec.calibration.method if task.spec.calibration is not None else "none"
    # each correction training can store, computed as training computes it, measured on the test split in place of dev
    kv, spec, reports = task_kv(lm, task), replace(task.spec, calibration=None), {}
    for method in CalibrationMethod:
        _, rec = choose_calibration(lm, kv, spec, data.test, "macro_f1", method.value, data.train)
        reports.setdefault("none", rec["dev_without"])
        reports[method.value] = rec["candidates"][method.value]["dev"]
    print(f"{args.task} ({args.dataset}, seed {args.seed}, {len(data.test)} test rows); kept on dev: {kept}")
    for name, rep in reports.items():
        recall = ", ".join(f"{lab} {r:.0%}" for lab, r in rep["per_label_recall"].items())
        print(f"  {name:13s}{' (kept)' if name == kept else '       '} accuracy {rep['accuracy']:.1%}, macro-F1 {rep['macro_f1']:.3f}; recall {recall}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
