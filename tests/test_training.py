from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from edgeprompt.core.bank import PromptBank
from edgeprompt.core.data import load_file
from edgeprompt.methods.prefix_tuning import PrefixTuningConfig
from edgeprompt.methods.prompt_tuning import PromptTuningConfig
from edgeprompt.train.batching import Encoder, collate
from edgeprompt.train.loop import TrainConfig, batch_indices, loss_on_batch, train

from .conftest import REPO


@pytest.mark.parametrize(
    "method, cfg",
    [("prompt_tuning", PromptTuningConfig(num_virtual_tokens=4)), ("prefix_tuning", PrefixTuningConfig(num_virtual_tokens=4, encoder_hidden_size=16))],
)
def test_training_lowers_the_loss_and_keeps_the_model_frozen(tiny_lm, tiny_csv, method, cfg):
    data = load_file(tiny_csv)
    before = {k: v.clone() for k, v in tiny_lm.model.state_dict().items()}
    enc = Encoder(tiny_lm, data.spec, 64)
    batch = collate([enc.example(ex) for ex in data.train[:16]], tiny_lm.pad_token_id)
    tc = TrainConfig(steps=30, batch_size=8, lr=0.05, eval_every=15, eval_examples=8, warmup_steps=2)
    res = train(tiny_lm, data, method, cfg, tc, progress=False)
    from edgeprompt.core.methods import get_method

    start = get_method(method).trainer().module_cls(cfg, tiny_lm, init_text=data.spec.instruction, seed=0)
    with torch.no_grad():
        assert loss_on_batch(tiny_lm, res.module, batch) < loss_on_batch(tiny_lm, start, batch)
    after = tiny_lm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [h["step"] for h in res.history] == [15, 30]


def test_batch_order_is_a_function_of_seed_and_step():
    a = [batch_indices(10, 4, 7, s).tolist() for s in range(6)]
    assert a == [batch_indices(10, 4, 7, s).tolist() for s in range(6)]
    flat = sum(a[:5], [])  # 20 draws = 2 epochs, each a permutation
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))


@pytest.mark.parametrize("encoder", ["model+mlp", "mlp"])
def test_prefix_text_init_starts_at_the_instruction(tiny_lm, encoder):
    """init=text with the zero output layer starts exactly at the instruction's KV (both encoders)."""
    from edgeprompt.methods.prefix_tuning.model import PrefixTuningModule
    from edgeprompt.methods.prompt_tuning.model import init_token_ids
    from edgeprompt.train.forward import kv_from_embeddings, kv_to_tensor

    text = "Label the text as negative, positive."
    m = PrefixTuningModule(PrefixTuningConfig(num_virtual_tokens=6, encoder=encoder), tiny_lm, init_text=text)
    ids = init_token_ids(tiny_lm.encode(text), 6)
    with torch.no_grad():
        want = kv_to_tensor(kv_from_embeddings(tiny_lm, tiny_lm.embeddings[ids]))
        got = kv_to_tensor(m.kv(tiny_lm))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def _train_args(model, bank, csv, name, steps=24):
    return [
        "train",
        "--model",
        str(model),
        "--bank",
        str(bank),
        "--data",
        str(csv),
        "--name",
        name,
        "--steps",
        str(steps),
        "--batch-size",
        "4",
        "--lr",
        "0.05",
        "-P",
        "3",
        "--eval-every",
        "8",
        "--checkpoint-every",
        "1",
        "--max-length",
        "48",
        "--quiet",
        "--threads",
        "1",
    ]


def _run_training(args, env):
    return subprocess.run([sys.executable, "-m", "edgeprompt", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_ctrl_c_then_resume_equals_an_uninterrupted_run(tiny_model_dir, tiny_csv, tmp_path, env):
    ref_bank, bank = tmp_path / "ref", tmp_path / "bank"
    steps = 150  # the interrupt comes after the first checkpoint, long before the last step
    r = _run_training(_train_args(tiny_model_dir, ref_bank, tiny_csv, "t", steps), env)
    assert r.returncode == 0, r.stderr
    p = subprocess.Popen(
        [sys.executable, "-m", "edgeprompt", *_train_args(tiny_model_dir, bank, tiny_csv, "t", steps)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    state = bank / ".checkpoints" / "t" / "state.json"
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert p.poll() is None, "training ended before it could be interrupted"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 130, err
    assert "--resume" in err and not (bank / "tasks" / "t").exists()
    # Without --resume, the checkpoint is not silently thrown away.
    r = _run_training(_train_args(tiny_model_dir, bank, tiny_csv, "t", steps), env)
    assert r.returncode == 2 and "--resume" in r.stderr
    r = _run_training(_train_args(tiny_model_dir, bank, tiny_csv, "t", steps) + ["--resume"], env)
    assert r.returncode == 0, r.stderr
    ref_m, m = PromptBank(ref_bank).task("t").manifest, PromptBank(bank).task("t").manifest
    strip = lambda h: [{k: v for k, v in e.items() if k != "wall_s"} for e in h]  # noqa: E731
    assert strip(ref_m["training"]["history"]) == strip(m["training"]["history"])  # losses and dev metrics too
    a = PromptBank(ref_bank).task("t").tensors()["prompt_embeddings"]
    b = PromptBank(bank).task("t").tensors()["prompt_embeddings"]
    np.testing.assert_array_equal(a, b)
    assert not (bank / ".checkpoints" / "t").exists()


def test_resume_with_other_settings_is_refused(tiny_model_dir, tiny_csv, tmp_path, env):
    bank = tmp_path / "bank"
    args = _train_args(tiny_model_dir, bank, tiny_csv, "t", steps=400)
    p = subprocess.Popen([sys.executable, "-m", "edgeprompt", *args], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = bank / ".checkpoints" / "t" / "state.json"
    deadline = time.time() + 300
    while not state.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=300)
    args[args.index("--lr") + 1] = "0.01"
    r = _run_training(args + ["--resume"], env)
    assert r.returncode == 2 and "train_config" in r.stderr and "same settings" in r.stderr


def test_a_checkpoint_from_before_a_setting_existed_resumes_and_a_changed_setting_is_refused(tiny_lm, tiny_csv, tmp_path):
    """A checkpoint whose train_config lacks a later setting (``objective``) resumes as it trained; one that names
    another value of it is refused like any changed setting."""
    import json

    from edgeprompt.core.errors import EdgePromptError

    data = load_file(tiny_csv, dev=10, test=10)
    ckpt = tmp_path / "ckpt"
    cfg = TrainConfig(steps=2, eval_every=1, checkpoint_every=1)
    first = train(tiny_lm, data, "prompt_tuning", PromptTuningConfig(num_virtual_tokens=2), cfg, checkpoint_dir=ckpt, progress=False)
    state = json.loads((ckpt / "state.json").read_text())
    assert state["train_config"]["objective"] == "vocab"
    del state["train_config"]["objective"]  # as written before the setting existed
    (ckpt / "state.json").write_text(json.dumps(state))
    res = train(tiny_lm, data, "prompt_tuning", PromptTuningConfig(num_virtual_tokens=2), cfg, checkpoint_dir=ckpt, resume=True, progress=False)
    assert res.steps == 2 and res.history == first.history  # the run as checkpointed, nothing retrained
    state = json.loads((ckpt / "state.json").read_text())
    state["train_config"]["objective"] = "labels"
    (ckpt / "state.json").write_text(json.dumps(state))
    with pytest.raises(EdgePromptError, match="train_config"):
        train(tiny_lm, data, "prompt_tuning", PromptTuningConfig(num_virtual_tokens=2), cfg, checkpoint_dir=ckpt, resume=True, progress=False)


def test_kill_9_mid_write_leaves_the_bank_and_checkpoint_readable(tiny_model_dir, tiny_csv, tmp_path, env):
    """SIGKILL at several moments while a run writes checkpoints every step and then the bank."""
    bank_dir = tmp_path / "bank"
    r = _run_training(_train_args(tiny_model_dir, bank_dir, tiny_csv, "keep", steps=4), env)
    assert r.returncode == 0, r.stderr
    kept = PromptBank(bank_dir).task("keep").tensors()["prompt_embeddings"].copy()
    for i, delay in enumerate([0.02, 0.11, 0.23, 0.37]):
        args = _train_args(tiny_model_dir, bank_dir, tiny_csv, "keep", steps=60) + ["--overwrite"]
        p = subprocess.Popen([sys.executable, "-m", "edgeprompt", *args], env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ckpt = bank_dir / ".checkpoints" / "keep"
        while not ckpt.exists() and p.poll() is None:
            time.sleep(0.005)
        time.sleep(delay)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        bank = PromptBank(bank_dir)
        assert bank.names() == ["keep"]
        np.testing.assert_array_equal(bank.task("keep").tensors()["prompt_embeddings"], kept)
        # The checkpoint survived whole (possibly renamed aside mid-swap: the library recovers it).
        from edgeprompt.core.files import read_json, read_safetensors, recover_directory

        recover_directory(ckpt)
        assert read_json(ckpt / "state.json", "state")["step"] >= 1
        assert read_safetensors(ckpt / "tensors.safetensors", "ckpt")
        import shutil

        shutil.rmtree(ckpt)
    # And a killed run resumes through the CLI.
    p = subprocess.Popen(
        [sys.executable, "-m", "edgeprompt", *_train_args(tiny_model_dir, bank_dir, tiny_csv, "new", steps=60)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while not (bank_dir / ".checkpoints" / "new").exists() and p.poll() is None:
        time.sleep(0.005)
    time.sleep(0.1)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    r = _run_training(_train_args(tiny_model_dir, bank_dir, tiny_csv, "new", steps=60) + ["--resume"], env)
    assert r.returncode == 0, r.stderr
    assert PromptBank(bank_dir).names() == ["keep", "new"]


def test_without_dev_data_the_final_state_is_kept(tiny_lm, tiny_csv):
    data = load_file(tiny_csv)
    data.dev = []
    cfg = PromptTuningConfig(num_virtual_tokens=2)
    res = train(tiny_lm, data, "prompt_tuning", cfg, TrainConfig(steps=3, batch_size=4, lr=0.1, warmup_steps=1), progress=False)
    from edgeprompt.methods.prompt_tuning.model import PromptTuningModule

    start = PromptTuningModule(cfg, tiny_lm, init_text=data.spec.instruction)
    assert res.best_step == -1 and not torch.equal(res.module.prompt, start.prompt)


def test_configs_check_themselves():
    from edgeprompt.core.errors import EdgePromptError

    with pytest.raises(EdgePromptError, match="num_virtual_tokens=0"):
        PromptTuningConfig(num_virtual_tokens=0)
    with pytest.raises(EdgePromptError, match=r"init 'vocab' is not one of \['text', 'random'\]"):
        PrefixTuningConfig(init="vocab")
    with pytest.raises(EdgePromptError, match="lr=-1"):
        TrainConfig(lr=-1)
    assert PrefixTuningConfig(num_virtual_tokens=3).to_dict() == {
        "num_virtual_tokens": 3,
        "init_text": None,
        "init": "text",
        "projection": True,
        "encoder_hidden_size": 512,
        "encoder": "model+mlp",
        "mlp_lr_ratio": 1e-3,
    }
    with pytest.raises(EdgePromptError, match="prefix encoder 'lstm'"):
        PrefixTuningConfig(encoder="lstm")


def test_model_mlp_encoder_gives_the_mlp_its_own_learning_rate(tiny_lm):
    from edgeprompt.methods.prefix_tuning.model import PrefixTuningModule

    m = PrefixTuningModule(PrefixTuningConfig(num_virtual_tokens=2, mlp_lr_ratio=0.05), tiny_lm, init_text="good day")
    groups = m.param_groups(0.2)
    assert [g["lr"] for g in groups] == [0.2, pytest.approx(0.01)]
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in m.parameters())
    assert not any(p is q for p in m.parameters() for q in tiny_lm.model.parameters())  # the frozen model is not ours
