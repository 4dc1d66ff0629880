"""A third method, registered from this test module, runs through bank, export and both runtimes.

The toy method stores half of each prompt row (``half_rows [P, d]``) and deploys ``2 * half_rows`` as input
embeddings: a folded tensor that is *not* the array a runtime feeds, so every layer that handles it must ask
the method's spec (``tensor_key``, ``folded_shape``, ``prefix_array``, ``trainer``) instead of knowing the two
built-in methods. Its twin, a prompt-tuning task with rows ``2 * half_rows``, must give the same logits.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeprompt.core.bank import PromptBank
from edgeprompt.core.constants import PARITY_FP32_MAX_ABS
from edgeprompt.core.methods import MethodSpec, PrefixKind, PromptLearningConfig, Trainer, get_method, register_method, unregister_method
from edgeprompt.core.model_info import ModelInfo

from .conftest import make_bank


def _kv_from_folded(lm, tensors):
    """The torch reference: the doubled rows through prompt tuning's forward."""
    pt = get_method("prompt_tuning")
    return pt.trainer().kv_from_folded(lm, {pt.tensor_key: 2.0 * tensors["half_rows"]})


TRAINER = Trainer(module_cls=None, kv_from_folded=_kv_from_folded)


class DoubledRowsSpec(MethodSpec):
    name = "doubled_rows"
    aliases = ("toy",)
    config_cls = PromptLearningConfig
    tensor_key = "half_rows"
    dim_names = ("P", "d")
    prefix_kind = PrefixKind.EMBEDDINGS
    trainer_module = __name__  # this module's TRAINER

    def folded_shape(self, info: ModelInfo):
        return (None, info.hidden_size)

    def prefix_array(self, tensors):
        return 2.0 * np.asarray(tensors[self.tensor_key], dtype=np.float32)


@pytest.fixture(scope="module")
def toy_bank(tiny_tied_dir, tmp_path_factory):
    register_method(DoubledRowsSpec())
    try:
        d = tmp_path_factory.mktemp("toybank")
        bank_dir = make_bank(d / "bank", tiny_tied_dir, d / "data.csv", names=("twin", "px"))
        bank = PromptBank(bank_dir)
        twin = bank.task("twin")
        half = 0.5 * twin.tensors()["prompt_embeddings"]
        bank.add("toy", "toy", {"half_rows": half}, twin.spec, twin.base_model, extra={"data": twin.manifest["data"]})
        yield bank_dir
    finally:
        unregister_method("doubled_rows")


def test_the_bank_checks_the_toy_method_through_its_spec(toy_bank):
    bank = PromptBank(toy_bank)
    t = bank.task("toy")
    assert t.method == "doubled_rows" and t.num_virtual_tokens == 4
    with pytest.raises(Exception, match=r"half_rows has shape \[4, 7\].*\[P, d=32\]"):
        bank.add("bad", "toy", {"half_rows": np.zeros((4, 7), np.float32)}, t.spec, t.base_model)
    with pytest.raises(Exception, match="NaN"):
        bank.add("bad", "toy", {"half_rows": np.full((4, 32), np.nan, np.float32)}, t.spec, t.base_model)


@pytest.mark.parametrize("fmt,quant,backend", [("onnx", "fp32", "onnx"), ("gguf", "f32", "llamacpp")])
def test_toy_method_exports_and_runs_on_both_runtimes(toy_bank, tiny_tied_dir, tmp_path, fmt, quant, backend):
    from edgeprompt.export.writer import ExportConfig, export_bundle
    from edgeprompt.runtimes.runtime import open_bundle

    out = tmp_path / "b"
    # the export's fp32 parity gate runs the toy task through the torch reference (its TRAINER) and the runtime
    export_bundle(out, bank=toy_bank, model=tiny_tied_dir, config=ExportConfig(format=fmt, quant=quant, probes_per_task=4), log=lambda s: None)
    m = json.loads((out / "manifest.json").read_text())
    assert m["tasks"]["toy"]["method"] == "doubled_rows"
    assert m["tasks"]["toy"]["forms"]["embeddings"]["bytes"] == 4 * 32 * 4
    assert m["parity"]["toy"]["max_abs_logit_diff"] <= PARITY_FP32_MAX_ABS
    with open_bundle(out, backend=backend, threads=1) as rt:
        assert set(rt.tasks) == {"toy", "twin", "px"}
        for text in ("the movie was good", "service today was awful 7"):
            a, b = rt.logits("toy", text), rt.logits("twin", text)
            # the same rows through the same engine and threads: the same floating-point operations
            np.testing.assert_array_equal(a, b)
            assert rt.classify("toy", text).label == rt.classify("twin", text).label
        # a toy task added to the running runtime goes through the same spec checks
        bank = PromptBank(toy_bank)
        assert rt.add_task(bank.task("toy")) == "toy"
        np.testing.assert_array_equal(rt.logits("toy", "nice day"), rt.logits("twin", "nice day"))
