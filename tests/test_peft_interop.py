from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeprompt.core.bank import PromptBank
from edgeprompt.core.errors import EdgePromptError
from edgeprompt.core.tasks import TaskSpec
from edgeprompt.train.forward import full_logits
from edgeprompt.train.peft_interop import export_peft, import_peft
from edgeprompt.train.workflows import task_kv

SPEC = TaskSpec(template="{text}\nLabel:", labels=["negative", "positive"])


def _ids(lm):
    e = lm.encode("the movie was good and so happy")
    return torch.tensor([e]), torch.ones(1, len(e), dtype=torch.long)


def _fresh_base(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()


def _tensors(method, info, P=4):
    rng = np.random.default_rng(1)
    if method == "prompt_tuning":
        return {"prompt_embeddings": rng.standard_normal((P, info.hidden_size)).astype(np.float32)}
    return {"kv_prefix": rng.standard_normal((info.num_layers, 2, info.num_kv_heads, P, info.head_dim)).astype(np.float32)}


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_export_peft_loads_in_peft_with_the_same_logits(tiny_lm, tiny_model_dir, tmp_path, method):
    from peft import PeftModel

    bank = PromptBank(tmp_path / "bank")
    task = bank.add("t", method, _tensors(method, tiny_lm.info), SPEC, tiny_lm.info)
    out = export_peft(task, tmp_path / "peft", str(tiny_model_dir), tiny_lm.info)
    pm = PeftModel.from_pretrained(_fresh_base(tiny_model_dir), str(out)).eval()
    ids, mask = _ids(tiny_lm)
    P = task.num_virtual_tokens
    with torch.no_grad():
        ref = pm(input_ids=ids, attention_mask=mask).logits
        ref = ref[:, P:] if method == "prompt_tuning" else ref
        ours = full_logits(tiny_lm, task_kv(tiny_lm, task), ids, mask)
    assert (ours - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_import_peft_checkpoint_saved_by_peft(tiny_lm, tiny_model_dir, tmp_path, method):
    from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

    if method == "prompt_tuning":
        cfg = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=5)
    else:  # trained through PEFT's MLP: PEFT saves the folded prefix
        cfg = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=5, prefix_projection=True, encoder_hidden_size=16)
    torch.manual_seed(0)
    pm = get_peft_model(_fresh_base(tiny_model_dir), cfg)
    with torch.no_grad():
        for p in pm.prompt_encoder.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    pm.save_pretrained(str(tmp_path / "peft"))
    bank = PromptBank(tmp_path / "bank")
    task = import_peft(tmp_path / "peft", bank, "imp", tiny_lm.info, SPEC)
    assert task.method == method and task.num_virtual_tokens == 5
    ids, mask = _ids(tiny_lm)
    pm.eval()
    with torch.no_grad():
        ref = pm(input_ids=ids, attention_mask=mask).logits
        ref = ref[:, 5:] if method == "prompt_tuning" else ref
        ours = full_logits(tiny_lm, task_kv(tiny_lm, task), ids, mask)
    assert (ours - ref).abs().max().item() <= 1e-5


def test_import_peft_refuses_pickles_and_wrong_shapes(tiny_lm, tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    (d / "adapter_config.json").write_text('{"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 2}')
    (d / "adapter_model.bin").write_bytes(b"\x80\x04N.")
    with pytest.raises(EdgePromptError, match="adapter_model.bin, a pickle"):
        import_peft(d, PromptBank(tmp_path / "b"), "x", tiny_lm.info, SPEC)
    from edgeprompt.core.files import atomic_write_safetensors

    atomic_write_safetensors(d / "adapter_model.safetensors", {"prompt_embeddings": np.zeros((2, 7), np.float32)})
    with pytest.raises(EdgePromptError, match=r"\[2, 7\].*d=32"):
        import_peft(d, PromptBank(tmp_path / "b"), "x", tiny_lm.info, SPEC)
    # num_virtual_tokens: a positive integer equal to the tensor's rows, or refused by name
    atomic_write_safetensors(d / "adapter_model.safetensors", {"prompt_embeddings": np.ones((2, 32), np.float32)})
    for bad in ('"abc"', "0", "1000000000", "3", "true", "2.5"):
        (d / "adapter_config.json").write_text('{"peft_type": "PROMPT_TUNING", "num_virtual_tokens": %s}' % bad)
        with pytest.raises(EdgePromptError, match="num_virtual_tokens"):
            import_peft(d, PromptBank(tmp_path / "b"), "x", tiny_lm.info, SPEC)
    (d / "adapter_config.json").write_text("[1, 2]")
    with pytest.raises(EdgePromptError, match="expected `object`, got `array`"):
        import_peft(d, PromptBank(tmp_path / "b"), "x", tiny_lm.info, SPEC)
    # NaN in the prompt: refused at import, nothing written
    (d / "adapter_config.json").write_text('{"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 2}')
    atomic_write_safetensors(d / "adapter_model.safetensors", {"prompt_embeddings": np.full((2, 32), np.nan, np.float32)})
    with pytest.raises(EdgePromptError, match="NaN"):
        import_peft(d, PromptBank(tmp_path / "b"), "x", tiny_lm.info, SPEC)
    assert "x" not in PromptBank(tmp_path / "b").names()
