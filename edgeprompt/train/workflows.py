"""Library entry points behind the CLI: train a task into a bank, evaluate a bank task."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import torch

from edgeprompt.core.bank import BankTask, PromptBank, check_task_name
from edgeprompt.core.constants import CalibrationMethod, TaskKeys, TaskKind
from edgeprompt.core.data import Dataset, Example
from edgeprompt.core.errors import EdgePromptError
from edgeprompt.core.files import recover_directory
from edgeprompt.core.methods import get_method
from edgeprompt.core.metrics import report_dict
from edgeprompt.core.tasks import INPUT_RULE, TaskSpec
from edgeprompt.train.loop import TrainConfig, dev_score, label_counts, resolved, train
from edgeprompt.train.models import FrozenLM
from edgeprompt.train.scoring import content_free_calibration, evaluate, evaluate_corrections, instruction_kv, train_prior_calibration

CHECKPOINTS_DIR = ".checkpoints"


def data_record(data: Dataset, load_args: dict[str, Any]) -> dict:
    return {**data.describe(), "load_args": load_args}


def train_task(
    lm: FrozenLM,
    data: Dataset,
    load_args: dict[str, Any],
    method: str,
    method_config: Any,
    config: TrainConfig,
    bank: PromptBank,
    name: str,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    evaluate_test: bool = True,
    against: dict | None = None,
) -> tuple[BankTask, dict]:
    """Train, fold into ``bank`` as ``name``, then measure the test split against zero-shot."""
    check_task_name(name)
    spec_m = get_method(method)
    bank.check_model(lm.info)
    if name in bank.names() and not overwrite:
        raise EdgePromptError(f"bank {bank.root} already has a task {name!r}; pass --overwrite to replace it or choose another --name.")
    ckpt = bank.root / CHECKPOINTS_DIR / name
    recover_directory(ckpt)  # a swap cut by a crash or a second Ctrl-C leaves it renamed aside
    if not resume and (ckpt / "state.json").exists():
        raise EdgePromptError(f"an interrupted run of {name!r} has a checkpoint in {ckpt}: continue it with --resume, or delete that folder to start afresh.")
    result = train(lm, data, spec_m.name, method_config, config, checkpoint_dir=ckpt, resume=resume, progress=progress)
    tensors = result.module.fold(lm)
    balance, select = resolved(config, data)
    spec, calibration = data.spec, None
    if spec.kind == TaskKind.CLASSIFICATION and config.calibration != "off":
        with torch.no_grad():
            spec, calibration = choose_calibration(lm, result.module.kv(lm), spec, data.dev[: config.eval_examples], select, config.calibration, data.train)
    training = {
        "method_config": method_config.to_dict(),
        "train_config": {**asdict(config), "lr": result.lr},
        "steps": result.steps,
        "best_step": result.best_step,
        "wall_time_s": round(result.wall_time_s, 1),
        "history": result.history,
        "torch_threads": torch.get_num_threads(),
        "label_counts": label_counts(data) if spec.kind == TaskKind.CLASSIFICATION else None,
        "balance": balance,
        "select": select,
        "calibration": calibration,
    }
    metrics = {"dev": result.best_dev}
    extra = {TaskKeys.SOURCE: "edgeprompt", TaskKeys.TRAINING: training, TaskKeys.DATA: data_record(data, load_args), TaskKeys.METRICS: metrics}
    extra[TaskKeys.INPUT_RULE] = {**INPUT_RULE, "train_max_length": config.max_length}
    if against:
        extra[TaskKeys.TRAINED_AGAINST] = against
    task = bank.add(name, spec_m.name, tensors, spec, lm.info, extra=extra, overwrite=True)
    shutil.rmtree(ckpt, ignore_errors=True)
    summary: dict[str, Any] = {"task": name, "method": spec_m.name, "wall_time_s": training["wall_time_s"], "dev": result.best_dev}
    if evaluate_test and data.test:
        rep = evaluate_task(lm, task, data.test, train=data.train)
        metrics["test"], metrics["zero_shot_test"], metrics["zero_shot_calibrated_test"] = rep["task"], rep["zero_shot"], rep["zero_shot_calibrated"]
        metrics["zero_shot_calibration"], metrics["zero_shot_calibrations_test"] = rep["zero_shot_calibration"], rep["zero_shot_calibrations"]
        task = bank.update_manifest(name, **{TaskKeys.METRICS: metrics})
        summary.update(
            test=rep["task"],
            zero_shot_test=rep["zero_shot"],
            zero_shot_calibrated_test=rep["zero_shot_calibrated"],
            zero_shot_calibration=rep["zero_shot_calibration"],
            zero_shot_calibrations_test=rep["zero_shot_calibrations"],
            reports=rep["reports"],
        )
    return task, summary


def choose_calibration(lm: FrozenLM, kv, spec: TaskSpec, dev: list[Example], select: str, mode: str, train: list[Example] = ()) -> tuple[TaskSpec, dict]:
    """The label-prior correction of a trained prompt (:class:`~edgeprompt.core.constants.CalibrationMethod`).

    ``mode``: a method name (``on`` is ``content_free``) keeps that correction; ``auto`` measures one candidate and
    none on dev and keeps the better dev score (``select``: accuracy or macro-F1), the correction on a tie. The
    candidate is ``train_prior`` when there are training rows, else ``content_free``: on a *trained* prompt the
    content-free prior (three strings no training text resembles) cost test macro-F1 against no correction on
    all 14 saved tasks of ``benchmarks/quality.md`` (three datasets, both methods), and dev, 100 rows, picked it
    once, on a 0.0025 lead, for a loss of 0.115; ``train_prior`` is estimated on the texts the prompt was trained
    for. Without dev examples ``auto`` keeps none. Returns the spec to store and the record of the choice: each
    candidate's ``divided_out`` (``exp(log_prior)`` per label) and dev report, and ``kept`` (the method, or None).
    """
    if mode == "auto" and not dev:
        return spec, {"select": select, "candidates": {}, "kept": None, "why": "no dev examples to measure a correction on"}
    if mode == "auto":
        method = (CalibrationMethod.TRAIN_PRIOR if train else CalibrationMethod.CONTENT_FREE).value
    else:
        method = CalibrationMethod.CONTENT_FREE.value if mode == "on" else mode
    if method == CalibrationMethod.CONTENT_FREE.value:
        cal = content_free_calibration(lm, kv, spec)
    elif method == CalibrationMethod.TRAIN_PRIOR.value:
        cal = train_prior_calibration(lm, kv, spec, list(train))
    else:  # "off" (the caller skips the correction) or a typo: never a silent train_prior
        raise EdgePromptError(f"calibration {mode!r} names no correction to measure: auto, on, {', '.join(m.value for m in CalibrationMethod)}.")
    divided_out = dict(zip(spec.labels, [round(float(np.exp(x)), 4) for x in cal.log_prior]))
    rec: dict[str, Any] = {"select": select, "candidates": {method: {"divided_out": divided_out}}}
    kept = None if mode == "auto" else method
    if dev:  # one scoring pass of dev, read with and without the correction
        reps = evaluate_corrections(lm, kv, spec, dev, {None: None, method: cal})  # each entry sets the correction
        raw, rep = reps[None], reps[method]
        rec["dev_without"] = report_dict(raw)
        rec["candidates"][method]["dev"] = report_dict(rep)
        if mode == "auto" and dev_score(rep, select) >= dev_score(raw, select):
            kept = method
    rec["kept"] = kept
    return (replace(spec, calibration=cal) if kept else spec), rec


def task_kv(lm: FrozenLM, task: BankTask):
    """The KV prefix of a bank task on ``lm`` (shapes and fingerprint checked)."""
    lm.info.check_compatible(task.base_model, f"task {task.name!r}")
    spec_m = task.method_spec
    tensors = task.tensors()
    spec_m.check_tensors(tensors, lm.info, where=f"task {task.name!r}")
    with torch.no_grad():
        return spec_m.trainer().kv_from_folded(lm, tensors)


def zero_shot_reports(lm: FrozenLM, spec: TaskSpec, examples: list[Example], max_length: int | None = None, train: list[Example] = ()) -> tuple:
    """The zero-shot baseline (the instruction as plain tokens, no soft prompt): its report as is and, on a
    classification task, ``{method: report}`` under every label-prior correction a task can keep, each measured on
    the baseline's own prefix: ``content_free`` always, ``train_prior`` when ``train`` is given. Which ones does
    not depend on the correction the task kept, so the baseline is one yardstick for every task on the same split."""
    base_kv, base_spec = instruction_kv(lm, spec), replace(spec, calibration=None)
    if spec.kind != TaskKind.CLASSIFICATION:
        return evaluate(lm, base_kv, base_spec, examples, max_length), {}
    corrections = {None: None, CalibrationMethod.CONTENT_FREE.value: content_free_calibration(lm, base_kv, base_spec)}
    if train:
        corrections[CalibrationMethod.TRAIN_PRIOR.value] = train_prior_calibration(lm, base_kv, base_spec, list(train))
    reps = evaluate_corrections(lm, base_kv, base_spec, examples, corrections, max_length)
    return reps.pop(None), reps


def evaluate_task(
    lm: FrozenLM, task: BankTask, examples: list[Example], max_length: int | None = None, baseline: bool = True, train: list[Example] = ()
) -> dict:
    """Metrics of the folded task and, beside them, of the zero-shot baseline (:func:`zero_shot_reports`).

    ``max_length=None`` (the default) scores each text as the runtimes do: whole, cut only to fit the
    model's context (:func:`edgeprompt.core.tasks.input_ids`), so what eval reports is what a device does.
    ``zero_shot_calibrations`` holds the baseline under each correction; ``zero_shot_calibrated`` is the one
    ``--calibration auto`` would measure for a task (``train_prior`` when ``train`` is given, else
    ``content_free``), named by ``zero_shot_calibration``, whichever the task itself kept.
    """
    if not examples:
        raise EdgePromptError("no examples to evaluate.")
    t0 = time.perf_counter()
    with torch.no_grad():
        rep = evaluate(lm, task_kv(lm, task), task.spec, examples, max_length)
        zs, zcals = zero_shot_reports(lm, task.spec, examples, max_length, train) if baseline else (None, {})
    rule = CalibrationMethod.TRAIN_PRIOR.value if CalibrationMethod.TRAIN_PRIOR.value in zcals else CalibrationMethod.CONTENT_FREE.value
    return {
        "task": report_dict(rep),
        "zero_shot": report_dict(zs),
        "zero_shot_calibrated": report_dict(zcals.get(rule)),
        "zero_shot_calibration": rule if zcals else None,
        "zero_shot_calibrations": {m: report_dict(r) for m, r in zcals.items()},
        "reports": (rep, zs, zcals),
        "eval_s": round(time.perf_counter() - t0, 1),
    }


def format_reports(spec: TaskSpec, reports: tuple) -> str:
    """``reports``: ``evaluate_task(...)["reports"]``, the task's report, the zero-shot's (or None) and the
    zero-shot's under each correction."""
    rep, zs, zcals = (tuple(reports) + (None, None))[:3]
    zcals = zcals or {}
    if spec.kind == TaskKind.CLASSIFICATION:
        cal = f" (calibrated: {spec.calibration.method})" if spec.calibration is not None else ""
        out = rep.format(f"soft prompt{cal}: ")
        if zs is not None:
            out += "\n" + zs.format("zero-shot: ")
        for method, r in zcals.items():
            out += "\n" + r.format(f"zero-shot, calibrated ({method}): ")
        bases = {k: r for k, r in (("raw", zs), *zcals.items()) if r is not None}
        if bases:  # each metric against the baseline that is best at it: calibration often trades accuracy for macro-F1
            acc = max(bases, key=lambda k: bases[k].accuracy)
            f1 = max(bases, key=lambda k: bases[k].macro_f1)
            out += (
                f"\n=> {100 * (rep.accuracy - bases[acc].accuracy):+.1f} accuracy points over the zero-shot's best ({acc}, "
                f"{100 * bases[acc].accuracy:.1f}%) and {rep.macro_f1 - bases[f1].macro_f1:+.3f} macro-F1 over its best ({f1}, {bases[f1].macro_f1:.3f})"
            )
        return out
    out = f"soft prompt: {rep}"
    if zs is not None:
        out += f"\nzero-shot:   {zs}"
    return out
