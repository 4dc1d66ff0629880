"""The on-device runtime: parity with torch, task swaps, the prefix cache, threads, bad input, CLI (HTTP: test_server.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edgeprompt.core.constants import PARITY_FP32_MAX_ABS
from edgeprompt.core.errors import EdgePromptError

from .conftest import REPO, build_tiny_model, make_bank, run_cli

BACKENDS = [("onnx", "fp32"), ("gguf", "f32")]


@pytest.fixture(params=BACKENDS, ids=["onnx", "llamacpp"])
def fp32_bundle(request, bundle_of):
    return bundle_of(*request.param)


def test_runtime_imports_neither_torch_nor_transformers(bundle_of):
    for fmt, q in BACKENDS:
        code = (
            "import sys\n"
            "class Block:  # as if torch, transformers and peft were not installed at all\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'transformers', 'peft'):\n"
            "            raise ImportError('blocked: ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from edgeprompt.runtimes import open_bundle\n"
            f"rt = open_bundle({str(bundle_of(fmt, q))!r})\n"
            "print(rt.classify('pt', 'the day was good').label)\n"
            "print(repr(''.join(rt.generate('pt', 'the day', max_new_tokens=3))))\n"
            "bad = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
            "assert not bad, bad\n"
        )
        r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def test_runtime_matches_the_torch_reference(fp32_bundle):
    """On device, against the reference logits stored in the bundle: within 1e-3, same top-1 and labels."""
    from edgeprompt.runtimes import open_bundle

    with open_bundle(fp32_bundle) as rt:
        res = rt.check_parity()
    assert "pt" in res and "" in res
    for task, r in res.items():
        assert r.max_abs_logit_diff <= 1e-3 and r.top1_agreement == 1.0, (task, r)
        if r.label_agreement is not None:
            assert r.label_agreement == 1.0


def test_classify_equals_torch_scoring(bundle_of, tiny_tied_dir, tiny_bank):
    """Label log-probs of the runtime = the training library's label_logprobs, for both methods."""
    import torch

    from edgeprompt.core.bank import PromptBank
    from edgeprompt.core.data import Example
    from edgeprompt.runtimes import open_bundle
    from edgeprompt.train.batching import Encoder
    from edgeprompt.train.models import FrozenLM
    from edgeprompt.train.scoring import label_logprobs
    from edgeprompt.train.workflows import task_kv

    lm = FrozenLM.load(tiny_tied_dir)
    texts = ["the movie was good", "awful service today", "my day was fine and happy"]
    with open_bundle(bundle_of("onnx", "fp32")) as rt:
        for name in ("pt", "px"):
            task = PromptBank(tiny_bank).task(name)
            enc = Encoder(lm, task.spec, max_length=96)
            with torch.no_grad():
                ref = label_logprobs(lm, task_kv(lm, task), enc, [Example(t, "negative") for t in texts])
            got = np.array([[rt.classify(name, t).logprobs[lab] for lab in task.spec.labels] for t in texts])
            np.testing.assert_allclose(got, ref, atol=1e-3)


def test_plain_model_equals_stock_llama_cpp_on_the_same_file(bundle_of):
    llama_cpp = pytest.importorskip("llama_cpp")
    from edgeprompt.runtimes import open_bundle

    b = bundle_of("gguf", "q8_0")
    text = "the movie was really good today"
    T, ctx = 1, 512  # the same threads and context on both sides: llama.cpp runs the same kernels on the same splits
    with open_bundle(b, threads=T, n_ctx=ctx) as rt:
        ids = rt.encode(text)
        ours = rt.logits(None, text)
    llm = llama_cpp.Llama(model_path=str(b / "model/model.gguf"), n_ctx=ctx, n_threads=T, n_threads_batch=T, logits_all=False, verbose=False)
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids
    llm.eval(ids)
    stock = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy()
    np.testing.assert_array_equal(stock, ours)  # same file, machine, settings and one output row: bit for bit
    llm.close()


def test_greedy_generation_equals_torch(bundle_of, tiny_tied_dir, tiny_bank):
    import torch

    from edgeprompt.core.bank import PromptBank
    from edgeprompt.runtimes import open_bundle
    from edgeprompt.train.forward import full_logits
    from edgeprompt.train.models import FrozenLM
    from edgeprompt.train.workflows import task_kv

    lm = FrozenLM.load(tiny_tied_dir)
    task = PromptBank(tiny_bank).task("pt")
    kv = task_kv(lm, task)
    ids = task.spec.encode_input(lm.encode, "the food was")
    want, margins = [], []
    with torch.no_grad():
        for _ in range(8):
            x = torch.tensor([ids + want])
            logits = full_logits(lm, kv, x, torch.ones_like(x))[0, -1]
            top2 = logits.topk(2).values
            margins.append(float(top2[0] - top2[1]))
            want.append(int(logits.argmax()))
    # an fp32 export is within PARITY_FP32_MAX_ABS of torch per logit: a step whose top-2 margin is under
    # twice that could flip, so tokens are compared up to the first such step (on this model: all 8)
    sure = next((i for i, m in enumerate(margins) if m <= 2 * PARITY_FP32_MAX_ABS), len(margins))
    assert sure >= 4, margins
    with open_bundle(bundle_of("onnx", "fp32")) as rt:
        rt.eos_token_id = None  # compare all 8 steps even if EOS comes up
        pieces = list(rt.generate("pt", "the food was", max_new_tokens=8))
        assert "".join(pieces).startswith(rt.decode(want[:sure]))
        assert rt.generate("pt", "the food was", max_new_tokens=8, stream=False) == "".join(pieces)


def test_prefix_cache_cold_then_warm_and_lru(fp32_bundle):
    from edgeprompt.runtimes import open_bundle

    with open_bundle(fp32_bundle) as rt:
        cold = rt.logits("pt", "nice day")
        s = rt.cache.stats
        assert (s.misses, s.hits, s.entries) == (1, 0, 1)
        warm = rt.logits("pt", "nice day")
        assert (s.misses, s.hits) == (1, 1)
        np.testing.assert_array_equal(cold, warm)
        one = s.bytes
        assert one > 0
    # a budget of one entry: the least recently used task is evicted
    with open_bundle(fp32_bundle, cache_mb=1.5 * one / 2**20) as rt:
        tasks = rt.tasks
        rt.logits("pt", "x")
        if "px" in tasks:
            rt.logits("px", "x")
            assert rt.cache.keys() == ["px"] and rt.cache.stats.evictions == 1
    # an entry larger than the whole budget is not kept, and the answer is the same
    with open_bundle(fp32_bundle, cache_mb=0.5 * one / 2**20) as rt:
        np.testing.assert_array_equal(rt.logits("pt", "nice day"), cold)
        assert rt.cache.keys() == []


def test_prefix_dir_turns_a_cold_prompt_tuning_swap_into_a_read(fp32_bundle, tmp_path, monkeypatch):
    """A computed prompt-tuning prefix is kept on disk; a second runtime reads it instead of prefilling,
    with the same logits; a file that is not a prefix of this model is refused, prefilled and replaced."""
    from edgeprompt.runtimes import open_bundle

    pdir = tmp_path / "prefixes"
    with open_bundle(fp32_bundle, threads=1, prefix_dir=pdir) as rt:
        first = rt.logits("pt", "nice day")
        rt.logits("px", "nice day")
    files = sorted(pdir.iterdir())
    assert len(files) == 1 and files[0].name.startswith("pt-")  # prompt tuning only: a KV prefix is read as it is
    prefills = []
    with open_bundle(fp32_bundle, threads=1, prefix_dir=pdir) as rt:
        with rt.backend.sequence(None) as s:
            seq_cls = type(s)
        real_feed = seq_cls.feed_embeds
        monkeypatch.setattr(seq_cls, "feed_embeds", lambda self, e: prefills.append(len(e)) or real_feed(self, e))
        np.testing.assert_array_equal(rt.logits("pt", "nice day"), first)  # same engine, same threads: exact
        assert prefills == []  # read from the disk cache, not prefilled
    files[0].write_bytes(b"\0" * 64)  # not a prefix of this model
    with pytest.warns(UserWarning, match="refused"):
        with open_bundle(fp32_bundle, threads=1, prefix_dir=pdir) as rt:
            np.testing.assert_array_equal(rt.logits("pt", "nice day"), first)
    assert prefills == [4]  # prefilled once (P=4) ...
    assert files[0].stat().st_size > 64  # ... and the file replaced by the real prefix


def test_threads_with_mixed_tasks_equal_sequential(fp32_bundle):
    from edgeprompt.runtimes import open_bundle

    texts = ["good food", "awful day", "the movie was fine", "sad and angry", "love it", "worst service"]
    with open_bundle(fp32_bundle) as rt:
        one = max(rt.prefix(t).nbytes for t in rt.tasks)
    with open_bundle(fp32_bundle, cache_mb=1.2 * one / 2**20) as rt:  # room for one prefix: misses and evictions under load
        tasks = rt.tasks + [None]
        reqs = [(tasks[i % len(tasks)], texts[i % len(texts)], i % 3 == 0) for i in range(24)]

        def run(req):
            task, text, gen = req
            if gen or task is None:
                return "".join(rt.generate(task, text, max_new_tokens=4))
            return rt.classify(task, text).logprobs

        seq = [run(r) for r in reqs]
        with ThreadPoolExecutor(max_workers=4) as ex:
            par = list(ex.map(run, reqs))
        if len(tasks) > 2:
            assert rt.cache.stats.evictions > 0
    assert par == seq


def test_llamacpp_streams_one_at_a_time_per_thread_and_may_end_elsewhere(bundle_of):
    from edgeprompt.runtimes import open_bundle

    with open_bundle(bundle_of("gguf", "f32")) as rt:
        rt.eos_token_id = None
        solo = list(rt.generate("pt", "the day", max_new_tokens=6))
        g1 = rt.generate("pt", "the day", max_new_tokens=6)
        first = next(g1)
        with pytest.raises(EdgePromptError, match="already has a llama.cpp request open"):
            next(rt.generate(None, "good", max_new_tokens=2))
        rest = []
        th = threading.Thread(target=lambda: rest.extend(g1))  # finished by another thread
        th.start()
        th.join(30)
        assert [first, *rest] == solo
        assert rt.classify("pt", "fine") is not None  # the lock was released


def test_stop_strings_never_leak(bundle_of):
    from edgeprompt.runtimes import open_bundle
    from edgeprompt.runtimes.sampling import partial_stop as _partial_stop

    assert _partial_stop("hello wor", ["world"]) == 3 and _partial_stop("hello", ["xyz"]) == 0
    with open_bundle(bundle_of("onnx", "fp32")) as rt:
        rt.eos_token_id = None
        full = rt.generate("pt", "the food was", max_new_tokens=12, stream=False)
        assert len(full) > 6
        stop = full[len(full) // 2 : len(full) // 2 + 3]  # spans token boundaries, most likely
        pieces = list(rt.generate("pt", "the food was", max_new_tokens=12, stop=["zzzz", stop]))
        assert "".join(pieces) == full[: full.index(stop)]


def test_add_task_to_a_running_runtime(bundle_of, tiny_tied_dir, tmp_path):
    from edgeprompt.runtimes import open_bundle

    other = make_bank(tmp_path / "bank2", tiny_tied_dir, tmp_path / "d.csv", seed=7, names=("new-pt", "new-px"))
    with open_bundle(bundle_of("onnx", "fp32")) as rt:
        engine = rt.backend.engine
        assert rt.add_task(other, name="new-pt") == "new-pt"
        assert rt.add_task(other / "tasks" / "new-px") == "new-px"
        assert {"new-pt", "new-px"} <= set(rt.tasks) and rt.backend.engine is engine  # no model reload
        a = rt.classify("new-pt", "good day")
        assert a.label in ("negative", "positive") and abs(sum(a.probabilities.values()) - 1) < 1e-9
    with open_bundle(bundle_of("onnx", "fp32")) as o, open_bundle(bundle_of("gguf", "f32")) as g:
        for rt in (o, g):
            rt.add_task(other, name="new-px")
        np.testing.assert_allclose(g.logits("new-px", "good day"), o.logits("new-px", "good day"), atol=1e-4)


def test_llamacpp_state_layout_surprise_is_refused_clearly(bundle_of):
    from edgeprompt.runtimes import open_bundle

    with open_bundle(bundle_of("gguf", "f32")) as rt:
        P = rt.store.get("px").num_virtual_tokens
        rt.backend.engine._templates[P] = b"\x00" * 64  # what another llama.cpp version might write
        with pytest.raises(EdgePromptError, match="sequence-state layout is not the one edgeprompt knows.*backend='onnx'"):
            rt.classify("px", "x")


def test_add_task_of_another_model_refused(bundle_of, tmp_path):
    from edgeprompt.runtimes import open_bundle

    m2 = build_tiny_model(tmp_path / "m2", tie=True, seed=3)
    other = make_bank(tmp_path / "bank", m2, tmp_path / "d.csv")
    with open_bundle(bundle_of("onnx", "fp32")) as rt:
        with pytest.raises(EdgePromptError, match="fingerprint"):
            rt.add_task(other, name="pt")


def test_bad_requests(fp32_bundle):
    from edgeprompt.runtimes import open_bundle

    with open_bundle(fp32_bundle, n_ctx=300) as rt:
        with pytest.raises(EdgePromptError, match=r"unknown task 'nope'; this runtime has: pt, px"):
            rt.classify("nope", "x")
        long = " ".join(["good"] * 2 * rt.n_ctx)
        assert len(rt.encode(long)) > rt.n_ctx
        with pytest.raises(EdgePromptError, match=f"exceeds the context of {rt.n_ctx}.*truncate"):
            rt.classify("pt", long)
        with pytest.raises(EdgePromptError, match=f"exceeds the context of {rt.n_ctx}"):
            rt.generate("pt", long, max_new_tokens=4)  # refused at the call, not at the first piece
        assert rt.classify("pt", long, truncate=True).label in ("negative", "positive")
        assert rt.n_ctx - 8 - 4 - 3 < len(rt.input_ids("pt", long, reserve=8, truncate=True)) + 4 + 8 <= rt.n_ctx  # cut to fit, not more
        assert isinstance(rt.generate("pt", long, max_new_tokens=4, truncate=True, stream=False), str)
        with pytest.raises(EdgePromptError, match="encodes to no tokens"):
            rt.logits(None, "")


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing"])
def test_damaged_model_file_refused_at_open_naming_it(bundle_of, tmp_path, damage):
    from edgeprompt.runtimes import open_bundle

    for fmt, q in BACKENDS:
        b = tmp_path / f"{fmt}-{damage}"
        shutil.copytree(bundle_of(fmt, q), b)
        f = b / ("model/decoder.onnx.data" if fmt == "onnx" else "model/model.gguf")
        data = bytearray(f.read_bytes())
        if damage == "flip":
            data[len(data) // 2] ^= 0xFF
            f.write_bytes(bytes(data))
        elif damage == "truncate":
            f.write_bytes(bytes(data[: len(data) // 2]))
        else:
            f.unlink()
        with pytest.raises(EdgePromptError, match=f.name):
            open_bundle(b)


@pytest.mark.parametrize("rel", ["bank/tasks/pt/prefix.safetensors", "model/embeddings.safetensors", "tokenizer.json", "bank/tasks/px/manifest.json"])
def test_damaged_bank_or_tokenizer_refused_at_open_or_first_use(bundle_of, tmp_path, rel):
    from edgeprompt.runtimes import open_bundle

    b = tmp_path / "b"
    shutil.copytree(bundle_of("onnx", "fp32"), b)
    f = b / rel
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    if rel.endswith("prefix.safetensors"):  # a task's tensors are hashed on first use, not at open (1,000 tasks open fast)
        with open_bundle(b) as rt, pytest.raises(EdgePromptError, match=rel):
            rt.classify("pt", "fine")
        return
    with pytest.raises(EdgePromptError, match=rel):
        open_bundle(b)


def test_manifest_that_does_not_list_the_model_is_refused(bundle_of, tmp_path):
    from edgeprompt.runtimes import open_bundle

    b = tmp_path / "b"
    shutil.copytree(bundle_of("onnx", "fp32"), b)
    m = json.loads((b / "manifest.json").read_text())
    del m["files"]["model/decoder.onnx.data"], m["files"]["model/decoder.onnx"]
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EdgePromptError, match="does not list model/decoder.onnx"):
        open_bundle(b)


def test_bundle_for_another_base_model_refused(bundle_of, tmp_path):
    from edgeprompt.runtimes import open_bundle

    b = tmp_path / "b"
    shutil.copytree(bundle_of("onnx", "fp32"), b)
    m = json.loads((b / "manifest.json").read_text())
    m["base_model"]["fingerprint"] = "0" * 64
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EdgePromptError, match="fingerprint 0000000000000000"):
        open_bundle(b)


def test_cli_run_classifies_and_generates(bundle_of, env):
    b = str(bundle_of("onnx", "fp32"))
    r = run_cli(["run", b, "--task", "pt", "the movie was good", "--json"], env=env)
    out = json.loads(r.stdout)
    assert out["label"] in ("negative", "positive") and set(out["probabilities"]) == {"negative", "positive"}
    r = run_cli(["run", b, "--task", "pt", "the movie was good"], env=env)
    assert r.stdout.split("\t")[0] == out["label"]
    r = run_cli(["run", b, "the movie", "--max-new-tokens", "3"], env=env)
    assert r.returncode == 0
    r = run_cli(["run", b, "--task", "zzz", "x"], env=env, check=False)
    assert r.returncode == 2 and "this runtime has: pt, px" in r.stderr
    r = run_cli(["verify", b], env=env)
    assert "parity ok" in r.stdout and "ok   pt:" in r.stdout
