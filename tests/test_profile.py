"""`edgeprompt profile`: the arms, the sweeps, the cost model, the report, bad input, interruption."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeprompt.core.errors import EdgePromptError

from .conftest import run_cli

TINY = dict(
    threads=[1],
    threads_main=1,
    P=[2, 4],
    P_main=4,
    text_lengths=[8, 24],
    text_main=8,
    tasks=[1, 3],
    bank_requests=6,
    decode=4,
    decode_sweep=2,
    reps=2,
    reps_open=1,
)


@pytest.fixture(scope="module")
def profiled(bundle_of, tiny_tied_dir, tmp_path_factory):
    """The tiny bank's GGUF f32 bundle with virtual tokens, and its ONNX fp32 bundle with shipped KV, profiled,
    with --eval 5 and the training cost."""
    from edgeprompt.profile import ProfileConfig, profile_bundles
    from edgeprompt.train.cost import step_costs

    out = tmp_path_factory.mktemp("profile") / "report"
    gguf, onnx = bundle_of("gguf", "f32", virtual_tokens=True), bundle_of("onnx", "fp32", with_kv=True)
    cost = lambda: step_costs(str(tiny_tied_dir), ["prompt_tuning", "prefix_tuning"], [2, 4], steps=1, log=lambda s: None)  # noqa: E731
    res = profile_bundles([gguf, onnx], out, ProfileConfig(**TINY, eval_n=5), log=lambda s: None, train_cost=cost)
    return out, res


def test_training_cost_per_method_and_P(profiled, tiny_tied_dir):
    _, res = profiled
    rows = {(r["method"], r["P"]): r for r in res["training"]}
    assert set(rows) == {(m, P) for m in ("prompt_tuning", "prefix_tuning") for P in (2, 4)}, res["training"]
    d = 32  # the tiny model's hidden size
    assert rows[("prompt_tuning", 4)]["trainable_params"] == 4 * d  # a prompt is P x d parameters
    assert rows[("prefix_tuning", 4)]["trainable_params"] > rows[("prompt_tuning", 4)]["trainable_params"]  # + its MLP
    assert all(r["step_s"] > 0 and r["peak_rss"] > 2**20 for r in rows.values())


def test_every_arm_is_measured_or_says_why_not(profiled):
    out, res = profiled
    saved = json.loads((out / "results.json").read_text())
    assert saved["schema"] == "edgeprompt.profile" and saved["version"] == 1 and saved["complete"] and saved["missing"] == []
    assert {"cpu", "kernel_flags", "cores", "memory_bytes", "os", "libraries"} <= set(saved["environment"])
    gguf, onnx = saved["bundles"]
    assert (gguf["backend"], onnx["backend"]) == ("llamacpp", "onnx")
    for bp in (gguf, onnx):
        arms = bp["arms"]
        assert set(arms) == {"plain", "hard_prompt", "prompt_cold", "prompt_disk", "prompt_warm", "virtual_tokens", "shipped_kv", "prefix_cold", "prefix_warm"}
        for name, recs in arms.items():
            for r in recs:
                if "skipped" in r:
                    continue
                assert r["reps"] == 2 and r["warmup"] == 1
                assert len(r["token_s"]["values"]) == 2 * 4  # every decoded token's time is kept
                assert r["ttft_s"]["median"] == pytest.approx(r["prefix_s"]["median"] + r["restore_s"]["median"] + r["prefill_s"]["median"], rel=0.5)
                assert r["decode_tok_s"] > 0
        assert arms["prompt_cold"][0]["task"] == "pt" and not arms["prompt_cold"][0]["synthetic"]  # the bundle's own tasks
        assert arms["prompt_warm"][0]["prefix_s"]["median"] == 0.0 < arms["prompt_cold"][0]["prefix_s"]["median"]
    # virtual tokens: measured on stock llama.cpp for the GGUF bundle; ONNX says why not
    assert "skipped" not in gguf["arms"]["virtual_tokens"][0]
    assert "virtual tokens" in onnx["arms"]["virtual_tokens"][0]["skipped"]
    # shipped KV: the ONNX bundle ships it; the GGUF bundle says why not
    assert "skipped" not in onnx["arms"]["shipped_kv"][0]
    assert "--with-kv" in gguf["arms"]["shipped_kv"][0]["skipped"]


def test_sweeps_and_memory(profiled):
    _, res = profiled
    for bp in res["bundles"]:
        ps = {(r["kind"], r["P"]): r for r in bp["p_sweep"]}
        assert set(ps) == {("embeddings", 2), ("embeddings", 4), ("kv", 2), ("kv", 4)}
        info = bp["model"]
        # bytes on disk: P x d float32 rows vs an L x 2 x kv_heads x P x head_dim float32 KV (+ a safetensors header)
        assert ps[("embeddings", 4)]["tensors_file"] - 4 * info["hidden_size"] * 4 in range(0, 256)
        assert ps[("kv", 4)]["tensors_file"] - 4 * info["num_layers"] * 2 * info["num_kv_heads"] * info["head_dim"] * 4 in range(0, 256)
        assert [r["text_tokens"] for r in bp["text_sweep"]] == [8, 24]
        assert [r["threads"] for r in bp["threads_sweep"]] == [1]
        kv = bp["kv_growth"]
        assert [r["context"] for r in kv] == sorted(r["context"] for r in kv) and kv[-1]["kv_bytes"] > kv[0]["kv_bytes"]
        mem = bp["memory"]
        assert "error" not in mem, mem
        st = mem["stages"]
        assert st["opened"] >= st["imported"] > 0
        assert bp["memory_breakdown"]["the rest"]["bytes"] >= 0
        bank = bp["bank_sweep"]
        assert {(r["method"], r["tasks"]) for r in bank} == {(m, n) for m in ("prompt_tuning", "prefix_tuning") for n in (1, 3)}
        assert all("error" not in r and 0 <= r["hit_rate"] <= 1 for r in bank), bank
    for bp in res["bundles"]:  # --eval: the tasks' test examples through each runtime
        for task in ("pt", "px"):
            ev = bp["accuracy"][task]["eval"]
            assert ev["n"] == 5 and 0 <= ev["accuracy"] <= 1 and 0 <= ev["macro_f1"] <= 1
    gguf = res["bundles"][0]
    assert gguf["memory"]["mapped"], "llama.cpp maps the GGUF: its mapping is found"
    assert gguf["engine_memory"]["kv_cache"] > 0 and gguf["engine_memory"]["n_params"] > 0


def test_cost_model_checked_and_projected(profiled):
    _, res = profiled
    for bp in res["bundles"]:
        cm = bp["cost_model"]
        assert {"decode_tok_s", "ttft_s", "cold_swap_s", "warm_swap_s", "rss_bytes"} <= set(cm["errors"])
        assert all(np.isfinite(r["error"]) for r in cm["checks"])
        n_cal = sum(r["calibration"] for r in cm["checks"])
        assert n_cal <= 8 and len(cm["checks"]) - n_cal >= 2 * n_cal  # a few figures fit the model; all the others test it
    names = {p["device"] for p in res["projections"]}
    assert {"raspberry-pi-4", "raspberry-pi-5", "laptop", "phone-midrange"} <= names
    assert {r["device"] for r in res["published_checks"]} >= {"raspberry-pi-4", "raspberry-pi-5"}


def test_report_leads_with_the_answer_and_holds_every_plot(profiled):
    out, res = profiled
    md = (out / "report.md").read_text()
    assert md.index("## The answer") < md.index("## How it was measured")
    assert "Artifact bytes" in md and "no stock way to take a prefix" in md and "Projections (not measured" in md
    html = (out / "report.html").read_text()
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # offline, no CDN
    ids = set(re.findall(r'data-plot="([^"]+)"', html))
    want = {
        "swap-vs-P",
        "bytes-vs-P",
        "ttft-breakdown",
        "token-latency",
        "kv-vs-context",
        "rss-vs-tasks",
        "projections",
        "projections-cold-swap",
        "train-step-vs-P",
    }
    per_run = {"projections", "projections-cold-swap", "train-step-vs-P"}
    assert want <= ids and {f"{w}-1" for w in want - per_run} <= ids  # per bundle
    assert "no data" not in html


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_html_renders_in_headless_chromium(profiled, tmp_path):
    exe = _chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs Debian's chromium (.ci/run); it is missing")
        pytest.skip("no chromium here (apt-get install chromium); CI runs this")
    out, _ = profiled
    args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*args, "--dump-dom", (out / "report.html").as_uri()], capture_output=True, text=True, timeout=120).stdout
    html_ids = set(re.findall(r'data-plot="([^"]+)"', (out / "report.html").read_text()))
    assert html_ids and html_ids == set(re.findall(r'data-plot="([^"]+)"', dom))  # every plot parsed into the rendered DOM
    assert dom.count("<path") >= len(html_ids) - 4
    shot = tmp_path / "shot.png"
    subprocess.run([*args, f"--screenshot={shot}", "--window-size=1200,4000", (out / "report.html").as_uri()], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000  # a page with plots, not a blank one


def test_cost_model_recovers_the_parameters_it_was_built_from():
    """Figures made by the model's own equations at known overheads and throughput: calibration finds them, and
    every other figure is predicted exactly (the fit and the predictions are the same algebra)."""
    from edgeprompt.profile.costmodel import CostModel, check, error_summary

    truth = CostModel(W=1.4e8, k=46080, N=1.35e8, bw={1: 20.0, 2: 30.0}, threads_main=2, read_bps=5e9, hash_bps=1.5e9)
    truth.o_d, truth.G, truth.o, truth.o_r, truth.C = 0.006, 4e10, 0.003, 4e-4, 3e8
    m = CostModel(W=1.4e8, k=46080, N=1.35e8, bw={1: 20.0, 2: 30.0}, threads_main=2, read_bps=5e9, hash_bps=1.5e9)
    dec = 8

    def req(prefix, restore, prefill, ctx):
        return {
            "prefix_s": {"median": prefix},
            "restore_s": {"median": restore},
            "prefill_s": {"median": prefill},
            "ttft_s": {"median": prefix + restore + prefill},
            "decode_tok_s": 1 / truth.token_s(ctx),
        }

    m.calibrate(1 / truth.token_s(16 + dec / 2), 16 + dec / 2, (16, truth.prefill_s(16)), (256, truth.prefill_s(256)))
    assert (m.o_d, m.G, m.o) == pytest.approx((0.006, 4e10, 0.003), rel=1e-9)
    pb, fb = 460800, 921688
    m.calibrate_swaps((pb, truth.copy_s(pb)), (fb, pb, truth.cold_kv_s(fb, pb)))
    assert (m.o_r, m.C) == pytest.approx((4e-4, 3e8), rel=1e-9)
    bp = {
        "decode_tokens": dec,
        "text_main": 16,
        "arms": {"plain": [{"text_tokens": 16, **req(0, 0, truth.prefill_s(16), 16 + dec / 2)}]},
        "text_sweep": [{"text_tokens": n, "plain": req(0, 0, truth.prefill_s(n), n)} for n in (16, 64, 256)],
        "P_main": 20,
        "p_sweep": [
            {
                "kind": "kv",
                "P": P,
                "prefix_resident": pb * P // 20,
                "tensors_file": fb * P // 20,
                "prefix_cold": req(truth.cold_kv_s(fb * P // 20, pb * P // 20), truth.copy_s(pb * P // 20), truth.prefill_s(16), 16 + P),
                "prefix_warm": req(0, truth.copy_s(pb * P // 20), truth.prefill_s(16), 16 + P),
                "swap": {
                    "warm_s": {"median": truth.copy_s(pb * P // 20)},
                    "cold_s": {"median": truth.cold_kv_s(fb * P // 20, pb * P // 20) + truth.copy_s(pb * P // 20)},
                },
            }
            for P in (5, 20, 100)
        ],
        "threads_sweep": [{"threads": t, "plain": req(0, 0, 0.1, 16 + dec / 2) | {"decode_tok_s": 1 / truth.token_s(16 + dec / 2, t)}} for t in (1, 2)],
    }
    rows = check(m, bp, [])
    assert len(rows) >= 14
    assert max(abs(r["error"]) for r in rows) < 1e-9, [r for r in rows if abs(r["error"]) >= 1e-9]
    summary = error_summary(rows)
    assert summary["cold_swap_s"]["n"] == 2 and summary["warm_swap_s"]["n"] == 3  # P=5 and 100 predicted; P=20 calibrates the cold swap


def test_bad_input(bundle_of, tmp_path, env):
    from edgeprompt.profile import ProfileConfig, ProfileError, profile_bundles

    b = bundle_of("gguf", "f32")
    out = tmp_path / "r"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ProfileError, match="--force"):
        profile_bundles([b], out, ProfileConfig(**TINY), log=lambda s: None)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(EdgePromptError, match="raspberry-pi-5"):
        profile_bundles([b], tmp_path / "r2", ProfileConfig(**{**TINY, "devices": ["pi-9"]}), log=lambda s: None)
    with pytest.raises(EdgePromptError, match="manifest"):
        profile_bundles([tmp_path], tmp_path / "r3", ProfileConfig(**TINY), log=lambda s: None)
    r = run_cli(["profile", str(b), "--out", str(out)], env=env, check=False)
    assert r.returncode == 2 and "--force" in r.stderr and "Traceback" not in r.stderr
    r = run_cli(["profile", "--list-devices"], env=env)
    assert "raspberry-pi-4" in r.stdout and "phone-midrange" in r.stdout


def test_interrupted_run_keeps_partial_results_saying_what_is_missing(bundle_of, tmp_path, monkeypatch):
    from edgeprompt.profile import ProfileConfig, profile_bundles, run

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "threads_sweep", interrupt)
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        profile_bundles([bundle_of("gguf", "f32")], out, ProfileConfig(**TINY), log=lambda s: None)
    res = json.loads((out / "results.json").read_text())
    assert res["complete"] is False and res["interrupted"] is True
    assert {"bundles", "training", "cost_model", "projections", "report"} <= set(res["missing"]) and "environment" not in res["missing"]
    assert res["bundles"][0]["arms"]["plain"][0]["decode_tok_s"] > 0  # what was measured is kept
    assert "Partial results" in (out / "report.md").read_text()


def test_calibrate_writes_a_profile_the_profiler_reads(bundle_of, tmp_path, env):
    from edgeprompt.profile import devices

    f = tmp_path / "me.json"
    run_cli(["profile", "--calibrate", "--threads", "1", "--name", "this-box", "--out", str(f), str(bundle_of("gguf", "f32"))], env=env)
    d = devices.load(str(f))
    assert d["name"] == "this-box" and d["memory_bandwidth_gbs"]["1"]["kind"] == "measured"
    assert d["compute_gflops"] and d["storage_read_mbs"]
    with pytest.raises(EdgePromptError, match="not a device profile"):
        bad = tmp_path / "bad.json"
        bad.write_text("[1, 2]")
        devices.load(str(bad))
    assert Path(f).stat().st_size > 0


def test_demo_runs_end_to_end_then_reuses_its_tasks_and_bundles(tiny_tied_dir, tmp_path):
    """`edgeprompt demo`'s job on the tiny model: train both methods, export both bundles, classify, profile;
    a second run trains and exports nothing."""
    import csv

    from edgeprompt.core.data import load_dataset
    from edgeprompt.core.tasks import TaskSpec
    from edgeprompt.demo import DEMO_TASKS, run_demo
    from edgeprompt.profile import ProfileConfig

    from .conftest import make_sentences

    src = tmp_path / "data.csv"
    with open(src, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(make_sentences(120))
        w.writerows([(" ".join(["good"] * 150), "positive")] * 30)  # longer than the default cut (96): the demo adapts it
    spec = TaskSpec(template="Text: {text}\nLabel:", instruction="Label the text as negative, positive.\n", labels=["negative", "positive"])
    args = {"source": str(src), "text_column": "text", "label_column": "label", "seed": 0, "dev": 10, "test": 20}
    data = load_dataset(str(src), spec=spec, text_column="text", label_column="label", seed=0, dev=10, test=20)
    cfg = lambda: ProfileConfig(**{**TINY, "tasks": [1], "threads": [1]})  # noqa: E731
    lines: list[str] = []
    r = run_demo(tmp_path, steps=2, log=lines.append, model=tiny_tied_dir, data=data, data_args=args, profile_config=cfg())
    assert {c["task"] for c in r["classified"]} == set(DEMO_TASKS) and len(r["classified"]) == 8
    assert (tmp_path / "edgeprompt-profile" / "report.html").exists() and r["headline"]
    res = json.loads((tmp_path / "edgeprompt-profile" / "results.json").read_text())
    assert [b["format"] for b in res["bundles"]] == ["gguf", "onnx"] and res["complete"]
    assert "skipped" not in res["bundles"][0]["arms"]["virtual_tokens"][0]  # the demo's GGUF carries virtual tokens
    # the demo trains with the defaults `edgeprompt train` adapts to the data, and says so
    from edgeprompt.core.bank import PromptBank

    assert any(line.strip().startswith("max length ") for line in lines), lines
    cut = PromptBank(tmp_path / "edgeprompt-bank").task("tweets-prompt").manifest["training"]["train_config"]["max_length"]
    assert cut > 96 and PromptBank(tmp_path / "edgeprompt-bank").task("tweets-prompt").manifest["training"]["train_config"]["steps"] == 2
    lines.clear()
    r2 = run_demo(tmp_path, steps=2, log=lines.append, model=tiny_tied_dir, data=data, data_args=args, profile_config=cfg())
    said = "\n".join(lines)
    assert said.count("reusing") == 4 and "training" not in said and "exporting" not in said
    assert r2["timings"]["export_s"] < r["timings"]["export_s"]
    onnx_model = json.loads((tmp_path / "tweets-onnx-int8" / "manifest.json").read_text())["model"]
    assert onnx_model["embeddings_dtype"] == "int8" and onnx_model["embeddings_in_graph"]  # the head's copy is the table
    # a bundle exported with other settings (here: the fp32 table of an earlier demo) is exported again
    from edgeprompt.demo import DEMO_BUNDLES, _bundle_is_current

    bank = PromptBank(tmp_path / "edgeprompt-bank")
    fmt, quant, folder, kw = DEMO_BUNDLES[1]
    assert _bundle_is_current(tmp_path / folder, bank, quant, kw)
    assert not _bundle_is_current(tmp_path / folder, bank, quant, {}) and not _bundle_is_current(tmp_path / folder, bank, "int4", kw)
