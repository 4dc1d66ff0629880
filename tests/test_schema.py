"""One schema per file kind (``edgeprompt/core/schema.py``): each damaged shape the red team found is refused with
the reader's typed error naming the file and the key, through the reader a user meets (issue 10)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgeprompt.core.errors import BankError, BundleError, EdgePromptError, FormatVersionError


@pytest.fixture()
def bundle(bundle_of, tmp_path) -> Path:
    b = tmp_path / "b"
    shutil.copytree(bundle_of("gguf", "f32"), b)
    return b


def _set(doc: dict, path: str, value) -> None:
    *head, last = path.split(".")
    for k in head:
        doc = doc[k]
    if value is KeyError:
        del doc[last]
    else:
        doc[last] = value


MANIFEST_CASES = [
    ("version", "abc", FormatVersionError, "version"),
    ("version", 1e300, FormatVersionError, "version"),
    ("version", 99, FormatVersionError, "99"),
    ("format", "edgeprompt.bank", BundleError, "edgeprompt.bundle"),
    ("tasks.pt", None, BundleError, "tasks.pt"),
    ("tasks.pt.num_virtual_tokens", "20", BundleError, "tasks.pt.num_virtual_tokens"),
    ("tasks.pt.num_virtual_tokens", 0, BundleError, "tasks.pt.num_virtual_tokens"),
    ("tasks.pt.kind", "regression", BundleError, "tasks.pt.kind"),
    ("tasks.pt.forms", KeyError, BundleError, "forms"),
    ("tasks.pt.forms.embeddings.file", None, BundleError, "tasks.pt.forms.embeddings.file"),  # the fuzzer's find: a TypeError
    ("model.format", "safetensors", BundleError, "model.format"),
    ("model.file", KeyError, BundleError, "file"),
    ("model.context_length", -5, BundleError, "model.context_length"),
    ("base_model.hidden_size", "64", BundleError, "base_model.hidden_size"),
    ("base_model", KeyError, BundleError, "base_model"),
    ("tokenizer.eos_token_id", -1, BundleError, "tokenizer.eos_token_id"),
    ("tokenizer.add_bos", "no", BundleError, "tokenizer.add_bos"),
    ("files", ["tokenizer.json"], BundleError, "files"),
    ("files.tokenizer.json", {"sha256": 1}, BundleError, "sha256"),
    ("parity", {"pt": {"max_abs_logit_diff": "big"}}, BundleError, "parity.pt.max_abs_logit_diff"),
]


@pytest.mark.parametrize("path,value,error,names", MANIFEST_CASES, ids=[f"{c[0]}={c[1]!r}"[:40] for c in MANIFEST_CASES])
def test_bundle_manifest_shapes(bundle, path, value, error, names):
    from edgeprompt.core.bundle import Bundle

    m = json.loads((bundle / "manifest.json").read_text())
    if path.startswith("files.tokenizer.json"):
        m["files"]["tokenizer.json"] = value
    else:
        _set(m, path, value)
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(error) as e:
        Bundle.open(bundle)
    assert names in str(e.value) and "manifest.json" in str(e.value), str(e.value)


def test_non_json_and_nan_manifests(bundle):
    from edgeprompt.core.bundle import Bundle

    raw = (bundle / "manifest.json").read_text()
    m = json.loads(raw)
    m["parity"]["pt"]["max_abs_logit_diff"] = float("nan")  # json.dumps writes NaN, which is not JSON
    for text in ("[]", "null", raw[:100], json.dumps(m), raw + "x"):
        (bundle / "manifest.json").write_text(text)
        with pytest.raises(BundleError):
            Bundle.open(bundle)


TASK_CASES = [
    ("labels", "ab", "labels"),  # was read as the labels a and b
    ("labels", ["a", ""], "labels"),
    ("num_virtual_tokens", 0, "num_virtual_tokens"),
    ("num_virtual_tokens", True, "num_virtual_tokens"),
    ("tensors", {}, "tensors"),
    ("tensors", {"prompt_embeddings": {"shape": [4, "64"], "dtype": "float32"}}, "tensors.prompt_embeddings.shape"),
    ("tensors", {"prompt_embeddings": {"shape": [4, 64], "dtype": "float16"}}, "dtype"),
    ("template", None, "template"),
    ("kind", None, "kind"),
    ("base_model", "tiny", "base_model"),
    ("verbalizers", {"a": 1}, "verbalizers"),
    ("version", "abc", "version"),
]


@pytest.mark.parametrize("key,value,names", TASK_CASES, ids=[f"{c[0]}={c[1]!r}"[:40] for c in TASK_CASES])
def test_task_manifest_shapes(tiny_bank, tmp_path, key, value, names):
    """Through the bank (list/show) and through add_task of a bare folder: the same schema, the same error."""
    from edgeprompt.core.bank import PromptBank, read_task_folder

    bank = tmp_path / "bank"
    shutil.copytree(tiny_bank, bank)
    mpath = bank / "tasks" / "pt" / "manifest.json"
    m = json.loads(mpath.read_text())
    m[key] = value
    mpath.write_text(json.dumps(m))
    for read in (lambda: PromptBank(bank).task("pt"), lambda: read_task_folder(bank / "tasks" / "pt")):
        with pytest.raises(EdgePromptError) as e:
            read()
        assert names in str(e.value) and "pt" in str(e.value), str(e.value)
        assert isinstance(e.value, (BankError, FormatVersionError))


def test_bank_json_and_probes_and_peft_and_checkpoint_shapes(tiny_bank, bundle, tmp_path):
    from edgeprompt.core import schema
    from edgeprompt.core.bank import PromptBank
    from edgeprompt.core.parity import load_probes

    bank = tmp_path / "bank"
    shutil.copytree(tiny_bank, bank)
    meta = json.loads((bank / "bank.json").read_text())
    meta["base_model"]["vocab_size"] = "lots"
    (bank / "bank.json").write_text(json.dumps(meta))
    with pytest.raises(BankError, match="base_model.vocab_size"):
        PromptBank(bank).base_model()
    probes = bundle / "probes" / "probes.json"
    for bad, where in (({"task": "pt"}, "array"), ([{"task": "pt", "text": 5}], "[0].text"), ([{"text": "x"}], "task")):
        probes.write_text(json.dumps(bad))
        with pytest.raises(BundleError, match="probe set") as e:
            load_probes(probes)
        assert where in str(e.value)
    peft = {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 10**9}
    with pytest.raises(BankError, match="num_virtual_tokens"):
        schema.decode(json.dumps(peft).encode(), schema.PeftAdapterConfig, "adapter_config.json", BankError)
    state = {"format": "edgeprompt.checkpoint", "version": 1, "step": -3}
    with pytest.raises(EdgePromptError, match="step"):
        schema.decode(json.dumps(state).encode(), schema.CheckpointState, "state.json")
