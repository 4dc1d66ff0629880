"""Label scoring and the generation path, each against a brute-force second implementation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgeprompt.core.data import Example, load_file
from edgeprompt.core.methods import get_method
from edgeprompt.core.metrics import classification_report
from edgeprompt.core.tasks import TaskSpec
from edgeprompt.train.batching import Encoder
from edgeprompt.train.forward import full_logits
from edgeprompt.train.scoring import evaluate, label_logprobs


def brute_force(lm, kv, spec, ex, max_length=64):
    """log p(verbalizer | input) by running every (input + verbalizer) sequence alone."""
    enc = Encoder(lm, spec, max_length)
    out = []
    for v in enc.verbalizer_ids:
        ids = enc.input_ids(ex.text) + list(v)
        n = len(ids) - len(v)
        logits = full_logits(lm, kv, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0]
        logp = F.log_softmax(logits.double(), -1)
        out.append(sum(logp[n + j - 1, t].item() for j, t in enumerate(v)))
    return out


def _kv(lm):
    rng = np.random.default_rng(0)
    return get_method("prompt_tuning").trainer().kv_from_folded(lm, {"prompt_embeddings": rng.standard_normal((3, lm.info.hidden_size)).astype(np.float32)})


def _spec(lm, kind: str) -> TaskSpec:
    if kind == "single":
        from .conftest import FILL, NEG, POS

        singles = [" " + w for w in POS + NEG + FILL if len(lm.encode(" " + w)) == 1][:3]
        assert len(singles) == 3
        return TaskSpec(template="{text}\nLabel:", labels=["a", "b", "c"], verbalizers=dict(zip("abc", singles)))
    return TaskSpec(template="Text: {text}\nLabel:", labels=["a", "b", "c"], verbalizers={"a": " really wonderful day", "b": " terrible", "c": " my"})


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_label_scores_match_brute_force(tiny_lm, kind):
    """One pass at the last position (single-token labels) or one row per label (multi-token)."""
    spec = _spec(tiny_lm, kind)
    enc = Encoder(tiny_lm, spec, 64)
    longest = max(len(v) for v in enc.verbalizer_ids)
    assert (longest == 1) == (kind == "single")
    exs = [Example("the movie was great", "a"), Example("so bad today", "b"), Example("my day and the movie", "c")]
    with torch.no_grad():
        kv = _kv(tiny_lm)
        got = label_logprobs(tiny_lm, kv, enc, exs, batch_size=2)
        want = np.array([brute_force(tiny_lm, kv, spec, ex) for ex in exs])
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_metrics_against_hand_counts():
    gold = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 0, 2])
    r = classification_report(gold, pred, ["x", "y", "z"])
    assert r.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert r.accuracy == 4 / 6
    f1 = {"x": 0.5, "y": 2 * (2 / 3) * 1 / (2 / 3 + 1), "z": 2 * 1 * 0.5 / 1.5}
    assert abs(r.macro_f1 - sum(f1.values()) / 3) < 1e-12


def test_generation_task_trains_on_the_target_and_reports_perplexity(tiny_lm, tmp_path):
    from edgeprompt.methods.prompt_tuning import PromptTuningConfig
    from edgeprompt.train.loop import TrainConfig, train

    p = tmp_path / "gen.jsonl"
    with open(p, "w") as f:
        for i in range(40):
            f.write(json.dumps({"prompt": f"the movie {i}", "answer": "good" if i % 2 else "bad"}) + "\n")
    data = load_file(p, text_column="prompt", label_column="answer", kind="generation", dev=4, test=4)
    enc = Encoder(tiny_lm, data.spec, 48)
    e = enc.example(data.train[0])
    assert e.ids[-1] == tiny_lm.eos_token_id and list(e.ids[e.n_input : -1]) == tiny_lm.encode(data.train[0].label)
    before = evaluate(tiny_lm, None, data.spec, data.test, 48)
    assert data.spec.instruction == ""  # no instruction: the default init=text must still work
    res = train(
        tiny_lm,
        data,
        "prompt_tuning",
        PromptTuningConfig(num_virtual_tokens=4),
        TrainConfig(steps=40, batch_size=8, lr=0.1, eval_every=20, eval_examples=4, max_length=48, warmup_steps=2),
        progress=False,
    )
    after = evaluate(tiny_lm, res.module.kv(tiny_lm), data.spec, data.test, 48)
    assert set(after) >= {"nll", "perplexity", "token_accuracy"}
    assert after["nll"] < before["nll"]


@pytest.mark.parametrize("fmt,quant", [("onnx", "fp32"), ("gguf", "f32")])
def test_eval_and_the_runtime_agree_example_by_example_on_texts_longer_than_the_training_cut(bundle_of, tiny_bank, tiny_tied_dir, fmt, quant):
    """What ``edgeprompt eval`` reports is what the device does: the same input rule on both paths."""
    from edgeprompt.core.bank import PromptBank
    from edgeprompt.core.constants import PARITY_FP32_MAX_ABS
    from edgeprompt.runtimes.runtime import open_bundle
    from edgeprompt.train.models import FrozenLM
    from edgeprompt.train.workflows import task_kv

    from .conftest import make_sentences

    lm = FrozenLM.load(tiny_tied_dir)
    task = PromptBank(tiny_bank).task("pt")
    train_cut = 32  # a training --max-length: every text below is several times longer
    sents = make_sentences(400, seed=5)
    examples = [Example(" ".join(s for s, _ in sents[i * 12 : (i + 1) * 12]), sents[i * 12][1]) for i in range(24)]
    assert min(len(lm.encode(e.text)) for e in examples) > 3 * train_cut
    kv = task_kv(lm, task)
    P = task.num_virtual_tokens
    ours = label_logprobs(lm, kv, Encoder(lm, task.spec, None, prefix_len=P), examples)  # eval's rule (max_length=None)
    cut = label_logprobs(lm, kv, Encoder(lm, task.spec, train_cut, prefix_len=P), examples)  # the old eval: the training cut
    with open_bundle(bundle_of(fmt, quant), threads=1) as rt:
        dev = np.array([[rt.classify("pt", e.text).logprobs[lab] for lab in task.spec.labels] for e in examples])
    # A log-probability is a logit minus a logsumexp: each side differs by at most the fp32 gate's bound.
    tol = 2 * PARITY_FP32_MAX_ABS
    np.testing.assert_allclose(ours, dev, atol=tol, rtol=0)
    margin = np.abs(dev[:, 0] - dev[:, 1])
    sure = margin > 2 * tol  # where the label cannot flip within the tolerance, it must be the same
    assert sure.sum() >= len(examples) // 2
    assert (ours.argmax(1)[sure] == dev.argmax(1)[sure]).all()
    # the check can fail: the training cut scores other inputs than the device sees
    assert np.abs(cut - dev).max() > 10 * tol


def test_many_multi_token_labels_are_scored_in_bounded_forwards(tiny_lm, monkeypatch):
    """Each example runs once per label: the forward's batch is capped in sequences, and the scores do not
    depend on the cap (the same numbers with 3 sequences per forward as with everything at once)."""
    import edgeprompt.train.scoring as scoring

    spec = _spec(tiny_lm, "multi")
    enc = Encoder(tiny_lm, spec, 64)
    exs = [Example(f"the movie was great {i}", "abc"[i % 3]) for i in range(7)]
    seen = []
    real = scoring.text_hidden

    def spy(lm, kv, ids, mask):
        seen.append(ids.shape[0])
        return real(lm, kv, ids, mask)

    monkeypatch.setattr(scoring, "text_hidden", spy)
    with torch.no_grad():
        kv = _kv(tiny_lm)
        whole = label_logprobs(tiny_lm, kv, enc, exs, batch_size=32)
        assert max(seen) == 7 * 3  # under the cap: one forward
        seen.clear()
        monkeypatch.setattr(scoring, "MAX_SEQUENCES_PER_FORWARD", 3)
        capped = label_logprobs(tiny_lm, kv, enc, exs, batch_size=32)
    assert max(seen) <= 3 and len(seen) == 7
    np.testing.assert_allclose(capped, whole, atol=1e-5)  # batching changes padding only
