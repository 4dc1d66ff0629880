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
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=tie, pad_token_id=0, bos_token_id=1, eos_token_id=2,
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
    from edgeprompt.models import FrozenLM

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
