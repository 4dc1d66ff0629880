"""The CLI end to end on the tiny model: train -> bank list/show -> eval -> export/import PEFT -> remove."""

from __future__ import annotations

import json

from edgeprompt.core.bank import PromptBank

from .conftest import run_cli


def test_train_eval_and_bank_verbs(tiny_model_dir, tiny_csv, tmp_path, env):
    bank = tmp_path / "bank"
    common = ["--model", str(tiny_model_dir), "--bank", str(bank)]
    r = run_cli(
        [
            "train",
            *common,
            "--data",
            str(tiny_csv),
            "--name",
            "sent",
            "--steps",
            "6",
            "--batch-size",
            "4",
            "-P",
            "3",
            "--eval-every",
            "3",
            "--max-length",
            "48",
            "--quiet",
        ],
        env,
    )
    assert "saved task 'sent'" in r.stdout and "zero-shot" in r.stdout and "macro-F1" in r.stdout
    r = run_cli(
        [
            "train",
            *common,
            "--data",
            str(tiny_csv),
            "--method",
            "prefix",
            "--name",
            "sent-prefix",
            "--steps",
            "3",
            "--batch-size",
            "4",
            "-P",
            "2",
            "--encoder-hidden-size",
            "8",
            "--max-length",
            "48",
            "--quiet",
            "--no-test",
        ],
        env,
    )
    r = run_cli(["bank", "list", "--bank", str(bank)], env)
    assert "sent " in r.stdout and "prefix_tuning" in r.stdout and "prompt_tuning" in r.stdout
    man = json.loads(run_cli(["bank", "show", "--bank", str(bank), "sent"], env).stdout)
    assert man["metrics"]["test"]["n"] > 0 and man["data"]["train_sha256"] and "history" not in man["training"]
    assert man["base_model"]["fingerprint"] == json.loads((bank / "bank.json").read_text())["base_model"]["fingerprint"]
    r = run_cli(["eval", *common, "--task", "sent", "--json"], env)
    out = json.loads(r.stdout)
    assert out["metrics"]["accuracy"] == man["metrics"]["test"]["accuracy"]  # same split rebuilt from the manifest
    assert len(out["metrics"]["confusion"]) == 2
    run_cli(["bank", "export-peft", *common, "sent", "-o", str(tmp_path / "peft")], env)
    run_cli(["bank", "import-peft", *common, str(tmp_path / "peft"), "--name", "back", "--labels", "negative,positive"], env)
    b = PromptBank(bank)
    assert (b.task("back").tensors()["prompt_embeddings"] == b.task("sent").tensors()["prompt_embeddings"]).all()
    run_cli(["bank", "remove", "--bank", str(bank), "back"], env)
    assert PromptBank(bank).names() == ["sent", "sent-prefix"]


def test_errors_are_clear_and_exit_2(tiny_model_dir, tiny_csv, tmp_path, env):
    bank = tmp_path / "bank"
    r = run_cli(["eval", "--bank", str(bank), "--task", "nope"], env, check=False)
    assert r.returncode == 2 and "no task 'nope'" in r.stderr and "Traceback" not in r.stderr
    r = run_cli(["train", "--model", str(tiny_model_dir), "--bank", str(bank), "--data", str(tiny_csv), "--text-column", "body"], env, check=False)
    assert r.returncode == 2 and "no column 'body'" in r.stderr
    bad = tmp_path / "m.bin"
    bad.write_bytes(b"\x80\x04N.")
    r = run_cli(["train", "--model", str(bad), "--bank", str(bank), "--data", str(tiny_csv)], env, check=False)
    assert r.returncode == 2 and "refuses pickles" in r.stderr
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text('{"model_type": "gpt2"}')
    r = run_cli(["train", "--model", str(gpt2), "--bank", str(bank), "--data", str(tiny_csv)], env, check=False)
    assert r.returncode == 2 and "'gpt2' is not supported" in r.stderr and "llama, mistral, qwen2" in r.stderr
    r = run_cli(["train", "--model", str(tiny_model_dir), "--bank", str(bank), "--data", str(tiny_csv), "--method", "lora"], env, check=False)
    assert r.returncode == 2 and "unknown method 'lora'" in r.stderr and "prompt_tuning" in r.stderr


def test_template_flags_unescape_newlines():
    from edgeprompt.cli import _spec_from_args, build_parser

    args = build_parser().parse_args(
        ["train", "--data", "x.csv", "--template", r"Review: {text}\nStars:", "--labels", "1,2", "--instruction", r"Rate it.\n", "--verbalizer", r"1=\tone"]
    )
    spec = _spec_from_args(args, "x.csv")
    assert spec.template == "Review: {text}\nStars:" and spec.instruction == "Rate it.\n" and spec.verbalizers["1"] == "\tone"


def test_lr_help_names_each_methods_default():
    """``train --help`` states the rate each registered method trains at when ``--lr`` is not given (it once said
    0.3 for prefix tuning after the default had moved to 0.1)."""
    from edgeprompt.cli import build_parser
    from edgeprompt.core.methods import all_methods, get_method

    train = next(a for a in build_parser()._actions if a.dest == "cmd").choices["train"]
    said = next(a for a in train._actions if a.dest == "lr").help
    for m in all_methods():
        spec = get_method(m)
        assert f"{(spec.aliases or (spec.name,))[0]} {spec.config_cls().default_lr():g}" in said, (m, said)


def test_lr_help_survives_methods_without_a_default_rate():
    """Every command builds the parser, so a registered method whose config needs arguments, or has no
    ``default_lr()`` (the toy of test_third_method.py), must not break ``edgeprompt --help`` nor any other command."""
    from dataclasses import dataclass, field

    from edgeprompt.cli import build_parser
    from edgeprompt.core.methods import MethodSpec, PromptLearningConfig, register_method, unregister_method

    @dataclass
    class NeedsRank(PromptLearningConfig):
        rank: int = field(kw_only=True)  # required: NeedsRank() raises TypeError

    class NeedsRankSpec(MethodSpec):
        name, aliases, config_cls = "needs_rank", ("ranked",), NeedsRank

    class NoRateSpec(MethodSpec):
        name, aliases, config_cls = "no_rate", (), PromptLearningConfig  # as the toy's: PromptLearningConfig() raises

    register_method(NeedsRankSpec())
    register_method(NoRateSpec())
    try:
        train = next(a for a in build_parser()._actions if a.dest == "cmd").choices["train"]
        said = next(a for a in train._actions if a.dest == "lr").help
    finally:
        unregister_method("needs_rank")
        unregister_method("no_rate")
    assert "ranked its config's default_lr()" in said and "no_rate its config's default_lr()" in said and "prompt 0.1" in said, said
