"""Issue 11: soft prompts on small, skewed data. Calibration applied the same way by eval, the parity gate and
both runtimes; class weights and dev selection for skewed labels; defaults that adapt to the data's size;
reports that show per-label precision and recall and say when a label is never predicted."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgeprompt.core.data import Example, load_file
from edgeprompt.core.errors import EdgePromptError
from edgeprompt.core.metrics import classification_report
from edgeprompt.core.parity import Probe, compare
from edgeprompt.core.tasks import Calibration

from .conftest import make_sentences, run_cli


def test_calibration_divides_out_the_prior():
    """p = [0.25, 0.75] under a prior [0.75, 0.25]: p / prior = [1/3, 3], renormalised [0.1, 0.9]."""
    cal = Calibration(list(np.log([0.75, 0.25])))
    out = np.exp(cal.apply(np.log([[0.25, 0.75]]) + 7.0))  # any log scale: scores are normalised first
    np.testing.assert_allclose(out, [[0.1, 0.9]], atol=1e-12)
    assert Calibration.from_dict(cal.to_dict()).log_prior == pytest.approx(cal.log_prior, abs=1e-6)
    probs = np.array([[0.9, 0.1], [0.7, 0.3]])
    np.testing.assert_allclose(np.exp(Calibration.from_probabilities(probs).log_prior), [0.8, 0.2])


def test_the_parity_gate_decides_labels_as_the_runtimes_do():
    ref = np.array([[0.0, 1.0, 0.8], [0.0, 1.0, 0.2]])  # label ids 1, 2: raw says label a both times
    probes = [Probe("t", "x", "b"), Probe("t", "y", "a")]
    raw = compare(ref, ref, probes, {"t": (["a", "b"], [1, 2])})["t"]
    cal = Calibration(list(np.log([0.6, 0.4])))  # the prompt leans to a: divided out, x turns to b, y stays a
    got = compare(ref, ref, probes, {"t": (["a", "b"], [1, 2], cal)})["t"]
    assert raw.accuracy_reference == 0.5 and got.accuracy_reference == 1.0 and got.label_agreement == 1.0


@pytest.mark.parametrize("fmt,quant", [("onnx", "fp32"), ("gguf", "f32")])
def test_a_calibrated_task_decides_the_same_in_eval_and_both_runtimes(bundle_of, tiny_bank, tiny_tied_dir, tmp_path, fmt, quant):
    """The content-free prior is measured in torch, stored in the task's manifest, and every path divides it out."""
    from edgeprompt.core.bank import PromptBank
    from edgeprompt.core.constants import PARITY_FP32_MAX_ABS, TaskKeys
    from edgeprompt.runtimes.runtime import open_bundle
    from edgeprompt.train.batching import Encoder
    from edgeprompt.train.models import FrozenLM
    from edgeprompt.train.scoring import content_free_calibration, evaluate, label_logprobs
    from edgeprompt.train.workflows import task_kv

    lm = FrozenLM.load(tiny_tied_dir)
    bank = PromptBank(tmp_path / "bank")
    shutil.copytree(tiny_bank, bank.root)
    task = bank.task("pt")
    kv = task_kv(lm, task)
    measured = content_free_calibration(lm, kv, task.spec)
    assert len(measured.log_prior) == 2 and np.isclose(np.exp(measured.log_prior).sum(), 1)
    # a strong prior, so that the calibrated decisions differ from the raw ones (the test can fail)
    cal = Calibration(list(np.log([0.98, 0.02])), inputs=measured.inputs)
    spec = replace(task.spec, calibration=cal)
    bank.add("ptc", task.method, task.tensors(), spec, lm.info, overwrite=True)
    assert json.loads((bank.root / "tasks" / "ptc" / "manifest.json").read_text())[TaskKeys.CALIBRATION]["log_prior"] == pytest.approx(cal.log_prior, abs=1e-6)
    stored = bank.task("ptc").spec
    examples = [Example(s, lab) for s, lab in make_sentences(30, seed=3)]
    lp = label_logprobs(lm, kv, Encoder(lm, stored, None, prefix_len=task.num_virtual_tokens), examples)
    torch_dec = stored.decide(lp)
    assert (torch_dec.argmax(1) != lp.argmax(1)).any()  # calibration changed some decisions
    rep = evaluate(lm, kv, stored, examples)
    with open_bundle(bundle_of(fmt, quant), threads=1) as rt:
        rt.add_task(bank.root / "tasks" / "ptc")
        outs = [rt.classify("ptc", e.text) for e in examples]
    dev = np.log([[o.probabilities[lab] for lab in stored.labels] for o in outs])
    np.testing.assert_allclose(dev, torch_dec, atol=4 * PARITY_FP32_MAX_ABS)
    sure = np.abs(torch_dec[:, 0] - torch_dec[:, 1]) > 8 * PARITY_FP32_MAX_ABS
    assert [o.label for o, s in zip(outs, sure) if s] == [stored.labels[k] for k, s in zip(torch_dec.argmax(1), sure) if s]
    assert rep.accuracy == pytest.approx(np.mean([o.label == e.label for o, e in zip(outs, examples)]), abs=1 / len(examples) * (~sure).sum() + 1e-9)


def _skewed_csv(path, n_major=90, n_minor=10):
    rows = [(s, "positive") for s, lab in make_sentences(400, seed=1) if lab == "positive"][:n_major]
    rows += [(s, "negative") for s, lab in make_sentences(400, seed=2) if lab == "negative"][:n_minor]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


def test_class_balanced_batches_give_each_label_its_share_as_a_function_of_seed_and_step(tmp_path, tiny_lm):
    """``--balance sampling``: each batch holds every label to within one row, a minority row is drawn once per pass
    over its label (not at random with replacement), the batches are a function of (seed, step), and a run trained
    that way records it and trains on unweighted rows."""
    from edgeprompt.core.methods import get_method
    from edgeprompt.methods.prompt_tuning import PromptTuningConfig
    from edgeprompt.train.loop import TrainConfig, _make_module, _Run, balanced_batch_indices, resolved

    by_label = [np.arange(0, 90), np.arange(90, 100)]  # 90 of one label, 10 of the other
    batches = [balanced_batch_indices(by_label, 8, 3, step) for step in range(5)]  # 40 rows: 20 of each label
    assert [int((b >= 90).sum()) for b in batches] == [4] * 5  # half of every batch
    minority = np.concatenate([b[b >= 90] for b in batches])
    assert sorted(minority[:10].tolist()) == list(range(90, 100)) == sorted(minority[10:].tolist())  # two whole passes
    assert [b.tolist() for b in batches] == [balanced_batch_indices(by_label, 8, 3, step).tolist() for step in range(5)]
    assert batches[0].tolist() != balanced_batch_indices(by_label, 8, 4, 0).tolist()  # the seed orders them
    three = [np.arange(0, 5), np.arange(5, 7), np.arange(7, 30)]
    assert [np.bincount(np.searchsorted([5, 7], balanced_batch_indices(three, 8, 0, s), side="right"), minlength=3).tolist() for s in range(3)] == [
        [3, 3, 2], [3, 2, 3], [2, 3, 3],
    ]  # fmt: skip
    data = load_file(_skewed_csv(tmp_path / "skew.csv"), dev=10, test=10)
    cfg = TrainConfig(balance="sampling", steps=2, batch_size=4)
    assert resolved(cfg, data)[0] == "sampling"
    run = _Run(tiny_lm, data, _make_module(tiny_lm, data, get_method("prompt_tuning"), PromptTuningConfig(num_virtual_tokens=2), cfg), cfg, 0.1)
    assert run.row_weight is None and [len(r) for r in run.by_label] == [sum(ex.label == lab for ex in data.train) for lab in data.spec.labels]
    # a label with no training rows takes no share (its rows cannot be drawn): the batches hold the labels there are
    three = replace(data, spec=replace(data.spec, labels=[*data.spec.labels, "mixed"], verbalizers={**data.spec.verbalizers, "mixed": " mixed"}))
    run = _Run(tiny_lm, three, _make_module(tiny_lm, three, get_method("prompt_tuning"), PromptTuningConfig(num_virtual_tokens=2), cfg), cfg, 0.1)
    assert len(run.by_label) == 2 and sorted({three.train[i].label for i in balanced_batch_indices(run.by_label, 4, 0, 0)}) == sorted(data.spec.labels)
    run.train_step()
    assert run.step == 1


def test_skewed_labels_get_class_weights_and_macro_f1_selection(tmp_path, tiny_lm):
    from edgeprompt.core.methods import get_method
    from edgeprompt.methods.prompt_tuning import PromptTuningConfig
    from edgeprompt.train.batching import Encoder, collate
    from edgeprompt.train.loop import TrainConfig, _make_module, class_weights, is_skewed, label_tokens, loss_on_batch, resolved

    data = load_file(_skewed_csv(tmp_path / "skew.csv"), dev=10, test=10)
    assert is_skewed(data) and resolved(TrainConfig(), data) == ("weights", "macro_f1")
    assert resolved(TrainConfig(balance="none", select="accuracy"), data) == ("none", "accuracy")
    w = class_weights(data)
    assert np.mean([w[ex.label] for ex in data.train]) == pytest.approx(1.0)
    assert w["negative"] / w["positive"] == pytest.approx(sum(ex.label == "positive" for ex in data.train) / sum(ex.label == "negative" for ex in data.train))
    # the weighted loss is the weighted mean of the per-example cross-entropies
    module = _make_module(tiny_lm, data, get_method("prompt_tuning"), PromptTuningConfig(num_virtual_tokens=2), TrainConfig())
    enc = Encoder(tiny_lm, data.spec, 48)
    rows = [ex for ex in data.train if ex.label == "negative"][:3] + [ex for ex in data.train if ex.label == "positive"][:3]  # both labels, unequal weights
    batch = collate([enc.example(ex) for ex in rows], tiny_lm.pad_token_id)
    rw = torch.tensor([w[ex.label] for ex in rows])
    with torch.no_grad():
        got = loss_on_batch(tiny_lm, module, batch, rw)
        from edgeprompt.train.forward import logits_at, text_hidden

        h = text_hidden(tiny_lm, module.kv(tiny_lm), batch.input_ids, batch.attention_mask)
        ce = F.cross_entropy(logits_at(tiny_lm, h[batch.tgt_rows, batch.tgt_pos - 1]).float(), batch.tgt_ids, reduction="none")
    assert got.item() == pytest.approx(((ce * rw[batch.tgt_rows]).sum() / rw[batch.tgt_rows].sum()).item(), rel=1e-6)
    # objective="labels": the softmax runs over the labels' tokens only, in label order (one-byte verbalizers are
    # one token each under the tiny BPE, whose " negative" is several)
    enc = Encoder(tiny_lm, replace(data.spec, verbalizers={"negative": "N", "positive": "P"}), 48)
    toks = label_tokens(enc)
    assert toks.tolist() == [v[0] for v in enc.verbalizer_ids] and len(set(toks.tolist())) == len(data.spec.labels) == 2
    batch = collate([enc.example(ex) for ex in rows], tiny_lm.pad_token_id)
    with torch.no_grad():
        got = loss_on_batch(tiny_lm, module, batch, rw, toks)
        h = text_hidden(tiny_lm, module.kv(tiny_lm), batch.input_ids, batch.attention_mask)
        full = logits_at(tiny_lm, h[batch.tgt_rows, batch.tgt_pos - 1]).float()
        logits = full[:, toks]
        want = torch.tensor([data.spec.labels.index(ex.label) for ex in rows])
        ce_k = F.cross_entropy(logits, want, reduction="none")
    assert got.item() == pytest.approx(((ce_k * rw).sum() / rw.sum()).item(), rel=1e-6)


def test_the_labels_objective_is_refused_where_a_softmax_over_label_tokens_is_not_the_label_choice(tmp_path, tiny_lm):
    from edgeprompt.core.tasks import TaskSpec
    from edgeprompt.train.batching import Encoder
    from edgeprompt.train.loop import TrainConfig, label_tokens

    with pytest.raises(EdgePromptError, match="objective='words' is not one of vocab, labels"):
        TrainConfig(objective="words")
    data = load_file(_skewed_csv(tmp_path / "skew.csv"), dev=10, test=10)
    spec = replace(data.spec, verbalizers={"negative": "N", "positive": "P and upbeat"})
    assert len(Encoder(tiny_lm, spec, 48).verbalizer_ids[1]) > 1
    with pytest.raises(EdgePromptError, match=r"one-token verbalizers; \{'positive': \d+\}"):
        label_tokens(Encoder(tiny_lm, spec, 48))
    with pytest.raises(EdgePromptError, match="for classification tasks"):
        label_tokens(Encoder(tiny_lm, TaskSpec(kind="generation"), 48))


def test_defaults_adapt_to_small_data_and_say_so():
    from edgeprompt.train.loop import TrainConfig, adapt_to_data

    cfg, notes = adapt_to_data(TrainConfig(), n_train=100)
    assert (cfg.steps, cfg.eval_every, cfg.warmup_steps) == (125, 25, 10) and any("125" in n for n in notes)
    cfg, notes = adapt_to_data(TrainConfig(), n_train=10)
    assert cfg.steps == 30 and cfg.warmup_steps == 3  # at least MIN_STEPS
    cfg, notes = adapt_to_data(TrainConfig(steps=500), n_train=100, given={"steps"})
    assert cfg.steps == 500 and cfg.eval_every == 40 and not any("steps 500" in n for n in notes)
    assert adapt_to_data(TrainConfig(), n_train=36_000)[0] == TrainConfig()  # large data: the defaults as they are


def test_a_thin_dev_split_is_said():
    """Dev rows of the rarest label, counted among the scored ones (eval_examples): 9 rows make one row 11% of its
    recall (said), 20 do not; a label with training rows but none on dev is named; generation says nothing."""
    from edgeprompt.core.data import Dataset
    from edgeprompt.core.tasks import TaskSpec
    from edgeprompt.train.loop import THIN_DEV_ROWS, TrainConfig, dev_resolution_note

    spec = TaskSpec(template="{text}\nLabel:", labels=["negative", "neutral", "positive"])
    train = [Example(f"t{i}", lab) for i, lab in enumerate(["negative", "neutral", "positive"] * 10)]

    def rows(**n):
        return [Example(f"d{lab}{i}", lab) for lab, k in n.items() for i in range(k)]

    note = dev_resolution_note(Dataset("d", spec, train, rows(negative=26, neutral=9, positive=65), [], "t"), TrainConfig())
    assert note is not None and "9 neutral rows" in note and "11%" in note and "100 rows scored" in note
    thick = Dataset("d", spec, train, rows(negative=30, neutral=THIN_DEV_ROWS, positive=50), [], "t")
    assert dev_resolution_note(thick, TrainConfig()) is None
    # only the scored rows count: eval_examples=60 scores 30 negative, 20 neutral, 10 positive
    assert "10 positive rows" in dev_resolution_note(thick, TrainConfig(eval_examples=60))
    none = dev_resolution_note(Dataset("d", spec, train, rows(negative=50, positive=50), [], "t"), TrainConfig())
    assert "no neutral rows" in none
    unused = TaskSpec(template="{text}\nLabel:", labels=["negative", "neutral", "positive", "unused"])  # no rows anywhere
    assert "9 neutral rows" in dev_resolution_note(Dataset("d", unused, train, rows(negative=26, neutral=9, positive=65), [], "t"), TrainConfig())
    gen = TaskSpec(kind="generation", template="Q: {text}\nA:")
    assert dev_resolution_note(Dataset("g", gen, train, rows(a=3), [], "t"), TrainConfig()) is None


def test_reports_show_precision_recall_and_warn_when_a_label_is_never_predicted():
    rep = classification_report(np.array([0, 0, 0, 1, 2]), np.array([0, 0, 1, 1, 0]), ["a", "b", "c"])
    assert rep.never_predicted == ["c"]
    assert rep.per_label_precision == {"a": pytest.approx(2 / 3), "b": 0.5, "c": 0.0} and rep.per_label_recall["a"] == pytest.approx(2 / 3)
    text = rep.format()
    assert "WARNING: never predicted: c" in text and "precision" in text
    assert rep.to_dict()["never_predicted"] == ["c"]


def test_max_length_rises_to_the_longest_training_example_and_says_so():
    """Drug reviews: 64% of the training inputs are longer than the default 96 tokens; training on their first 96
    tokens while eval reads them whole cost accuracy. The cut rises to the longest (capped), unless given."""
    from edgeprompt.train.loop import MAX_ADAPTED_LENGTH, TrainConfig, adapt_to_data

    cfg, notes = adapt_to_data(TrainConfig(), n_train=10_000, lengths=[40, 97, 180, 120])
    assert cfg.max_length == 180 and any("max length 180 (not 96): 3 of 4" in n for n in notes)
    cfg, notes = adapt_to_data(TrainConfig(), n_train=10_000, lengths=[40, 96, 60])
    assert cfg.max_length == 96 and not notes  # nothing cut: unchanged
    cfg, notes = adapt_to_data(TrainConfig(), n_train=10_000, lengths=[40, 2 * MAX_ADAPTED_LENGTH])
    assert cfg.max_length == MAX_ADAPTED_LENGTH and any("1 still longer" in n for n in notes)
    cfg, notes = adapt_to_data(TrainConfig(max_length=64), n_train=10_000, given={"max_length"}, lengths=[40, 180])
    assert cfg.max_length == 64 and not notes  # the user's --max-length holds
    cfg, notes = adapt_to_data(TrainConfig(max_length=1024), n_train=10_000, lengths=[40, 2000])
    assert cfg.max_length == 1024 and not notes  # never below the setting, whatever the cap


def test_train_raises_max_length_for_long_texts_and_says_so(tiny_model_dir, tmp_path, env):
    from edgeprompt.core.bank import PromptBank
    from edgeprompt.core.constants import TaskKeys

    path = tmp_path / "long.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows((text + " and more" * (20 + i % 40), lab) for i, (text, lab) in enumerate(make_sentences(60)))
    bank = tmp_path / "bank"
    args = ["train", "--model", str(tiny_model_dir), "--bank", str(bank), "--data", str(path), "--steps", "2", "-P", "2", "--quiet", "--no-test"]
    r = run_cli([*args, "--name", "auto"], env)
    assert "max length" in r.stderr and "(not 96)" in r.stderr, r.stderr
    assert "rows scored) has 3 " in r.stderr and "33% of its recall" in r.stderr, r.stderr  # 6 dev rows of 60: 3 a label
    got = PromptBank(bank).task("auto").manifest[TaskKeys.TRAINING]["train_config"]["max_length"]
    assert got > 96 and f"max length {got} (not 96)" in r.stderr
    r = run_cli([*args, "--name", "given", "--max-length", "64"], env)
    assert "max length" not in r.stderr and PromptBank(bank).task("given").manifest[TaskKeys.TRAINING]["train_config"]["max_length"] == 64


def test_model_selection_scores_dev_texts_whole_as_eval_does(tiny_lm):
    """Training cuts texts at ``max_length`` for speed; the dev scores that pick the kept state read them whole,
    as eval, calibration and the runtimes do (drug reviews, seed 0: 2 of 100 dev texts were longer than the cut).
    A generation task's dev NLL shows the difference: a random tiny model answers a classification the same
    whatever the text's length."""
    from edgeprompt.core.data import Dataset
    from edgeprompt.core.methods import get_method
    from edgeprompt.core.tasks import TaskSpec
    from edgeprompt.methods.prompt_tuning import PromptTuningConfig
    from edgeprompt.train.loop import TrainConfig, _make_module, _Run
    from edgeprompt.train.scoring import evaluate

    rows = [Example("and more " * (10 + i % 20) + text, f"it is {lab}") for i, (text, lab) in enumerate(make_sentences(30))]
    data = Dataset("long", TaskSpec(kind="generation", template="Q: {text}\nA:"), rows[:20], rows[20:], [], "test")
    cfg = TrainConfig(max_length=24)
    module = _make_module(tiny_lm, data, get_method("prompt_tuning"), PromptTuningConfig(num_virtual_tokens=2), cfg)
    run = _Run(tiny_lm, data, module, cfg, 0.1)
    run.evaluate_dev()
    with torch.no_grad():
        whole = evaluate(tiny_lm, module.kv(tiny_lm), data.spec, run.dev)
        cut = evaluate(tiny_lm, module.kv(tiny_lm), data.spec, run.dev, cfg.max_length)
    assert whole["nll"] != cut["nll"]  # the cut changes the scores: the check below can tell the two apart
    assert run.loop["history"][-1]["dev"] == whole and run.loop["best_dev"] == whole


def test_sequence_lengths_are_what_training_encodes_uncut(tiny_lm):
    from edgeprompt.core.tasks import TaskSpec
    from edgeprompt.train.batching import Encoder, sequence_lengths

    spec = TaskSpec(template="Review: {text}\nSentiment:", labels=["negative", "positive"])
    examples = [Example(" ".join(["word"] * n), "positive") for n in (1, 30, 200)]
    got = sequence_lengths(tiny_lm, spec, examples)
    enc = Encoder(tiny_lm, spec, max_length=max(got))  # a cut at the longest: nothing is lost
    assert got == [len(enc.example(ex).ids) for ex in examples]
    assert got[2] > 200  # the long one is whole
    gen = TaskSpec(kind="generation", template="Q: {text}\nA:")
    examples = [Example(" ".join(["word"] * n), " ".join(["answer"] * t)) for n, t in ((3, 20), (100, 2), (60, 20))]  # all within the tiny context (512)
    for ex, L in zip(examples, sequence_lengths(tiny_lm, gen, examples)):
        whole = len(Encoder(tiny_lm, gen, max_length=None).example(ex).ids)
        assert len(Encoder(tiny_lm, gen, max_length=L).example(ex).ids) == whole  # kept whole at L
        assert len(Encoder(tiny_lm, gen, max_length=L - 1).example(ex).ids) < whole  # and L is the least such


def test_train_task_measures_calibration_on_dev_and_records_the_choice(tmp_path, tiny_lm):
    from edgeprompt.core.bank import PromptBank
    from edgeprompt.core.constants import TaskKeys
    from edgeprompt.methods.prompt_tuning import PromptTuningConfig
    from edgeprompt.train.loop import TrainConfig
    from edgeprompt.train.workflows import evaluate_task, format_reports, train_task

    data = load_file(_skewed_csv(tmp_path / "skew.csv"), dev=12, test=12)
    bank = PromptBank(tmp_path / "bank")
    cfg = TrainConfig(steps=6, batch_size=4, eval_every=3, eval_examples=12, warmup_steps=1, calibration="on")
    task, summary = train_task(
        tiny_lm, data, {"source": str(tmp_path / "skew.csv")}, "prompt_tuning", PromptTuningConfig(num_virtual_tokens=2), cfg, bank, "s", progress=False
    )
    m = task.manifest
    rec = m[TaskKeys.TRAINING]["calibration"]
    assert rec["kept"] == "content_free" and set(rec["candidates"]) == {"content_free"} and "dev_without" in rec  # on: content_free only
    assert set(rec["candidates"]["content_free"]["divided_out"]) == {"negative", "positive"} and rec["candidates"]["content_free"]["dev"]["n"] == 12
    assert m[TaskKeys.TRAINING]["balance"] == "weights" and m[TaskKeys.TRAINING]["select"] == "macro_f1"
    assert task.spec.calibration is not None and m[TaskKeys.METRICS]["zero_shot_calibrated_test"]["n"] == 12
    assert "zero-shot, calibrated" in format_reports(task.spec, summary["reports"])
    cfg_off = replace(cfg, calibration="off")
    task, _ = train_task(
        tiny_lm, data, {"source": "x"}, "prompt_tuning", PromptTuningConfig(num_virtual_tokens=2), cfg_off, bank, "s", overwrite=True, progress=False
    )
    assert task.spec.calibration is None and TaskKeys.CALIBRATION not in task.manifest
    assert evaluate_task(tiny_lm, task, data.test)["zero_shot_calibrated"]["n"] == 12


def test_the_zero_shot_is_one_yardstick_whatever_correction_the_task_kept(tmp_path, tiny_lm):
    """The calibrated zero-shot used to follow the task's own correction (content-free when the task kept none), so
    two tasks on one split had two bars (SMS spam seed 4: 0.634 and 0.740). Now every task on a split gets the same
    baseline, under each correction, and one pass scores them all: each report equals a separate ``evaluate`` under
    that correction, number for number (the same log-probabilities, shifted)."""
    from edgeprompt.core.bank import PromptBank
    from edgeprompt.methods.prompt_tuning import PromptTuningConfig
    from edgeprompt.train.loop import TrainConfig
    from edgeprompt.train.scoring import content_free_calibration, evaluate, evaluate_corrections, instruction_kv, train_prior_calibration
    from edgeprompt.train.workflows import evaluate_task, train_task

    data = load_file(_skewed_csv(tmp_path / "skew.csv"), dev=12, test=12)
    bank = PromptBank(tmp_path / "bank")
    kept, reps = [], []
    for i, mode in enumerate(("off", "content_free", "train_prior")):
        cfg = TrainConfig(steps=3, batch_size=4, eval_every=3, eval_examples=12, warmup_steps=1, calibration=mode)
        task, _ = train_task(tiny_lm, data, {"source": "x"}, "prompt_tuning", PromptTuningConfig(num_virtual_tokens=2), cfg, bank, f"t{i}", progress=False)
        kept.append(task.spec.calibration.method if task.spec.calibration else None)
        reps.append(evaluate_task(tiny_lm, task, data.test, train=data.train))
    assert kept == [None, "content_free", "train_prior"]
    for r in reps:
        assert r["zero_shot_calibration"] == "train_prior" and r["zero_shot_calibrated"] == r["zero_shot_calibrations"]["train_prior"]
        assert (r["zero_shot"], r["zero_shot_calibrations"]) == (reps[0]["zero_shot"], reps[0]["zero_shot_calibrations"])
    assert set(reps[0]["zero_shot_calibrations"]) == {"content_free", "train_prior"}
    assert set(evaluate_task(tiny_lm, task, data.test)["zero_shot_calibrations"]) == {"content_free"}  # no training rows: no train prior
    kv, spec = instruction_kv(tiny_lm, data.spec), replace(data.spec, calibration=None)
    cals = {None: None, "cf": content_free_calibration(tiny_lm, kv, spec), "tp": train_prior_calibration(tiny_lm, kv, spec, data.train)}
    cals["forced"] = Calibration([50.0, -50.0], "content_free", [])  # divides out the first label: every text is the second
    one_pass = evaluate_corrections(tiny_lm, kv, spec, data.test, cals)
    for name, c in cals.items():
        assert one_pass[name].to_dict() == evaluate(tiny_lm, kv, replace(spec, calibration=c), data.test).to_dict(), name
    assert one_pass["forced"].to_dict()["never_predicted"] == [spec.labels[0]] != one_pass[None].to_dict()["never_predicted"]


def test_the_quality_benchmark_sets_each_run_against_every_zero_shot_of_its_split(tmp_path, tiny_lm, monkeypatch):
    """The targets hold against each zero-shot shown (raw and under each correction), whatever our task kept, and
    ``--rescore-zero-shot`` gives runs recorded before that the same baseline on every run of a split."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import quality

    from edgeprompt.train.scoring import evaluate, instruction_kv

    def rep(f1, acc=0.8):
        return {"accuracy": acc, "macro_f1": f1, "never_predicted": []}

    def run(seed, f1, cals=None):
        r = {
            "dataset": "d", "method": "prompt", "seed": seed, "variant": "after", "steps": 200, "test": rep(f1), "zero_shot": rep(0.2, 0.5),
            "zero_shot_calibrated": rep(0.3, 0.5), "zero_shot_calibration": "content_free", "majority": rep(0.3, 0.6),
        }  # fmt: skip
        return r | ({"zero_shot_calibrations": cals} if cals else {})

    runs = [run(0, 0.65, {"content_free": rep(0.3), "train_prior": rep(0.45)}), run(1, 0.75, {"content_free": rep(0.3), "train_prior": rep(0.45)})]
    row = quality.targets(runs).splitlines()[2].split(" | ")
    assert row[3] == "0.700 (raw 0.450 / content_free 0.550 / train_prior 0.700)", row
    assert row[5] == "yes" and row[6] == "+0.000 ± 0.071 (se 0.050; 1 of 2) |"  # 0.65 - 0.70 and 0.75 - 0.70: the train-prior bar; 0.071 / sqrt(2)
    runs[1]["test"] = rep(0.6)  # mean 0.625: over the raw and content-free bars only
    assert quality.targets(runs).splitlines()[2].split(" | ")[5] == "against the raw, content_free zero-shot only"
    assert "| zero-shot calibrated (train_prior) | 2 |" in quality.table(runs)
    env = quality.run_environment()  # each run records the machine it trained on
    assert sorted(env) == ["cores", "cpu", "kernel_flags", "torch"] and env["cpu"] and env["cores"] >= 1, env
    assert quality.zero_shot_bars(run(0, 0.5)) == {"raw": 0.2, "content_free": 0.3}  # recorded before: its task's correction alone
    row = quality.targets([runs[0], run(1, 0.5)]).splitlines()[2].split(" | ")  # a bar not every seed was scored under says so
    assert row[3] == "0.575 (raw 0.450 / content_free 0.550 / train_prior 0.700 (1 of 2 seeds))", row
    # --rescore-zero-shot: every after run of a split gets the split's baseline; a before run keeps its own
    data = load_file(_skewed_csv(tmp_path / "skew.csv"), dev=12, test=12, stratify=True)
    monkeypatch.setitem(quality.DATASETS, "d", lambda seed, stratify: (data, {}))
    runs = [run(0, 0.6), run(0, 0.7) | {"method": "prefix"}, run(0, 0.7) | {"variant": "before"}]
    lines = quality.rescore_zero_shot(runs, tiny_lm, "abc")
    assert len(lines) == 1 and lines[0].startswith("d seed 0 (2 runs): raw ")
    raw = evaluate(tiny_lm, instruction_kv(tiny_lm, data.spec), replace(data.spec, calibration=None), data.test).to_dict()
    for r in runs[:2]:
        assert r["zero_shot"] == raw and set(r["zero_shot_calibrations"]) == {"content_free", "train_prior"} and r["zero_shot_commit"] == "abc"
        assert r["zero_shot_calibrated"] == r["zero_shot_calibrations"]["train_prior"] and r["zero_shot_calibration"] == "train_prior"
    assert runs[0]["zero_shot_calibrations"] == runs[1]["zero_shot_calibrations"] and "zero_shot_calibrations" not in runs[2]


def test_stratified_splits_keep_each_label_share_and_legacy_tasks_keep_their_split(tmp_path):
    import random

    from edgeprompt.core.data import dataset_for_task, split

    rows = [Example(f"text {i}", "neutral" if i % 11 == 0 else ("negative" if i % 3 == 0 else "positive")) for i in range(600)]
    tr, dv, te = split(rows, seed=4, dev=0.1, test=0.2, stratify=True)
    assert sorted(e.text for e in tr + dv + te) == sorted(e.text for e in rows) and (len(dv), len(te)) == (60, 120)
    for part, n in ((dv, 60), (te, 120)):
        for lab in ("neutral", "negative", "positive"):
            share = sum(e.label == lab for e in rows) / len(rows)
            assert abs(sum(e.label == lab for e in part) - share * n) <= 1, (lab, n)
    assert split(rows, seed=4, dev=0.1, test=0.2, stratify=True) == (tr, dv, te)  # seeded
    # stratify=False is the split every earlier task was trained on: a seeded shuffle sliced from the front
    old = list(rows)
    random.Random(4).shuffle(old)
    assert split(rows, seed=4, dev=60, test=120) == (old[180:], old[120:180], old[:120])

    class Legacy:  # a task recorded before stratified splits: its load args do not say "stratify"
        name = "legacy"
        spec = None
        manifest = {"data": {"load_args": {"source": str(_skewed_csv(tmp_path / "s.csv")), "seed": 0, "dev": 10, "test": 10}}}

    from edgeprompt.core.tasks import TaskSpec

    Legacy.spec = TaskSpec(template="{text}\nLabel:", labels=["negative", "positive"])
    got = dataset_for_task(Legacy)
    want = load_file(tmp_path / "s.csv", spec=Legacy.spec, dev=10, test=10, stratify=False)
    assert (got.train, got.dev, got.test) == (want.train, want.dev, want.test)
    assert load_file(tmp_path / "s.csv", spec=Legacy.spec, dev=10, test=10).test != want.test  # the new default differs


def test_train_prior_calibration_matches_the_prompt_mean_answer_to_the_label_frequencies(tmp_path, tiny_lm):
    """The stored log_prior against the formula on the scorer's label probabilities, and the decision that eval
    takes with it against p(k|x) * q(k) / m(k) computed by hand."""
    from edgeprompt.core.constants import CalibrationMethod
    from edgeprompt.train.batching import Encoder
    from edgeprompt.train.forward import prefix_length
    from edgeprompt.train.scoring import evaluate, instruction_kv, label_logprobs, train_prior_calibration

    data = load_file(_skewed_csv(tmp_path / "skew.csv"), dev=12, test=12)
    kv, spec = instruction_kv(tiny_lm, data.spec), data.spec
    cal = train_prior_calibration(tiny_lm, kv, spec, data.train)
    assert cal.method == CalibrationMethod.TRAIN_PRIOR.value and cal.inputs == []
    enc = Encoder(tiny_lm, spec, None, prefix_len=prefix_length(kv))

    def probs(examples):
        p = np.exp(label_logprobs(tiny_lm, kv, enc, examples))
        return p / p.sum(1, keepdims=True)

    q = np.array([sum(e.label == lab for e in data.train) + 1.0 for lab in spec.labels])  # add-one smoothed counts
    m = probs(data.train).mean(0)
    want = m / (q / q.sum())
    np.testing.assert_allclose(np.exp(cal.log_prior), want / want.sum(), rtol=1e-9)  # float64 both ways
    pred = (probs(data.test) * q / m).argmax(1)
    gold = np.array([spec.labels.index(e.label) for e in data.test])
    want_confusion = [[int(((gold == g) & (pred == k)).sum()) for k in range(len(spec.labels))] for g in range(len(spec.labels))]
    assert evaluate(tiny_lm, kv, replace(spec, calibration=cal), data.test).confusion == want_confusion
    roundtrip = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert roundtrip.method == "train_prior" and roundtrip.inputs == [] and roundtrip.log_prior == pytest.approx(cal.log_prior, abs=1e-6)


def test_auto_calibration_weighs_train_prior_against_none_on_dev_and_content_free_only_without_training_rows(tiny_lm, tmp_path):
    """``auto`` puts one correction against none on dev: ``train_prior`` when there are training rows (the
    content-free prior cost test macro-F1 on every saved quality task, ``benchmarks/quality.md``), ``content_free``
    when there are none; either stays available by name."""
    from edgeprompt.train.loop import dev_score
    from edgeprompt.train.scoring import evaluate, instruction_kv
    from edgeprompt.train.workflows import choose_calibration

    data = load_file(_skewed_csv(tmp_path / "skew.csv"), dev=12, test=12)
    kv = instruction_kv(tiny_lm, data.spec)
    for train, only in ((data.train, "train_prior"), ((), "content_free")):
        spec, rec = choose_calibration(tiny_lm, kv, data.spec, data.dev, "accuracy", "auto", train)
        assert set(rec["candidates"]) == {only}, rec["candidates"]
        score, raw = rec["candidates"][only]["dev"]["accuracy"], rec["dev_without"]["accuracy"]  # multiples of 1/12, rounded alike
        assert raw == pytest.approx(dev_score(evaluate(tiny_lm, kv, data.spec, data.dev), "accuracy"), abs=1e-4)
        if score >= raw:  # a tie keeps the correction
            assert rec["kept"] == only and spec.calibration.method == only
        else:
            assert rec["kept"] is None and spec.calibration is None
    for named in ("content_free", "train_prior"):
        spec, rec = choose_calibration(tiny_lm, kv, data.spec, data.dev, "accuracy", named, data.train)
        assert rec["kept"] == named and spec.calibration.method == named and set(rec["candidates"]) == {named}
    with pytest.raises(EdgePromptError, match="names no correction"):  # off is the caller's to skip, not train_prior
        choose_calibration(tiny_lm, kv, data.spec, data.dev, "accuracy", "off", data.train)


def test_gains_are_measured_against_the_baseline_best_at_each_metric():
    """Calibrating the zero-shot often lowers its accuracy while raising its macro-F1 (tweets: 41.6% / 0.199 raw,
    33.4% / 0.301 calibrated). The gain in accuracy is over the more accurate baseline and the gain in macro-F1 over
    the one with the higher macro-F1; taking both from one baseline overstated the accuracy gain by 8 points."""
    import numpy as np

    from edgeprompt.core.metrics import classification_report
    from edgeprompt.core.tasks import TaskKind, TaskSpec
    from edgeprompt.train.workflows import format_reports

    labels = ["a", "b"]
    gold = np.array([0] * 8 + [1] * 2)
    task = classification_report(gold, np.array([0] * 7 + [1] + [1, 0]), labels)  # 80%
    raw = classification_report(gold, np.zeros(10, int), labels)  # 80%, macro-F1 0.444: never says b
    cal = classification_report(gold, np.array([0] * 5 + [1] * 3 + [1, 0]), labels)  # 60%, macro-F1 0.524
    spec = TaskSpec(kind=TaskKind.CLASSIFICATION, labels=labels)
    worse = classification_report(gold, np.array([0] * 4 + [1] * 4 + [1, 0]), labels)  # 50%, macro-F1 0.467: a second correction
    out = format_reports(spec, (task, raw, {"content_free": cal, "train_prior": worse})).splitlines()
    heads = [ln.split(":")[0] for ln in out if ln.startswith(("soft prompt", "zero-shot"))]
    assert heads == ["soft prompt", "zero-shot", "zero-shot, calibrated (content_free)", "zero-shot, calibrated (train_prior)"], heads
    line = out[-1]
    assert f"{100 * (task.accuracy - raw.accuracy):+.1f} accuracy points over the zero-shot's best (raw, 80.0%)" in line, line
    assert f"{task.macro_f1 - cal.macro_f1:+.3f} macro-F1 over its best (content_free, {cal.macro_f1:.3f})" in line, line
    assert cal.accuracy < raw.accuracy and cal.macro_f1 > raw.macro_f1  # the two baselines each win one metric


def test_a_run_s_test_sampling_sd_is_a_bootstrap_of_its_test_rows(monkeypatch):
    """``macro_f1_test_sd`` resamples the confusion matrix's cells; resampling the rows themselves and scoring each
    draw with ``classification_report`` (the scorer eval uses) gives the same sd to Monte Carlo error: an sd
    estimated from B draws has a relative sd of about 1 / sqrt(2 B), 1.6% at B = 2000, and the difference of two
    independent estimates sqrt(2) times that, 2.2%; the test allows five times it, 11%."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import quality

    labels = ["negative", "neutral", "positive"]
    cm = np.array([[60, 10, 8], [9, 8, 11], [12, 14, 168]])  # a drug-review-like split: 300 rows, 28 neutral
    gold = np.repeat(np.repeat(np.arange(3), 3), cm.ravel())
    pred = np.repeat(np.tile(np.arange(3), 3), cm.ravel())
    report = classification_report(gold, pred, labels).to_dict()
    assert report["confusion"] == cm.tolist()
    rng = np.random.default_rng(1)
    draws = [classification_report(gold[i], pred[i], labels).macro_f1 for i in rng.integers(0, len(gold), (2000, len(gold)))]
    ours = quality.macro_f1_test_sd(report)
    assert ours == pytest.approx(float(np.std(draws)), rel=5 * 2**0.5 / (2 * 2000) ** 0.5), (ours, np.std(draws))
    assert ours == quality.macro_f1_test_sd(report)  # seeded: a table rebuilt from the same runs says the same
    assert quality.macro_f1_test_sd(classification_report(gold, gold, labels).to_dict()) == 0.0  # every row right, every draw 1.0
    assert quality.macro_f1_test_sd({"macro_f1": 0.5}) is None  # a run recorded without its confusion matrix


def test_the_quality_benchmark_gives_runs_with_fixed_steps_their_own_rows(monkeypatch, capsys):
    """``benchmarks/quality.py --steps 400``: those runs are a row of their own in both tables (a 400-step mean
    folded into the 200-step one would hide which settings scored what), and the zero-shot and majority rows come
    from the default runs alone (one entry per split, not one per run on it)."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import quality

    def run(seed, acc, steps_given=None, given=None):
        rep = {"accuracy": acc, "macro_f1": acc - 0.2, "never_predicted": []}
        base = {"accuracy": 0.5, "macro_f1": 0.3, "never_predicted": []}
        return {
            "dataset": "d", "method": "prefix", "seed": seed, "variant": "after", "steps": steps_given or 200,
            "steps_given": steps_given, "test": rep, "zero_shot": base, "zero_shot_calibrated": base,
            "majority": {"accuracy": 0.6, "macro_f1": 0.25}, "training": {"calibration": {"kept": "none"}},
            **({"given": given} if given else {}),
        }  # fmt: skip

    runs = [run(0, 0.7), run(1, 0.8), run(0, 0.9, steps_given=400)]
    rows = quality.table(runs).splitlines()[2:]
    assert [r.split(" | ")[2:5] for r in rows][:2] == [["after (none)", "2", "0.750 ± 0.100"], ["after, 400 steps (none)", "1", "0.900"]]
    assert all(r.split(" | ")[3] == "2" for r in rows[2:])  # zero-shot, calibrated, majority: the two default splits
    targets = [r.split(" | ")[1:3] + [r.split(" | ")[6].removesuffix(" |")] for r in quality.targets(runs).splitlines()[2:]]
    # per seed, against its split's highest bar (0.3 + 0.25): 0.5 - 0.55 and 0.6 - 0.55
    assert targets == [["prefix", "0.750 (0.700)", "+0.000 ± 0.071 (se 0.050; 1 of 2)"], ["prefix, 400 steps", "0.900 (0.700)", "+0.150 (1 of 1)"]]
    on_bar = {
        "test": {"macro_f1": 0.6172},
        "zero_shot": {"macro_f1": 0.3},
        "zero_shot_calibrated": {"macro_f1": 0.3672},
    }  # 0.6172 - 0.3672 - 0.25 < 0 in floats
    assert quality._paired([on_bar]) == "+0.000 (1 of 1)"
    # other settings (--P, --objective) are arms of their own too, said in every table
    runs += [run(1, 0.6, given={"objective": "labels", "P": 50}), run(2, 0.65, given={"objective": "labels"})]
    rows = [r.split(" | ")[2:5] for r in quality.table(runs).splitlines()[2:]]
    assert rows[:4] == [
        ["after (none)", "2", "0.750 ± 0.100"], ["after, P=50, labels objective (none)", "1", "0.600"],
        ["after, labels objective (none)", "1", "0.650"], ["after, 400 steps (none)", "1", "0.900"],
    ]  # fmt: skip
    assert [r.split(" | ")[3] for r in quality.per_run(runs).splitlines()[2:]][-3:] == [
        "after, P=50, labels objective",
        "after, labels objective",
        "after, 400 steps",
    ]
    # the peers do not train with those settings: their rows name the run they ran beside
    runs[-1]["peft"] = {"steps": 250, "test": runs[-1]["test"]}
    assert "| PEFT beside after, labels objective, same wall time (250 steps, ours 200) | 1 |" in quality.table(runs)
    with pytest.raises(SystemExit):  # a before run would repeat one on record
        quality.main(["--P", "50", "--json", "/nonexistent/q.json"])
    with pytest.raises(SystemExit):
        quality.main(["--balance", "sampling", "--json", "/nonexistent/q.json"])
    assert quality.arm_suffix({"given": {"balance": "sampling"}}) == ", sampling balance"
    assert quality.arm_suffix({"given": {"init": "labels"}}) == ", labels init"
    with pytest.raises(SystemExit):
        quality.main(["--init", "labels", "--json", "/nonexistent/q.json"])
    # prefix tuning starts from text or random: --init labels is refused before any model loads, naming the choices
    with pytest.raises(SystemExit) as e:
        quality.main(["--methods", "prefix", "--variants", "after", "--init", "labels", "--json", "/nonexistent/q.json"])
    assert e.value.code == 2 and "--init labels: prefix tuning initialises from one of text, random" in capsys.readouterr().err


def test_the_quality_benchmark_keeps_each_steps_group_s_peft_arms_apart(monkeypatch):
    """PEFT and LoRA train for the seconds of the *after* run beside them, so a ``--steps 400`` run's peers had
    twice the time of a default run's: each steps group gets its own PEFT and LoRA rows, as *after* does."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import quality

    def run(seed, peft_acc, steps_given=None):
        base = {"accuracy": 0.5, "macro_f1": 0.3, "never_predicted": []}
        peer = {"accuracy": peft_acc, "macro_f1": 0.4, "never_predicted": []}
        return {
            "dataset": "d", "method": "prompt", "seed": seed, "variant": "after", "steps": steps_given or 200,
            "steps_given": steps_given, "test": base, "zero_shot": base, "zero_shot_calibrated": base,
            "majority": base, "training": {"calibration": {"kept": "none"}},
            "peft": {"steps": 10, "test": peer}, "lora": {"steps": 5, "adapter_bytes": 4096, "test": peer},
        }  # fmt: skip

    runs = [run(0, 0.6), run(1, 0.7), run(0, 0.9, steps_given=400)]
    peers = {r.split(" | ")[2]: r.split(" | ")[3:5] for r in quality.table(runs).splitlines()[2:] if "PEFT" in r}
    assert peers == {
        "PEFT, same wall time (10 steps, ours 200)": ["2", "0.650 ± 0.100"],
        "PEFT, 400 steps, same wall time (10 steps, ours 400)": ["1", "0.900"],
        "PEFT LoRA r=8, same wall time (5 steps, ours 200; 4 KiB a task)": ["2", "0.650 ± 0.100"],
        "PEFT LoRA r=8, 400 steps, same wall time (5 steps, ours 400; 4 KiB a task)": ["1", "0.900"],
    }


def test_the_quality_benchmark_records_the_commit_it_ran_from(tmp_path, monkeypatch):
    """Each run says which code produced it (``+dirty`` for uncommitted changes, None for a copy outside git), so
    a run on defaults since changed is found by its commit rather than by the date in the prose."""
    import subprocess
    from pathlib import Path

    source = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"
    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    shutil.copy(source, repo / "benchmarks" / "quality.py")
    outside = tmp_path / "copy" / "benchmarks"
    outside.mkdir(parents=True)
    shutil.copy(source, outside / "quality.py")

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    def commit_of(folder):
        import importlib.util
        import sys

        monkeypatch.setattr(sys, "path", sys.path[:])  # the module puts its folder on the path: undone after the test
        spec = importlib.util.spec_from_file_location("quality_copy", folder / "quality.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.source_commit()

    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "x")
    assert commit_of(repo / "benchmarks") == git("rev-parse", "HEAD")
    (repo / "benchmarks" / "quality.py").write_text(source.read_text() + "\n# changed\n")
    assert commit_of(repo / "benchmarks") == git("rev-parse", "HEAD") + "+dirty"
    assert commit_of(outside) is None


def test_the_quality_benchmark_rebuilds_its_tables_in_place_and_keeps_the_prose(monkeypatch):
    """``quality.py --append``/``--render`` rebuild quality.md's tables where they stand: the prose written around
    them (what the runs mean) survives a new run, a table the file lacks is added at its end, and each run's row
    shows the correction kept and its dev margin over none, the figure behind a near-tie."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import quality

    def rep(f1):
        return {"accuracy": 0.7, "macro_f1": f1, "never_predicted": []}

    def run(seed, kept, cf_dev, without_dev):
        candidates = {"content_free": {"dev": rep(cf_dev)}, "train_prior": {"dev": rep(0.1)}}
        calibration = {"select": "macro_f1", "kept": kept, "dev_without": rep(without_dev), "candidates": candidates}
        return {
            "dataset": "d", "method": "prompt", "seed": seed, "variant": "after", "steps": 200, "steps_given": None,
            "test": rep(0.5), "zero_shot": rep(0.3), "zero_shot_calibrated": rep(0.3), "majority": rep(0.2),
            "training": {"calibration": calibration, "best_step": 160}, "commit": "0123456789abcdef",
        }  # fmt: skip

    runs = [run(0, "content_free", 0.5711, 0.5686), run(1, None, 0.40, 0.55)]
    runs[1]["commit"] += "+dirty"  # uncommitted changes ran: the table must not show it as the clean commit
    runs[0]["threads"] = 2  # from its manifest; a run whose saved task is gone has none
    md = quality.render(runs[:1], "")
    heads = [line for line in md.splitlines() if line.startswith("| dataset |")]
    assert len(heads) == len(quality.TABLES) and all(line.startswith(head) for line, (head, _, _) in zip(heads, quality.TABLES))
    by_seed = {r.split(" | ")[2]: r.split(" | ")[4:6] + r.split(" | ")[-2:] for r in quality.per_run(runs).splitlines()[2:]}
    assert by_seed == {
        "0": ["200 (160)", "content_free +0.0025", "2", "0123456 |"],
        "1": ["200 (160)", "none (best: content_free -0.1500)", "-", "0123456+dirty |"],
    }

    # prose around the first two tables, the per-run one missing (a file from before it existed)
    old = "\n".join(["# title", "", "intro", "", quality.table(runs[:1]), "", "between", "", quality.targets(runs[:1]), "", "**Prose.** kept", ""])
    new = quality.render(runs, old)
    assert [line for line in new.splitlines() if not line.startswith("|")][:9] == ["# title", "", "intro", "", "", "between", "", "", "**Prose.** kept"]
    assert quality.table(runs) in new and quality.targets(runs) in new and quality.table(runs[:1]) not in new
    assert new.rstrip().endswith(quality.per_run(runs)) and quality.render(runs, new) == new  # once added, it stays where it is
