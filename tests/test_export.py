"""`edgeprompt export`: bundles, quantization, the parity gate, virtual tokens, faults."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgeprompt.core.constants import PARITY_FP32_MAX_ABS
from edgeprompt.core.errors import EdgePromptError
from edgeprompt.core.files import file_sha256

from .conftest import REPO, agree_over_margin, build_tiny_model, run_cli


def _no_tmp_left(parent: Path, name: str) -> bool:
    return not any(p.name.startswith(f".{name}.tmp-") for p in parent.iterdir())


@pytest.mark.parametrize("fmt,quant", [("onnx", "fp32"), ("gguf", "f32")])
def test_full_precision_export_matches_torch_for_prompt_and_prefix_tasks(bundle_of, fmt, quant):
    m = json.loads((bundle_of(fmt, quant) / "manifest.json").read_text())
    par = m["parity"]
    assert par[""]["probes"] == 6 and par[""]["max_abs_logit_diff"] <= PARITY_FP32_MAX_ABS
    assert par["pt"]["max_abs_logit_diff"] <= PARITY_FP32_MAX_ABS and par["pt"]["top1_agreement"] == 1.0
    assert par["pt"]["accuracy_reference"] == par["pt"]["accuracy_export"]
    # prefix tuning: past key/values on ONNX, a KV written into a llama.cpp sequence-state blob
    assert par["px"]["max_abs_logit_diff"] <= PARITY_FP32_MAX_ABS and par["px"]["top1_agreement"] == 1.0


@pytest.mark.parametrize("fmt,quant", [("onnx", "int8"), ("gguf", "q8_0")])
def test_8bit_exports_keep_top1_where_the_margin_allows(bundle_of, fmt, quant):
    from edgeprompt.core.bundle import Bundle
    from edgeprompt.runtimes import open_bundle

    b = bundle_of(fmt, quant)
    m = json.loads((b / "manifest.json").read_text())
    probes, ref = Bundle.open(b).probes()
    with open_bundle(b, threads=1) as rt:
        cand = np.stack([rt.logits(p.task or None, p.text) for p in probes])
    # 8-bit blocks of weights and (both backends) activations: each of the 7L+1 quantized matmuls adds ~2**-8
    # of its block's max, in quadrature, times the largest logit. An estimate, not a bound, so the figure is
    # asserted within 4 x est, and top-1 only where the reference leads by more than 2 x est.
    L = m["base_model"]["num_layers"]
    est = np.sqrt(7 * L + 1) * 2.0**-8 * float(np.abs(ref).max())
    d = float(np.abs(cand - ref).max())
    print(f"{fmt} {quant}: max|dlogit| {d:.3g}, 8-bit estimate {est:.3g}")
    assert 0 < d < 4 * est, (d, est)  # quantized: not equal, but close
    assert agree_over_margin(ref, cand, 2 * est) >= len(probes) // 2  # most probes are decided, and agree
    types = m["model"]["tensor_types"]
    assert ("MatMulNBits" in types) if fmt == "onnx" else ("Q8_0" in types)


def test_manifest_records_files_tools_forms_and_types(bundle_of):
    b = bundle_of("onnx", "fp32", with_kv=True)
    m = json.loads((b / "manifest.json").read_text())
    assert m["format"] == "edgeprompt.bundle" and m["model"]["format"] == "onnx" and m["model"]["quant"] == "fp32"
    for rel, rec in m["files"].items():
        assert file_sha256(b / rel) == rec["sha256"] and (b / rel).stat().st_size == rec["bytes"]
    assert {"model/decoder.onnx", "model/decoder.onnx.data", "model/embeddings.safetensors", "tokenizer.json"} <= set(m["files"])
    assert {"torch", "onnx", "onnxruntime", "edgeprompt"} <= set(m["tools"])
    forms = m["tasks"]["pt"]["forms"]
    assert forms["embeddings"]["bytes"] == 4 * 32 * 4  # P=4, d=32, float32
    kv_file = (b / forms["kv_prefix"]["file"]).stat().st_size
    assert forms["kv_prefix"]["bytes"] == kv_file >= 2 * 2 * 2 * 4 * 8 * 4  # L, k/v, h, P, hd, float32 + safetensors header
    assert "kv_prefix" in m["tasks"]["px"]["forms"]
    assert not any(p.name.startswith(".") for p in b.rglob("*"))  # no scratch left inside


def test_bad_format_or_quant_refused_before_any_work(tmp_path):
    from edgeprompt.export.writer import ExportConfig

    with pytest.raises(EdgePromptError, match="choose onnx or gguf"):
        ExportConfig(format="tflite")
    with pytest.raises(EdgePromptError, match=r"fp32, int8, int4"):
        ExportConfig(format="onnx", quant="q4_0")
    with pytest.raises(EdgePromptError, match=r"f16, q8_0, q4_0, q4_k_m"):
        ExportConfig(format="gguf", quant="int4")
    with pytest.raises(EdgePromptError, match="--format gguf"):
        ExportConfig(format="onnx", virtual_tokens=True)


def test_unsupported_architecture_refused_before_any_work(tmp_path, tiny_bank):
    from edgeprompt.export.writer import export_bundle

    d = tmp_path / "gpt2"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    t = time.perf_counter()
    with pytest.raises(EdgePromptError, match="llama, mistral, qwen2, qwen3"):
        export_bundle(tmp_path / "out", bank=tiny_bank, model=d, log=lambda s: None)
    assert time.perf_counter() - t < 5 and not (tmp_path / "out").exists()


def test_bank_of_another_base_model_refused_naming_both(tmp_path, tiny_bank):
    from edgeprompt.export.writer import export_bundle
    from edgeprompt.train.models import FrozenLM

    other = build_tiny_model(tmp_path / "other", tie=True, seed=1)
    fp_other = FrozenLM.load(other).info.fingerprint[:16]
    fp_bank = json.loads((tiny_bank / "bank.json").read_text())["base_model"]["fingerprint"][:16]
    with pytest.raises(EdgePromptError) as e:
        export_bundle(tmp_path / "out", bank=tiny_bank, model=other, log=lambda s: None)
    assert fp_other in str(e.value) and fp_bank in str(e.value)
    assert not (tmp_path / "out").exists()


def test_failed_export_leaves_no_bundle_and_keeps_the_old_one(tmp_path, tiny_tied_dir, tiny_bank):
    from edgeprompt.export.writer import ExportConfig, export_bundle

    cfg = ExportConfig(format="gguf", quant="f32", probes_per_task=2)
    out = tmp_path / "b"
    for stage in ("model", "parity"):
        with pytest.raises(EdgePromptError, match="simulated"):
            export_bundle(out, bank=tiny_bank, model=tiny_tied_dir, config=cfg, log=lambda s: None, _fail_after=stage)
        assert not out.exists() and _no_tmp_left(tmp_path, "b")
    export_bundle(out, bank=tiny_bank, model=tiny_tied_dir, config=cfg, log=lambda s: None)
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(EdgePromptError, match="simulated"):
        export_bundle(out, bank=tiny_bank, model=tiny_tied_dir, config=cfg, overwrite=True, log=lambda s: None, _fail_after="parity")
    assert (out / "manifest.json").read_bytes() == before and _no_tmp_left(tmp_path, "b")
    with pytest.raises(EdgePromptError, match="--overwrite"):
        export_bundle(out, bank=tiny_bank, model=tiny_tied_dir, config=cfg, log=lambda s: None)


def test_disk_full_during_export_leaves_nothing(tmp_path, tiny_tied_dir, tiny_bank, monkeypatch):
    import errno

    import edgeprompt.export.writer as B

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(a[0]))

    monkeypatch.setattr(B, "atomic_write_safetensors", full)
    with pytest.raises(OSError):
        B.export_bundle(tmp_path / "b", bank=tiny_bank, model=tiny_tied_dir, config=B.ExportConfig(format="gguf", quant="f32"), log=lambda s: None)
    assert not (tmp_path / "b").exists() and _no_tmp_left(tmp_path, "b")


def test_killed_export_leaves_no_bundle(tmp_path, tiny_tied_dir, tiny_bank, env):
    out = tmp_path / "b"
    p = subprocess.Popen(
        [sys.executable, "-m", "edgeprompt", "export", "--model", str(tiny_tied_dir), "--bank", str(tiny_bank), "--format", "onnx", "-o", str(out)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in p.stdout:  # kill it in the middle of the ONNX export
        if "exporting" in line:
            time.sleep(1.0)
            p.send_signal(signal.SIGKILL)
            break
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL
    assert not out.exists()
    # the next export into the same place removes what the killed one left behind
    run_cli(["export", "--model", str(tiny_tied_dir), "--bank", str(tiny_bank), "--format", "gguf", "--quant", "f32", "-o", str(out), "--probes", "1"], env=env)
    assert out.exists() and _no_tmp_left(tmp_path, "b") and not list(tmp_path.glob(".b.tmp-*.lock"))


def test_overwrite_replaces_only_bundles(tmp_path, tiny_tied_dir, tiny_bank):
    from edgeprompt.export.writer import export_bundle

    precious = tmp_path / "docs"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    with pytest.raises(EdgePromptError, match="not an edgeprompt bundle"):
        export_bundle(precious, bank=tiny_bank, model=tiny_tied_dir, overwrite=True, log=lambda s: None)
    assert (precious / "thesis.txt").read_text() == "years of work"


def test_fp32_gate_fails_a_wrong_export(tmp_path, tiny_tied_dir, tiny_bank, monkeypatch):
    """An 'fp32' export whose graph is really int4 differs by more than 1e-3: refused, nothing written."""
    import edgeprompt.export.onnx.quant as Q

    real = Q.quantize
    monkeypatch.setattr(Q, "quantize", lambda src, dst, quant, exclude=None, accuracy_level=4: real(src, dst, "int4"))
    from edgeprompt.export.writer import ExportConfig, export_bundle

    with pytest.raises(EdgePromptError, match="differ from the torch reference by more than 0.001"):
        export_bundle(tmp_path / "b", bank=tiny_bank, model=tiny_tied_dir, config=ExportConfig(format="onnx", quant="fp32"), log=lambda s: None)
    assert not (tmp_path / "b").exists()


def test_shipped_kv_prefix_equals_prefill(bundle_of):
    from edgeprompt.runtimes import open_bundle

    for fmt, q in (("onnx", "fp32"), ("gguf", "f32")):
        b = bundle_of(fmt, q, with_kv=True)
        m = json.loads((b / "manifest.json").read_text())
        assert ("kv_prefix" if fmt == "onnx" else "llama_state") in m["tasks"]["pt"]["forms"]
        with open_bundle(b) as rt:
            shipped = rt.logits("pt", "the food was great")
            assert rt.store.get("pt").shipped is not None
            rt.store.get("pt").shipped = None
            rt.cache.drop("pt")
            prefilled = rt.logits("pt", "the food was great")
        np.testing.assert_allclose(shipped, prefilled, atol=1e-5)


def test_virtual_tokens_run_on_stock_llama_cpp(bundle_of):
    """Prepending the task's virtual token ids in stock llama_cpp.Llama = our runtime's soft prompt."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from edgeprompt.runtimes import open_bundle

    b = bundle_of("gguf", "f32", virtual_tokens=True)
    m = json.loads((b / "manifest.json").read_text())
    ids = m["model"]["virtual_tokens"]["pt"]
    assert len(ids) == 4 and m["model"]["logit_mask"] == ids + m["model"]["virtual_tokens"].get("px", [])
    with open_bundle(b) as rt:
        text_ids = rt.input_ids("pt", "the day was awful")
        ours = rt.logits("pt", "the day was awful")
    llm = llama_cpp.Llama(model_path=str(b / "model/model.gguf"), n_ctx=128, n_threads=1, logits_all=True, verbose=False, type_k=0, type_v=0)
    llm.eval(ids + text_ids)
    stock = np.array(llm.scores[llm.n_tokens - 1])
    np.testing.assert_allclose(stock[: ours.shape[0]], ours, atol=1e-3)
    assert np.all(stock[ids] == 0.0)  # virtual ids have zero output rows: logit exactly 0
    llm.close()
    vt = m["parity"]["pt#virtual_tokens"]  # the export checked the id path against torch too
    assert vt["max_abs_logit_diff"] <= 1e-3 and vt["top1_agreement"] == 1.0


def test_cli_export_prints_parity_and_types(tmp_path, tiny_tied_dir, tiny_bank, env):
    r = run_cli(
        [
            "export",
            "--model",
            str(tiny_tied_dir),
            "--bank",
            str(tiny_bank),
            "--format",
            "gguf",
            "--quant",
            "q4_k_m",
            "-o",
            str(tmp_path / "b"),
            "--probes",
            "3",
        ],
        env=env,
    )
    assert "parity pt: max |dlogit|" in r.stdout and "tensor types written" in r.stdout
    assert "Q8_0" in r.stdout or "Q5_0" in r.stdout or "Q4_0" in r.stdout  # d=32: k-quants fall back, recorded
    r = run_cli(
        ["export", "--model", str(tiny_tied_dir), "--bank", str(tiny_bank), "--format", "gguf", "--quant", "q3", "-o", str(tmp_path / "c")],
        env=env,
        check=False,
    )
    assert r.returncode == 2 and "q4_k_m" in r.stderr and not (tmp_path / "c").exists()


def test_parity_compare_counts_disagreements():
    from edgeprompt.core.parity import Probe, compare

    ref = np.array([[0.0, 1.0, 2.0], [0.0, 3.0, 1.0]])
    cand = np.array([[0.0, 1.0, 2.5], [0.0, 1.0, 3.0]])
    r = compare(ref, cand, [Probe("t", "a", "y"), Probe("t", "b", "x")], {"t": (["x", "y"], [1, 2])}, max_abs=1e-3)["t"]
    assert r.max_abs_logit_diff == 2.0 and r.top1_agreement == 0.5 and r.label_agreement == 0.5
    assert r.accuracy_reference == 1.0 and r.accuracy_export == 0.5 and r.passed is False


def test_against_f32_bundle_reproduces_the_model_and_q8_matches_llama_cpp(bundle_of, tiny_tied_dir):
    """Dequantized GGUF weights back in torch: the f32 bundle gives the model itself; the q8_0 bundle
    gives logits close to llama.cpp running that bundle (llama.cpp also rounds activations)."""
    import torch

    from edgeprompt.export.gguf.against import load_against
    from edgeprompt.runtimes import open_bundle
    from edgeprompt.train.models import FrozenLM

    base = FrozenLM.load(tiny_tied_dir)
    x = torch.tensor([base.encode("the movie was really good")])
    with torch.no_grad():
        want = base.model(x).logits[0, -1].numpy()
    lm = FrozenLM.load(tiny_tied_dir)
    rec = load_against(lm, bundle_of("gguf", "f32"))
    assert rec["quant"] == "f32" and lm.info == base.info
    with torch.no_grad():
        np.testing.assert_allclose(lm.model(x).logits[0, -1].numpy(), want, atol=1e-6)
    lm = FrozenLM.load(tiny_tied_dir)
    load_against(lm, bundle_of("gguf", "q8_0"))
    with torch.no_grad():
        got = lm.model(x).logits[0, -1].numpy()
    with open_bundle(bundle_of("gguf", "q8_0")) as rt:
        deployed = rt.logits(None, "the movie was really good")
    rms = lambda d: float(np.sqrt(np.mean(d**2)))  # noqa: E731  (over the whole vocabulary: one outlier logit decides nothing)
    assert rms(got - want) > 1e-4  # the weights did change
    assert rms(got - deployed) < rms(want - deployed)  # closer to what runs on device


def test_against_refuses_onnx_bundles(bundle_of, tiny_tied_dir):
    from edgeprompt.export.gguf.against import load_against
    from edgeprompt.train.models import FrozenLM

    with pytest.raises(EdgePromptError, match="--format gguf"):
        load_against(FrozenLM.load(tiny_tied_dir), bundle_of("onnx", "fp32"))


def test_cli_train_against_a_bundle_records_it(bundle_of, tiny_tied_dir, tiny_csv, tmp_path, env):
    b = bundle_of("gguf", "q4_0")
    bank = tmp_path / "bank"
    run_cli(
        [
            "train",
            "--model",
            str(tiny_tied_dir),
            "--bank",
            str(bank),
            "--data",
            str(tiny_csv),
            "--name",
            "qa",
            "--steps",
            "3",
            "--batch-size",
            "4",
            "-P",
            "2",
            "--max-length",
            "48",
            "--quiet",
            "--no-test",
            "--against",
            str(b),
        ],
        env,
    )
    man = json.loads((bank / "tasks" / "qa" / "manifest.json").read_text())
    assert man["trained_against"]["quant"] == "q4_0" and man["trained_against"]["model_sha256"] == file_sha256(b / "model/model.gguf")


def test_int8_embedding_table_keeps_a_q8_0_table_bit_for_bit():
    """A GGUF's Q8_0 ``token_embd`` (x = d·q, d fp16, each block's max |q| = 127), dequantized as transformers
    does, is stored as its own q and d again: the phone's int8 table is exactly the table llama.cpp reads."""
    from edgeprompt.core.constants import TENSOR_EMBEDDINGS, TENSOR_EMBEDDINGS_SCALE
    from edgeprompt.export.writer import embedding_table

    rng = np.random.default_rng(0)
    V, d = 257, 96
    q = rng.integers(-127, 128, size=(V, d // 32, 32)).astype(np.int8)
    q[:, :, 0] = rng.choice([-127, 127], size=(V, d // 32))  # ggml's Q8_0: d = max|x| / 127, so a ±127 per block
    dd = rng.uniform(1e-4, 2e-2, size=(V, d // 32)).astype(np.float16)
    x = (q.astype(np.float32) * dd.astype(np.float32)[:, :, None]).reshape(V, d)
    t = embedding_table(x, "int8")
    assert t[TENSOR_EMBEDDINGS_SCALE].shape == (V, d // 32)
    assert np.array_equal(t[TENSOR_EMBEDDINGS], q.reshape(V, d)) and np.array_equal(t[TENSOR_EMBEDDINGS_SCALE], dd.astype(np.float32))
    back = (t[TENSOR_EMBEDDINGS].reshape(V, d // 32, 32) * t[TENSOR_EMBEDDINGS_SCALE][:, :, None]).reshape(V, d)
    assert np.array_equal(back, x)


@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_smaller_embedding_tables_read_back_within_their_rounding(bundle_of, dtype):
    """`--embeddings fp16|int8` (issue 12: the phone's download): the table shrinks 2x or ~4x, each row reads back
    within its format's rounding (fp16: half an ulp, 2^-11 of the value; int8: half a step of its block of 32,
    the step itself rounded to fp16: scale/2 * (1 + 2^-11)), and the parity gate records what it costs instead of
    holding it to the fp32 bound."""
    from edgeprompt.core.constants import ModelKeys
    from edgeprompt.export.writer import ExportConfig
    from edgeprompt.runtimes import open_bundle

    full, small = bundle_of("onnx", "fp32"), bundle_of("onnx", "fp32", embeddings=dtype)
    m = json.loads((small / "manifest.json").read_text())
    assert m["model"][ModelKeys.EMBEDDINGS_DTYPE] == dtype
    size = (small / "model" / "embeddings.safetensors").stat().st_size
    with open_bundle(full, threads=1) as a, open_bundle(small, threads=1) as b:
        V, d = a.vocab_size, a.backend.engine.hidden_size
        B = 32 if d % 32 == 0 else d  # int8: a scale per block of 32 (per row when d has no such blocks)
        want = V * d * 2 if dtype == "fp16" else V * d + 4 * V * (d // B)  # the table (and an int8 table's scales)
        assert want <= size <= want + 512, (size, want)  # + the safetensors header
        assert a.bundle.full_precision and not b.bundle.full_precision
        ids = np.arange(a.vocab_size)
        x, y = a.backend.engine.embed(ids), b.backend.engine.embed(ids)
        assert y.dtype == np.float32 and not np.array_equal(x, y)  # the table did change
        if dtype == "fp16":
            assert (np.abs(x - y) <= 2.0**-11 * np.abs(x) + 2.0**-24).all()
        else:
            step = np.repeat(np.abs(x).reshape(V, d // B, B).max(axis=2) / 127, B, axis=1)  # [V, d]
            assert (np.abs(x - y) <= step / 2 * (1 + 2.0**-11) + 1e-7).all()
        assert {t: r["passed"] for t, r in m["parity"].items()} == {t: None for t in m["parity"]}  # recorded, not gated
        for task in ("pt", "px"):
            for text in ("what a lovely day", "the service was awful"):
                assert b.classify(task, text).label == a.classify(task, text).label or abs(a.classify(task, text).probabilities["positive"] - 0.5) < 0.05
    with pytest.raises(EdgePromptError, match="--embeddings"):
        ExportConfig(format="gguf", quant="q8_0", embeddings="fp16")


def test_accuracy_level_is_checked_and_recorded(bundle_of):
    """``--accuracy-level`` belongs to ONNX MatMulNBits (int8/int4) and is one of its five values; the manifest says
    which one the graph runs (4 unless asked: the integer kernels)."""
    from edgeprompt.export.writer import ExportConfig

    for bad in (dict(format="gguf", quant="q8_0"), dict(format="onnx", quant="fp32")):
        with pytest.raises(EdgePromptError, match="--accuracy-level .*--quant int8 or int4"):
            ExportConfig(accuracy_level=0, **bad)
    with pytest.raises(EdgePromptError, match="choose 0"):
        ExportConfig(format="onnx", quant="int8", accuracy_level=7)
    m = json.loads((bundle_of("onnx", "int8", embeddings="int8") / "manifest.json").read_text())["model"]
    assert m["accuracy_level"] == 4 and m["embeddings_in_graph"]  # the tied Q8_0 head is the int8 table
    assert "accuracy_level" not in json.loads((bundle_of("onnx", "fp32") / "manifest.json").read_text())["model"]


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_a_gemm_lm_head_is_quantized_at_8_bits(quant, tmp_path):
    """The dynamo exporter writes the LM head as ``Gemm(x, W [N, K], C, transB=1)``, which ``MatMulNBitsQuantizer``
    skips: int8 and int4 run it as an 8-bit MatMulNBits on its Q8_0 blocks (int4 too: the head stays wider, as in
    llama.cpp's Q4 files), while int4's other MatMuls are 4-bit."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgeprompt.export.onnx.quant import BLOCK_SIZE, quantize

    rng = np.random.default_rng(0)
    K, H, N = 2 * BLOCK_SIZE, 4 * BLOCK_SIZE, 96
    W1 = rng.standard_normal((K, H)).astype(np.float32)  # a body MatMul [K, H]
    W = rng.standard_normal((N, H)).astype(np.float32)  # the head [N, H]
    C = rng.standard_normal(N).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W1"], ["h"], name="body"), helper.make_node("Gemm", ["h", "W", "C"], ["y"], name="lm_head", transB=1)],
        "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(W1, "W1"), numpy_helper.from_array(W, "W"), numpy_helper.from_array(C, "C")],
    )
    onnx.save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "fp32.onnx"))
    out = quantize(tmp_path / "fp32.onnx", tmp_path / quant / "m.onnx", quant, accuracy_level=0)
    m = onnx.load(str(out))
    ops = [n.op_type for n in m.graph.node]
    assert "Gemm" not in ops and ops.count("MatMulNBits") == 2, ops
    bits = {n.input[1]: helper.get_attribute_value(a) for n in m.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"}
    assert sorted(bits.values()) == ([8, 8] if quant == "int8" else [4, 8]), bits
    assert [b for name, b in bits.items() if name.startswith("W_")] == [8], bits  # the head's weight is 8-bit
    x = rng.standard_normal((3, K)).astype(np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    h = x.astype(np.float64) @ W1
    want = h @ W.T.astype(np.float64) + C
    # symmetric blocks of 32 round each weight by at most half a step, step = block max / (2**(bits-1) - 1); with
    # fp32 activations (accuracy_level 0) the error is at most sum |input| * |weight error| (worst case, not an estimate)
    step = lambda w, b: np.abs(w).reshape(w.shape[0], -1, BLOCK_SIZE).max(-1).repeat(BLOCK_SIZE, -1) / (2 ** (b - 1) - 1)  # noqa: E731
    e1 = step(W1.T, 4 if quant == "int4" else 8) / 2  # [H, K]
    dh = np.abs(x) @ e1.T  # [3, H]: the bound on the body's error
    # the head is Q8_0: its step is max/127 rounded to fp16 (up by at most 2**-11)
    bound = (np.abs(h) + dh) @ (step(W, 8) * (1 + 2.0**-11) / 2).T + dh @ np.abs(W.T) + 1e-4 * np.abs(want)
    assert np.all(np.abs(got - want) <= bound), float(np.max(np.abs(got - want) / bound))
    assert np.abs(got - want).max() > 0  # quantized: not the fp32 graph


def test_a_tied_int8_head_and_the_int8_table_are_one_copy(bundle_of, tiny_tied_dir, tiny_bank, tmp_path, monkeypatch):
    """`--quant int8 --embeddings int8` of a tied model: the LM head's Q8_0 blocks are the int8 table's bytes, so the
    bundle stores them once (the head reads them from the table file). The same export with two copies gives the
    same logits bit for bit, and its graph's data is larger by the head's bytes."""
    import edgeprompt.export.onnx.transcode as T
    from edgeprompt.core.constants import ModelKeys
    from edgeprompt.export.writer import ExportConfig, export_bundle
    from edgeprompt.runtimes import open_bundle

    one = bundle_of("onnx", "int8", embeddings="int8")
    assert json.loads((one / "manifest.json").read_text())["model"].get(ModelKeys.EMBEDDINGS_IN_GRAPH) is True
    monkeypatch.setattr(T, "share_head_with_table", lambda *a, **k: False)
    two = tmp_path / "two"
    export_bundle(
        two, bank=tiny_bank, model=tiny_tied_dir, config=ExportConfig(format="onnx", quant="int8", embeddings="int8", probes_per_task=6), log=lambda s: None
    )
    assert ModelKeys.EMBEDDINGS_IN_GRAPH not in json.loads((two / "manifest.json").read_text())["model"]
    with open_bundle(one, threads=1) as a, open_bundle(two, threads=1) as b:
        V, d = a.vocab_size, a.backend.engine.hidden_size
        for task in (None, "pt", "px"):
            for text in ("what a lovely day", "the service was awful"):
                assert np.array_equal(a.logits(task, text), b.logits(task, text)), (task, text)
    head = V * d + 4 * V * (d // 32)  # uint8 weights and a float32 scale per block of 32
    extra = (two / "model" / "decoder.onnx.data").stat().st_size - (one / "model" / "decoder.onnx.data").stat().st_size
    assert head <= extra <= head + 4096, (extra, head)


def test_two_gemms_sharing_a_weight_get_one_q8_0_copy():
    """``q8_0_heads`` converts a weight two Gemms share once (no duplicate initializer) and drops the float weight
    only when no use is left; the graph computes the same as the Q8_0 weight in numpy (fp32 activations)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgeprompt.export.onnx.quant import BLOCK_SIZE, q8_0, q8_0_heads

    rng = np.random.default_rng(2)
    K, N = 2 * BLOCK_SIZE, 24
    W = rng.standard_normal((N, K)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W"], ["y1"], name="a", transB=1), helper.make_node("Gemm", ["x", "W"], ["y2"], name="b", transB=1)],
        "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, K])],
        [helper.make_tensor_value_info("y1", TensorProto.FLOAT, None), helper.make_tensor_value_info("y2", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(W, "W")],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    assert q8_0_heads(model, accuracy_level=0) == ["a_q8_0", "b_q8_0"]
    assert sorted(i.name for i in model.graph.initializer) == ["W_q8_0_B", "W_q8_0_scales"]
    x = rng.standard_normal((2, K)).astype(np.float32)
    y1, y2 = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    q, s = q8_0(W)
    want = x.astype(np.float64) @ (q.reshape(N, -1, BLOCK_SIZE) * s[:, :, None].astype(np.float64)).reshape(N, K).T
    # fp32 accumulation of K products: within K * 2**-23 of sum |x_i * w_i| (a bound, not an estimate)
    bound = K * 2.0**-23 * (np.abs(x).astype(np.float64) @ np.abs(W.T).astype(np.float64) * 1.01)
    assert np.array_equal(y1, y2) and np.all(np.abs(y1 - want) <= bound), float(np.max(np.abs(y1 - want) / bound))
