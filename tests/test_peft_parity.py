"""Our forward pass with a soft prompt / KV prefix equals PEFT's, number for number (tiny GQA llama)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeprompt.core.methods import all_methods, get_method
from edgeprompt.methods.prefix_tuning.model import flat_to_kv
from edgeprompt.train.forward import full_logits, kv_from_tensor

TOL = 1e-5
PARITY_TESTED_PEFT_TYPES = {"PROMPT_TUNING", "PREFIX_TUNING"}  # the tests below


def _batch(lm):
    texts = ["the movie was good", "bad service today and so sad", "my day"]
    encs = [lm.encode(t) for t in texts]
    T = max(map(len, encs))
    ids = torch.full((len(encs), T), lm.pad_token_id)
    mask = torch.zeros((len(encs), T), dtype=torch.long)
    for i, e in enumerate(encs):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
    return ids, mask


def _peft_model(lm, cfg):
    """PEFT around its own copy of the weights (PEFT patches the model it wraps)."""
    import copy

    from peft import get_peft_model

    return get_peft_model(copy.deepcopy(lm.model), cfg)


@pytest.mark.parametrize("name", all_methods())
def test_every_registered_method_folds_to_what_it_trains(tiny_lm, name):
    """Each registered method, through its facts and its trainer: the folded tensors pass the facts'
    checks with the config's P, rebuild the module's own KV (logits equal to fp32 rounding), and
    survive PEFT's layout both ways; a method without a PEFT parity test below fails here."""
    lm = tiny_lm
    m = get_method(name)
    cfg = m.config_cls(num_virtual_tokens=5)
    module = m.trainer().module_cls(cfg, lm, init_text="Classify the tweet.", seed=0)
    folded = module.fold(lm)
    m.check_tensors(folded, lm.info)
    assert m.num_virtual_tokens(folded, lm.info) == 5
    ids, mask = _batch(lm)
    with torch.no_grad():
        live = full_logits(lm, module.kv(lm), ids, mask)
        again = full_logits(lm, m.trainer().kv_from_folded(lm, folded), ids, mask)
    # the same fp32 ops on the same values, apart from the fold's copy: equal to a few ulps
    assert (live - again).abs().max().item() <= 1e-5
    back = m.from_peft(m.to_peft(folded), 5, lm.info)
    assert np.array_equal(back[m.tensor_key], folded[m.tensor_key])
    assert m.peft_type in PARITY_TESTED_PEFT_TYPES, f"{name} has no PEFT parity test in this file"


@pytest.mark.parametrize("P", [1, 7])
def test_prompt_tuning_matches_peft(tiny_lm, P):
    from peft import PromptTuningConfig, TaskType

    lm = tiny_lm
    torch.manual_seed(P)
    prompt = torch.randn(P, lm.info.hidden_size) * 0.5
    pm = _peft_model(lm, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=P))
    with torch.no_grad():
        pm.prompt_encoder["default"].embedding.weight.copy_(prompt)
        ids, mask = _batch(lm)
        ref = pm(input_ids=ids, attention_mask=mask).logits[:, P:]  # (B, T, V)
        ours = full_logits(lm, get_method("prompt_tuning").trainer().kv_from_folded(lm, {"prompt_embeddings": prompt.numpy()}), ids, mask)
    real = mask.bool()
    diff = (ours - ref)[real].abs().max().item()
    assert diff <= TOL, diff


@pytest.mark.parametrize("P", [1, 5])
def test_prefix_tuning_matches_peft(tiny_lm, P):
    from peft import PrefixTuningConfig, TaskType

    lm, info = tiny_lm, tiny_lm.info
    torch.manual_seed(10 + P)
    width = info.num_layers * 2 * info.num_kv_heads * info.head_dim
    flat = torch.randn(P, width)
    pm = _peft_model(lm, PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=P, prefix_projection=False))
    # GQA: PEFT sizes the prefix by KV heads, as we do.
    assert pm.prompt_encoder["default"].embedding.weight.shape == (P, width)
    with torch.no_grad():
        pm.prompt_encoder["default"].embedding.weight.copy_(flat)
        ids, mask = _batch(lm)
        ref = pm(input_ids=ids, attention_mask=mask).logits
        ours = full_logits(lm, kv_from_tensor(flat_to_kv(flat, info)), ids, mask)
    real = mask.bool()
    diff = (ours - ref)[real].abs().max().item()
    assert diff <= TOL, diff


@pytest.mark.parametrize("encoder", ["model+mlp", "mlp"])
def test_prefix_tuning_with_projection_folds_to_the_same_logits(tiny_lm, encoder):
    """Training through the reparameterisation and the folded KV prefix give the same forward pass."""
    from edgeprompt.methods.prefix_tuning import PrefixTuningConfig
    from edgeprompt.methods.prefix_tuning.model import PrefixTuningModule

    lm = tiny_lm
    m = PrefixTuningModule(PrefixTuningConfig(num_virtual_tokens=4, init="random", encoder=encoder), lm, seed=3)
    with torch.no_grad():  # a non-zero MLP, so the residual path is exercised
        for p in m.mlp.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ids, mask = _batch(lm)
    with torch.no_grad():
        live = full_logits(lm, m.kv(lm), ids, mask)
        folded = full_logits(lm, get_method("prefix_tuning").trainer().kv_from_folded(lm, m.fold(lm)), ids, mask)
    assert torch.equal(live, folded)
    assert set(m.fold(lm)) == {"kv_prefix"}  # the MLP is folded away


def test_zero_prefix_is_not_a_noop(tiny_lm):
    """Guard against a test that cannot fail: a different prompt changes the logits."""
    lm = tiny_lm
    ids, mask = _batch(lm)
    m = get_method("prompt_tuning")
    a = full_logits(lm, m.trainer().kv_from_folded(lm, {"prompt_embeddings": torch.zeros(3, lm.info.hidden_size).numpy()}), ids, mask)
    b = full_logits(lm, m.trainer().kv_from_folded(lm, {"prompt_embeddings": torch.ones(3, lm.info.hidden_size).numpy()}), ids, mask)
    assert (a - b).abs().max().item() > 1e-3
