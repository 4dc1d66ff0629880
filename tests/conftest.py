"""Shared fixtures: a tiny random llama (GQA) with its own small BPE tokenizer, and tiny data.

Nothing is downloaded: the tokenizer is trained here in milliseconds, the weights are random.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

POS = ["good", "great", "love", "happy", "nice", "fine", "wonderful", "best"]
NEG = ["bad", "awful", "hate", "sad", "poor", "worst", "terrible", "angry"]
FILL = ["the", "movie", "was", "really", "food", "day", "service", "today", "this", "my", "so", "and"]
REPO = Path(__file__).resolve().parents[1]


def make_sentences(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        lab = "positive" if i % 2 == 0 else "negative"
        words = rng.sample(FILL, 4) + [rng.choice(POS if lab == "positive" else NEG)]
        rng.shuffle(words)
        out.append((" ".join(words) + f" {i}", lab))
    return out


def build_tiny_model(path: Path, tie: bool = False, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [s for s, _ in make_sentences(400)] + ["Label the text as negative, positive.", "Text: Label: negative positive"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir):
    from edgeprompt.train.models import FrozenLM

    return FrozenLM.load(tiny_model_dir)


@pytest.fixture()
def tiny_csv(tmp_path) -> Path:
    p = tmp_path / "tiny.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(make_sentences(120))
    return p


@pytest.fixture()
def tiny_jsonl(tmp_path) -> Path:
    p = tmp_path / "tiny.jsonl"
    with open(p, "w") as f:
        for s, lab in make_sentences(60):
            f.write(json.dumps({"sentence": s, "sentiment": lab}) + "\n")
    return p


@pytest.fixture()
def env(tmp_path) -> dict:
    """Environment for CLI subprocesses: a private cache, offline."""
    e = dict(os.environ)
    e["EDGEPROMPT_CACHE"] = str(tmp_path / "cache")
    e["HF_HUB_OFFLINE"] = "1"
    e["TRANSFORMERS_OFFLINE"] = "1"
    e.pop("EDGEPROMPT_BANK", None)
    return e


def run_cli(args: list[str], env: dict | None = None, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "edgeprompt", *args], env=env, cwd=cwd or REPO, capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"edgeprompt {' '.join(args)} exited {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r


def make_bank(bank_dir: Path, model_dir: Path, csv_path: Path, seed: int = 0, names=("pt", "px"), P: int = 4) -> Path:
    """A bank with a prompt-tuning task ``pt`` and a prefix-tuning task ``px`` (random prompts of a
    realistic scale), whose data record points at ``csv_path`` so exports draw probes from it."""
    import numpy as np

    from edgeprompt.core.bank import PromptBank
    from edgeprompt.core.data import load_dataset
    from edgeprompt.core.tasks import TaskSpec
    from edgeprompt.train.models import FrozenLM
    from edgeprompt.train.workflows import data_record

    if not csv_path.exists():
        with open(csv_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(make_sentences(120))
    lm = FrozenLM.load(model_dir)
    info = lm.info
    spec = TaskSpec(template="Text: {text}\nLabel:", instruction="Label the text as negative, positive.\n", labels=["negative", "positive"])
    args = {"source": str(csv_path), "text_column": "text", "label_column": "label", "seed": 0, "dev": 10, "test": 20}
    data = load_dataset(str(csv_path), spec=spec, text_column="text", label_column="label", seed=0, dev=10, test=20)
    rng = np.random.default_rng(seed)
    emb = lm.embeddings.detach().numpy()
    bank = PromptBank(bank_dir)
    extra = {"data": data_record(data, args)}
    bank.add(
        names[0],
        "prompt_tuning",
        {"prompt_embeddings": emb[rng.integers(3, emb.shape[0], P)] + 0.5 * rng.standard_normal((P, info.hidden_size)).astype("float32")},
        spec,
        info,
        extra=extra,
    )
    kv = rng.standard_normal((info.num_layers, 2, info.num_kv_heads, P, info.head_dim)).astype("float32")
    bank.add(names[1], "prefix_tuning", {"kv_prefix": kv}, spec, info, extra=extra)
    return bank_dir


@pytest.fixture(scope="session")
def tiny_tied_dir(tmp_path_factory) -> Path:
    """The tiny model with tied embeddings (like SmolLM2), for export and runtime tests."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-tied") / "model", tie=True)


@pytest.fixture(scope="session")
def tiny_bank(tiny_tied_dir, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bank")
    return make_bank(d / "bank", tiny_tied_dir, d / "data.csv")


@pytest.fixture(scope="session")
def bundle_of(tiny_tied_dir, tiny_bank, tmp_path_factory):
    """``bundle_of(format, quant, **options)`` exports the tiny bank once per combination."""
    from edgeprompt.export.writer import ExportConfig, export_bundle

    made: dict = {}
    root = tmp_path_factory.mktemp("bundles")

    def get(fmt: str, quant: str, **kw) -> Path:
        key = (fmt, quant, tuple(sorted(kw.items())))
        if key not in made:
            out = root / f"{fmt}-{quant}-{len(made)}"
            export_bundle(out, bank=tiny_bank, model=tiny_tied_dir, config=ExportConfig(format=fmt, quant=quant, probes_per_task=6, **kw), log=lambda s: None)
            made[key] = out
        return made[key]

    return get


def agree_over_margin(ref: np.ndarray, cand: np.ndarray, tol: float) -> int:
    """Top-1 must agree wherever torch's top-1 leads its runner-up by more than 2 x tol: an error of at
    most tol per logit cannot flip those. Rows under the margin are counted, not asserted."""
    s = np.sort(ref, -1)
    sure = s[:, -1] - s[:, -2] > 2 * tol
    assert not np.any(sure & (ref.argmax(-1) != cand.argmax(-1))), (tol, np.flatnonzero(sure))
    return int(sure.sum())
