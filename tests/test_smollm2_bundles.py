"""The embedded SmolLM2-135M through export and the runtimes (slow: real model, minutes)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow

TEXTS = ["The weather today is", "I can't believe we won 2-1 in the last minute!!!", "Breakfast: two eggs and 1 coffee."]


def test_default_gguf_passed_through_equals_stock_llama_cpp(tmp_path):
    """No task: our llama.cpp path gives stock llama_cpp.Llama's logits on the same file."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from edgeprompt.export.bundle import ExportConfig, export_bundle
    from edgeprompt.models import default_gguf_path
    from edgeprompt.io import file_sha256
    from edgeprompt.runtimes import open_bundle

    b = tmp_path / "b"
    r = export_bundle(b, config=ExportConfig(format="gguf", quant="source", probes_per_task=3), log=lambda s: None)
    assert file_sha256(b / "model/model.gguf") == file_sha256(default_gguf_path())  # passed through untouched
    assert r.manifest["model"]["tensor_types"].get("Q4_1")
    par = r.manifest["parity"][""]
    assert par["top1_agreement"] == 1.0 and par["max_abs_logit_diff"] < 0.5  # llama.cpp's q8 activations vs torch fp32
    llm = llama_cpp.Llama(model_path=str(b / "model/model.gguf"), n_ctx=512, n_threads=2, logits_all=True, verbose=False)
    with open_bundle(b, n_ctx=512) as rt:
        for text in TEXTS:
            ids = rt.encode(text)
            assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids  # smollm pre-tokenizer restored
            llm.reset()
            llm.eval(ids)
            np.testing.assert_allclose(np.array(llm.scores[llm.n_tokens - 1]), rt.logits(None, text), atol=1e-4)
    llm.close()


def test_onnx_fp32_export_of_smollm2_passes_the_gate(tmp_path):
    """The real model's ONNX graph: logits within 1e-3 of torch (the gate), and the runtime agrees."""
    from edgeprompt.export.bundle import ExportConfig, export_bundle
    from edgeprompt.runtimes import open_bundle

    b = tmp_path / "b"
    r = export_bundle(b, config=ExportConfig(format="onnx", quant="fp32", probes_per_task=3), log=lambda s: None)
    assert r.manifest["parity"][""]["max_abs_logit_diff"] <= 1e-3
    with open_bundle(b) as rt:
        res = rt.check_parity()
        assert res[""].max_abs_logit_diff <= 1e-3 and res[""].top1_agreement == 1.0
        out = rt.generate(None, "The capital of France is", max_new_tokens=4, stream=False)
        assert "Paris" in out
