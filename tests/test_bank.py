from __future__ import annotations

import json

import numpy as np
import pytest

from edgeprompt.core.bank import PromptBank
from edgeprompt.core.errors import EdgePromptError
from edgeprompt.core.files import atomic_directory, recover_directory
from edgeprompt.core.model_info import ModelInfo
from edgeprompt.core.tasks import TaskSpec

SPEC = TaskSpec(template="{text}\nLabel:", labels=["negative", "positive"])


def info(**kw) -> ModelInfo:
    base = dict(fingerprint="f" * 64, name="m", architecture="llama", hidden_size=32, num_layers=2, num_kv_heads=2, head_dim=8, vocab_size=300)
    base.update(kw)
    return ModelInfo(**base)


def emb(P=4, d=32):
    return {"prompt_embeddings": np.random.default_rng(0).standard_normal((P, d)).astype(np.float32)}


def test_add_list_show_remove(tmp_path):
    bank = PromptBank(tmp_path / "bank")
    t = bank.add("sent", "prompt", emb(), SPEC, info())
    kv = {"kv_prefix": np.zeros((2, 2, 2, 3, 8), np.float32)}
    bank.add("sent-prefix", "prefix_tuning", kv, SPEC, info())
    assert bank.names() == ["sent", "sent-prefix"]
    assert t.num_virtual_tokens == 4 and t.method == "prompt_tuning"
    assert bank.task("sent-prefix").num_virtual_tokens == 3
    m = json.loads((t.path / "manifest.json").read_text())
    for key in ("method", "num_virtual_tokens", "tensors", "template", "labels", "verbalizers", "base_model", "created"):
        assert key in m
    np.testing.assert_array_equal(bank.task("sent").tensors()["prompt_embeddings"], emb()["prompt_embeddings"])
    bank.remove("sent")
    assert bank.names() == ["sent-prefix"]
    with pytest.raises(EdgePromptError, match=r"no task 'sent'.*tasks: sent-prefix"):
        bank.task("sent")


def test_existing_task_needs_overwrite(tmp_path):
    bank = PromptBank(tmp_path)
    bank.add("a", "prompt", emb(), SPEC, info())
    with pytest.raises(EdgePromptError, match="--overwrite"):
        bank.add("a", "prompt", emb(), SPEC, info())
    bank.add("a", "prompt", emb(P=6), SPEC, info(), overwrite=True)
    assert bank.task("a").num_virtual_tokens == 6


@pytest.mark.parametrize(
    "other, pattern",
    [
        (dict(hidden_size=64), r"made for a model with hidden_size=32, but this model \(m\) has hidden_size=64"),
        (dict(num_layers=3), r"num_layers=2, but this model \(m\) has num_layers=3"),
        (dict(fingerprint="0" * 64), r"trained for base model ffff.*fingerprint 0000"),
    ],
)
def test_task_for_another_model_refused_naming_both(tmp_path, other, pattern):
    bank = PromptBank(tmp_path)
    bank.add("a", "prompt", emb(), SPEC, info())
    with pytest.raises(EdgePromptError, match=pattern):
        bank.check_model(info(**other))


def test_wrong_shapes_refused(tmp_path):
    bank = PromptBank(tmp_path)
    with pytest.raises(EdgePromptError, match=r"needs \[P, d=32\]"):
        bank.add("a", "prompt", emb(d=16), SPEC, info())
    with pytest.raises(EdgePromptError, match=r"kv_heads=2"):
        bank.add("b", "prefix", {"kv_prefix": np.zeros((2, 2, 4, 3, 8), np.float32)}, SPEC, info())


def test_corrupt_tensors_give_a_clear_error(tmp_path):
    bank = PromptBank(tmp_path)
    t = bank.add("a", "prompt", emb(), SPEC, info())
    (t.path / "prefix.safetensors").write_bytes(b"garbage")
    with pytest.raises(EdgePromptError, match="not a readable safetensors"):
        bank.task("a").tensors()


def test_bad_task_names(tmp_path):
    bank = PromptBank(tmp_path)
    for bad in ["", "../x", ".hidden", "a/b", "abc\n", "x" * 101, None]:
        with pytest.raises(EdgePromptError, match="not allowed"):
            bank.add(bad, "prompt", emb(), SPEC, info())


def test_crash_between_the_two_renames_is_recovered(tmp_path):
    """atomic_directory renames the old folder aside, then the new one in; a crash between leaves
    only the old one, which the next reader puts back."""
    bank = PromptBank(tmp_path)
    t = bank.add("a", "prompt", emb(), SPEC, info())
    aside = t.path.parent / ".a.old-12345678"
    t.path.rename(aside)  # the state right after the first rename
    (t.path.parent / ".a.tmp-87654321").mkdir()  # and a half-written new version
    assert bank.names() == ["a"]
    np.testing.assert_array_equal(bank.task("a").tensors()["prompt_embeddings"], emb()["prompt_embeddings"])
    assert not aside.exists()
    # A temporary may belong to a live writer: readers ignore it and never delete it.
    assert (t.path.parent / ".a.tmp-87654321").exists() and bank.names() == ["a"]


def test_failed_write_leaves_the_previous_version(tmp_path):
    d = tmp_path / "x"
    with atomic_directory(d) as tmp:
        (tmp / "f").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(d) as tmp:
            (tmp / "f").write_text("new")
            raise RuntimeError("disk full")
    recover_directory(d)
    assert (d / "f").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".edgeprompt.lock", "x"]


def test_bank_written_and_read_with_torch_unimportable(tmp_path):
    """The core (bank, data, tasks, methods' facts) works with torch, transformers and peft absent."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers', 'peft', 'onnx'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np\n"
        "from edgeprompt.core.bank import PromptBank\n"
        "from edgeprompt.core.methods import all_methods\n"
        "from edgeprompt.core.model_info import ModelInfo\n"
        "from edgeprompt.core.tasks import TaskSpec\n"
        "info = ModelInfo('f' * 64, 'm', 'llama', 32, 2, 2, 8, 320)\n"
        "spec = TaskSpec(labels=['a', 'b'])\n"
        f"bank = PromptBank({str(tmp_path)!r})\n"
        "bank.add('p', 'prompt', {'prompt_embeddings': np.ones((4, 32), np.float32)}, spec, info)\n"
        "bank.add('x', 'prefix', {'kv_prefix': np.ones((2, 2, 2, 3, 8), np.float32)}, spec, info)\n"
        "t = PromptBank(%r).task('x')\n"
        "print(all_methods(), t.method, t.num_virtual_tokens, t.tensors()['kv_prefix'].shape, 'torch' in sys.modules)\n"
    ) % str(tmp_path)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("]", 1)[1].split() == ["prefix_tuning", "3", "(2,", "2,", "2,", "3,", "8)", "False"]


def test_newest_renamed_aside_copy_is_the_one_restored(tmp_path):
    d = tmp_path / "x"
    for i, text in enumerate(["oldest", "newest"]):
        (tmp_path / f".x.old-{1000 + i}").mkdir()
        (tmp_path / f".x.old-{1000 + i}" / "f").write_text(text)
    recover_directory(d)
    assert (d / "f").read_text() == "newest" and not list(tmp_path.glob(".x.old-*"))


@pytest.mark.parametrize("fail_at", range(1, 4))
def test_overwrite_interrupted_at_every_write_keeps_the_old_task(tmp_path, monkeypatch, fail_at):
    """Fail the k-th file write of an overwrite (as a kill would): the old task stays whole."""
    import edgeprompt.core.files as eio

    bank = PromptBank(tmp_path)
    bank.add("a", "prompt", emb(P=4), SPEC, info())
    real, calls = eio.atomic_write_bytes, {"n": 0}

    def flaky(path, data):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise KeyboardInterrupt("killed")
        return real(path, data)

    monkeypatch.setattr(eio, "atomic_write_bytes", flaky)
    with pytest.raises(KeyboardInterrupt):
        bank.add("a", "prompt", emb(P=6), SPEC, info(), overwrite=True)
        if calls["n"] < fail_at:  # fewer writes than fail_at: nothing was interrupted
            raise KeyboardInterrupt
    monkeypatch.setattr(eio, "atomic_write_bytes", real)
    t = PromptBank(tmp_path).task("a")
    assert t.num_virtual_tokens in (4, 6) and t.tensors()["prompt_embeddings"].shape[0] == t.num_virtual_tokens
