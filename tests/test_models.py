"""Base models: the embedded default (slow: converts a 94 MB GGUF once), GGUF checks, fingerprints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeprompt.core.errors import EdgePromptError
from edgeprompt.train.models import FrozenLM, default_gguf_path, resolve_model_dir


def test_unsupported_gguf_architecture_is_refused_before_any_work(tmp_path, monkeypatch):
    import gguf

    monkeypatch.setenv("EDGEPROMPT_CACHE", str(tmp_path / "cache"))
    p = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(p), "gpt2")
    w.add_tensor("x", np.zeros(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(EdgePromptError, match=r"architecture 'gpt2' is not supported.*llama, mistral, qwen2"):
        resolve_model_dir(p)
    assert not (tmp_path / "cache").exists()


def test_fingerprint_changes_with_weights_and_not_with_reload(tiny_model_dir, tmp_path):
    from .conftest import build_tiny_model

    a, b = FrozenLM.load(tiny_model_dir), FrozenLM.load(tiny_model_dir)
    assert a.info.fingerprint == b.info.fingerprint
    other = FrozenLM.load(build_tiny_model(tmp_path / "other", seed=1))
    assert other.info.fingerprint != a.info.fingerprint


@pytest.mark.slow
def test_default_model_converts_once_and_tokenizes_without_bos(monkeypatch):
    # Uses the shared cache (EDGEPROMPT_CACHE or ~/.cache/edgeprompt) so that the suite converts once.
    path = resolve_model_dir("default")
    marker = path / "edgeprompt-model.json"
    stamp = marker.stat().st_mtime_ns
    assert resolve_model_dir("default") == path
    assert marker.stat().st_mtime_ns == stamp  # not reconverted
    lm = FrozenLM.load("default")
    info = lm.info
    assert (info.architecture, info.hidden_size, info.num_layers, info.num_kv_heads, info.head_dim, info.vocab_size) == ("llama", 576, 30, 3, 64, 49152)
    ids = lm.encode("Tweet: hello")
    assert ids[0] != lm.tokenizer.bos_token_id == 1  # the GGUF says add_bos_token = false
    assert lm.encode(" negative") == [3524] and lm.encode(" positive") == [2731]
    assert default_gguf_path().stat().st_size > 50_000_000


@pytest.mark.slow
def test_default_model_trains_folds_and_evaluates(tmp_path):
    """A few real steps on SmolLM2: the folded task from the bank scores as the live module did."""
    from edgeprompt.core.bank import PromptBank
    from edgeprompt.core.data import load_tweets
    from edgeprompt.methods.prefix_tuning import PrefixTuningConfig
    from edgeprompt.train.loop import TrainConfig
    from edgeprompt.train.scoring import evaluate
    from edgeprompt.train.workflows import task_kv, train_task

    lm = FrozenLM.load("default")
    data = load_tweets()
    data.dev, data.test = data.dev[:8], data.test[:16]
    bank = PromptBank(tmp_path / "bank")
    cfg = TrainConfig(steps=2, batch_size=2, eval_every=2, eval_examples=8)
    task, summary = train_task(
        lm, data, {"source": "tweets", "seed": 0}, "prefix_tuning", PrefixTuningConfig(num_virtual_tokens=4), cfg, bank, "t", progress=False
    )
    assert task.tensors()["kv_prefix"].shape == (30, 2, 3, 4, 64)
    assert summary["test"]["n"] == 16 and summary["zero_shot_test"]["n"] == 16
    with torch.no_grad():
        again = evaluate(lm, task_kv(lm, task), task.spec, data.test, 96)  # the task decides with its calibration
    assert again.accuracy == summary["test"]["accuracy"]
