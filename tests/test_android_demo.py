"""The Android demo (issue 12): the web app built for the tiny ONNX bundle, run in Debian's headless Chromium with a
phone's profile (android_demo/tests/e2e.mjs, playwright-core), against the Python ONNX runtime on the same bundle.

Checked: the same labels and probabilities (within 1e-3) under a prompt-tuning and a prefix-tuning task; the same
greedy tokens (plain model and both tasks); the same token ids for digits, emoji, accents, CJK and a long text;
a too-long text refused by both; reloaded offline the app still classifies; Chromium finds it installable; and a
GGUF bundle, an unknown task, a damaged model file and a model too large for the device each show a visible error.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgeprompt.core.errors import BundleError, RequestError
from tests.conftest import make_sentences

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "android_demo"
CHROMIUM = "/usr/bin/chromium"

LONG = " ".join(s for s, _ in make_sentences(40, seed=3))  # ~370 tokens: fits the tiny model's 512 positions
TOO_LONG = " ".join(s for s, _ in make_sentences(90, seed=4))  # ~830 tokens: refused
TEXTS = [
    "what a lovely morning",
    "The year 2024 had 366 days; pi is 3.14159 and 1,000,000 > 999.",
    "I love it 😀🎉👍🏽 so much!!",
    "Café naïve résumé — Ångström, Zoë, façade",
    "東京は日本の首都です。我爱北京天安门。",
    "emoji family 👨‍👩‍👧‍👦 and flags 🇫🇷🇯🇵",
    LONG,
]
TOKENIZE = TEXTS + [TOO_LONG, "  leading and trailing  ", "tabs\tand\nnewlines\r\n", "ÅÄÖ åäö ß ẞ İı", "x"]
GEN_TOKENS = 12
#: teacher-forced decoding: the tiny random model's greedy output repeats one token, so the KV cache is checked on
#: the logits after each of these tokens (fed one at a time, as the decode loop feeds its own)
TRACES = [(task, TEXTS[k], "good movie 2024 東京 😀 ok") for task, k in ((None, 0), ("pt", 2), ("px", 4))]


def _need(tool: str, how: str) -> str:
    path = shutil.which(tool) if not os.path.isabs(tool) else (tool if os.path.exists(tool) else None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI installs {tool} (.ci/run: {how}); it is missing")
        pytest.skip(f"no {tool} here ({how}); CI runs this")
    return path


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """android_demo/node_modules, installed from package-lock.json (npm ci) when missing."""
    _need("node", "apt-get install nodejs")
    npm = _need("npm", "apt-get install npm")
    nm = DEMO / "node_modules"
    if not (nm / "playwright-core").is_dir() or not (nm / "onnxruntime-web").is_dir():
        r = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=DEMO, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"npm ci failed in {DEMO}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return nm


@pytest.fixture(scope="module")
def bundles(bundle_of, tiny_bank, tiny_tied_dir, tmp_path_factory) -> dict[str, Path]:
    """The tiny bank's tasks plus ``ptc``: ``pt`` with a calibration (a label prior the app must divide out)."""
    from edgeprompt.core.bank import PromptBank
    from edgeprompt.core.tasks import Calibration
    from edgeprompt.export.writer import ExportConfig, export_bundle

    work = tmp_path_factory.mktemp("calibrated")
    bank = PromptBank(work / "bank")
    shutil.copytree(tiny_bank, bank.root)
    pt = bank.task("pt")
    from edgeprompt.runtimes import open_bundle

    with open_bundle(bundle_of("onnx", "fp32"), backend="onnx") as r:  # a prior leaning to what pt answers most
        top = max(pt.spec.labels, key=[r.classify("pt", x).label for x in TEXTS].count)
    prior = [0.95 if lab == top else 0.05 / (len(pt.spec.labels) - 1) for lab in pt.spec.labels]
    spec = replace(pt.spec, calibration=Calibration(list(np.log(prior))))
    bank.add("ptc", pt.method, pt.tensors(), spec, pt.base_model, overwrite=True)
    out = work / "onnx-fp32"
    export_bundle(out, bank=bank.root, model=tiny_tied_dir, config=ExportConfig(format="onnx", quant="fp32", probes_per_task=4), log=lambda s: None)
    return {"onnx": out, "gguf": bundle_of("gguf", "f32")}


def _python_greedy(rt, task, text, n) -> list[int]:
    """The Python runtime's greedy tokens (its decode loop, with the ids kept)."""
    ids = rt.input_ids(task, text, reserve=n)
    out: list[int] = []
    with rt.backend.sequence(rt.prefix(task)) as seq:
        logits = seq.feed_ids(ids)
        for _ in range(n):
            tok = int(np.argmax(logits[: rt.vocab_size]))
            if tok == rt.eos_token_id:
                break
            out.append(tok)
            logits = seq.feed_ids([tok])
    return out


def _requests() -> list[dict]:
    reqs = [{"task": t, "text": x} for t in ("pt", "px", "ptc") for x in TEXTS]
    reqs += [{"task": None, "text": x, "max_new_tokens": GEN_TOKENS} for x in TEXTS]
    reqs += [{"task": t, "text": x, "max_new_tokens": GEN_TOKENS, "generate": True} for t in ("pt", "px") for x in TEXTS[:2]]
    reqs += [{"task": "pt", "text": TOO_LONG}, {"task": "px", "text": TOO_LONG, "truncate": True}]
    return reqs


@pytest.fixture(scope="module")
def e2e(node_modules, bundles, rt, tmp_path_factory):
    """The app built and served, e2e.mjs run once over every check: its JSON report."""
    _need(CHROMIUM, "apt-get install chromium")
    from edgeprompt.android_demo import build, serve

    rt_encode = rt.encode

    work = tmp_path_factory.mktemp("android-demo")
    app = build(bundles["onnx"], work / "app", node_modules=node_modules)
    gguf_app = shutil.copytree(app, work / "app-gguf")  # a GGUF bundle's manifest dropped into the app
    shutil.copyfile(bundles["gguf"] / "manifest.json", gguf_app / "bundle" / "manifest.json")
    damaged = shutil.copytree(app, work / "app-damaged")  # one byte of the weights flipped after the build
    data = damaged / "bundle" / "model" / "decoder.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))

    servers = {name: serve(path) for name, path in (("app", app), ("gguf", gguf_app), ("damaged", damaged))}
    url = {name: f"http://127.0.0.1:{s.server_address[1]}/" for name, s in servers.items()}
    spec = {
        "url": url["app"],
        "requests": _requests(),
        "tokenize": TOKENIZE,
        "traces": [{"task": t, "text": x, "forced": rt_encode(f)} for t, x, f in TRACES],
        "offline": {"task": "px", "text": TEXTS[0]},
        "installability": True,
        "bad": [
            {"name": "gguf", "url": url["gguf"]},
            {"name": "unknown_task", "url": url["app"] + "?task=nope"},
            {"name": "damaged", "url": url["damaged"]},
            {"name": "too_large", "url": url["app"], "deviceMemory": 0.0001},
        ],
    }
    (work / "spec.json").write_text(json.dumps(spec))
    try:
        r = subprocess.run(["node", str(DEMO / "tests" / "e2e.mjs"), str(work / "spec.json")], capture_output=True, text=True, timeout=300, cwd=DEMO)
        assert r.returncode == 0, f"e2e.mjs failed:\n{r.stderr[-4000:]}"
        report = json.loads(r.stdout)
        report["servers"] = url
        report["headers"] = {
            f: dict(urllib.request.urlopen(url["app"] + f).headers)
            for f in ("", "vendor/ort.wasm.min.mjs", "vendor/ort-wasm-simd-threaded.wasm", "manifest.webmanifest")
        }
    finally:
        for s in servers.values():
            s.shutdown()
    assert report["env"]["state"] == "ready", report["env"]
    return report


@pytest.fixture(scope="module")
def rt(bundles):
    from edgeprompt.runtimes import open_bundle

    with open_bundle(bundles["onnx"], backend="onnx") as r:
        yield r


# -- the build ---------------------------------------------------------------------------------------------------
def test_build_refuses_a_gguf_bundle_naming_the_fix(bundles, tmp_path):
    from edgeprompt.android_demo import build

    with pytest.raises(BundleError, match="--format onnx"):
        build(bundles["gguf"], tmp_path / "app", node_modules=tmp_path / "absent")
    assert not (tmp_path / "app").exists()


def test_build_refuses_a_folder_that_is_not_a_build(bundles, tmp_path, node_modules):
    from edgeprompt.android_demo import AppBuildError, build

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(AppBuildError, match="not an android-demo build"):
        build(bundles["onnx"], tmp_path / "mine", node_modules=node_modules)
    with pytest.raises(AppBuildError, match="npm ci"):
        build(bundles["onnx"], tmp_path / "app", node_modules=tmp_path / "absent")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_built_app_lists_the_manifest_files_and_pinned_runtime(bundles, tmp_path, node_modules):
    from edgeprompt.android_demo import APP_CONFIG_FILE, build, pinned_versions

    out = build(bundles["onnx"], tmp_path / "app", node_modules=node_modules)
    cfg = json.loads((out / APP_CONFIG_FILE).read_text())
    manifest = json.loads((bundles["onnx"] / "manifest.json").read_text())
    assert cfg["bundle"]["files"] == {k: v for k, v in manifest["files"].items() if not k.startswith("probes/")}
    assert cfg["npm"] == pinned_versions() == {"onnxruntime-web": "1.30.0", "@huggingface/tokenizers": "0.2.0"}
    assert (out / "vendor" / "ort-wasm-simd-threaded.wasm").stat().st_size > 10_000_000
    assert cfg["build_id"] in (out / "sw.js").read_text()
    for size in (192, 512):
        png = (out / "icons" / f"icon-{size}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == size
    again = build(bundles["onnx"], out, node_modules=node_modules)  # a rebuild replaces the previous build
    assert json.loads((again / APP_CONFIG_FILE).read_text())["build_id"] == cfg["build_id"]


def test_server_sends_isolation_headers_and_types(e2e):
    h = {k: {a.lower(): b for a, b in v.items()} for k, v in e2e["headers"].items()}
    for f, hdr in h.items():
        assert hdr["cross-origin-opener-policy"] == "same-origin" and hdr["cross-origin-embedder-policy"] == "require-corp", f
    assert h["vendor/ort.wasm.min.mjs"]["content-type"] == "text/javascript"
    assert h["vendor/ort-wasm-simd-threaded.wasm"]["content-type"] == "application/wasm"
    assert h["manifest.webmanifest"]["content-type"] == "application/manifest+json"


# -- the browser against the Python runtime ----------------------------------------------------------------------
def test_page_is_isolated_multithreaded_and_controlled(e2e):
    env = e2e["env"]
    assert env["crossOriginIsolated"] is True and env["controlled"] is True and env["ortVersion"] == "1.30.0"
    # the cores this process may run on (a cpuset or taskset can leave one of many): the browser inherits them
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if usable > 1:
        assert env["threads"] > 1, env  # onnxruntime-web runs multi-threaded
    assert not [c for c in e2e["console"] if "pageerror" in c], e2e["console"]


def test_tokenizer_ids_equal_pythons(e2e, rt):
    for text, ids in zip(TOKENIZE, e2e["tokens"]):
        assert ids == rt.encode(text), text[:40]
    assert len(e2e["tokens"][TOKENIZE.index(LONG)]) > 300


def test_classification_equals_the_python_runtime(e2e, rt):
    reqs = _requests()
    seen = 0
    for req, got in zip(reqs, e2e["results"]):
        if req["task"] is None or req.get("generate") or req["text"] == TOO_LONG:
            continue
        want = rt.classify(req["task"], req["text"])
        assert got["ids"] == rt.input_ids(req["task"], req["text"]), req
        assert got["label"] == want.label, req
        for lab, p in want.probabilities.items():
            assert abs(got["probabilities"][lab] - p) < 1e-3, (req, lab)
            assert abs(got["logprobs"][lab] - want.logprobs[lab]) < 1e-3, (req, lab)
        seen += 1
    assert seen == 3 * len(TEXTS)
    # the calibrated task decides otherwise than the same prompt without it, in the browser as in Python
    by = {t: [r["label"] for q, r in zip(reqs, e2e["results"]) if q["task"] == t and not q.get("generate") and q["text"] != TOO_LONG] for t in ("pt", "ptc")}
    assert by["pt"] != by["ptc"]
    first = next(r for r in e2e["results"] if r.get("task") == "pt")
    assert first["timings"]["prefix_cached"] is False  # computed once, then kept
    assert all(r["timings"]["prefix_cached"] for r in e2e["results"][1 : len(TEXTS)])


def test_greedy_tokens_equal_the_python_runtime(e2e, rt):
    seen = 0
    for req, got in zip(_requests(), e2e["results"]):
        if not (req["task"] is None or req.get("generate")):
            continue
        assert got["tokens"] == _python_greedy(rt, req["task"], req["text"], GEN_TOKENS), req
        assert got["text"] == rt.generate(req["task"], req["text"], max_new_tokens=GEN_TOKENS, stream=False), req
        if not req.get("generate"):  # through the form: the text streamed onto the page
            assert got["streamed"] == got["text"], req
        seen += 1
    assert seen == len(TEXTS) + 4


def test_decode_loop_logits_equal_the_python_runtime(e2e, rt):
    assert len(e2e["traces"]) == len(TRACES)
    for (task, text, forced), steps in zip(TRACES, e2e["traces"]):
        ids = rt.input_ids(task, text)
        with rt.backend.sequence(rt.prefix(task)) as seq:
            want = [seq.feed_ids(ids)[: rt.vocab_size]] + [seq.feed_ids([t])[: rt.vocab_size] for t in rt.encode(forced)]
        assert len(steps) == len(want) > 10
        assert np.abs(np.array(steps) - np.stack(want)).max() < 1e-4, (task, text)


def test_too_long_text_refused_as_python_does(e2e, rt):
    refused, cut = e2e["results"][-2:]
    with pytest.raises(RequestError, match="exceeds the context of 512"):
        rt.classify("pt", TOO_LONG)
    assert refused["kind"] == "request" and "exceeds the context of 512" in refused["error"] and refused["error_visible"]
    want = rt.classify("px", TOO_LONG, truncate=True)
    assert cut["label"] == want.label and abs(cut["probabilities"][want.label] - want.probabilities[want.label]) < 1e-3


def test_an_int8_bundle_runs_in_the_browser(bundle_of, node_modules, tmp_path):
    """A phone's bundle is int8 or int4 (MatMulNBits) with an int8 embedding table (rows times a scale, read back the
    same way as the Python runtime does): onnxruntime-web's CPU wasm runs it. Native onnxruntime rounds
    activations to int8 in those matmuls (accuracy_level 4) and the wasm build does not, so the tolerance is looser."""
    _need(CHROMIUM, "apt-get install chromium")
    from edgeprompt.android_demo import build, serve
    from edgeprompt.runtimes import open_bundle

    bundle = bundle_of("onnx", "int8", embeddings="int8")  # the phone's smallest: int8 weights and embedding rows
    srv = serve(build(bundle, tmp_path / "app", node_modules=node_modules))
    reqs = [{"task": t, "text": x} for t in ("pt", "px") for x in TEXTS[:4]]
    (tmp_path / "spec.json").write_text(json.dumps({"url": f"http://127.0.0.1:{srv.server_address[1]}/", "requests": reqs}))
    try:
        r = subprocess.run(["node", str(DEMO / "tests" / "e2e.mjs"), str(tmp_path / "spec.json")], capture_output=True, text=True, timeout=300, cwd=DEMO)
    finally:
        srv.shutdown()
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout)["results"]
    with open_bundle(bundle, backend="onnx") as rt:
        for req, g in zip(reqs, got):
            want = rt.classify(req["task"], req["text"])
            assert max(abs(g["probabilities"][k] - p) for k, p in want.probabilities.items()) < 5e-3, req
            if abs(want.probabilities["positive"] - 0.5) > 5e-3:
                assert g["label"] == want.label, req


def test_a_transcoded_int4_bundle_runs_the_gguf_weights_in_the_browser(bundle_of, node_modules, tmp_path):
    """The phone's int4 bundle: a GGUF's Q4_0 blocks and its Q8_0 token_embd (as the tied LM head, and as the int8
    embedding table) carried over, not re-quantized. With fp32 activations (``--accuracy-level 0``) native
    onnxruntime and onnxruntime-web compute the same sums of the same weights, so the decode loop's logits agree as
    closely as on an fp32 bundle (1e-4), and the greedy tokens are the same. The default level 4 (int8
    activations, native's integer kernels) changes nothing in the browser: the wasm build computes in fp32 either
    way, so a level-4 bundle in the browser gives the level-0 bundle's logits too."""
    _need(CHROMIUM, "apt-get install chromium")
    from edgeprompt.android_demo import build, serve
    from edgeprompt.export.writer import ExportConfig, export_bundle
    from edgeprompt.runtimes import open_bundle

    gguf = bundle_of("gguf", "q4_0") / "model" / "model.gguf"
    made = {}
    for level in (0, 4):
        cfg = ExportConfig(format="onnx", quant="int4", embeddings="int8", accuracy_level=level, probes_per_task=4)
        made[level] = export_bundle(tmp_path / f"int4-{level}", bank=None, model=gguf, config=cfg, log=lambda s: None).path
        m = json.loads((made[level] / "manifest.json").read_text())["model"]
        assert m["accuracy_level"] == level and m["transcoded"]["Q8_0"] == 1 and not m["transcoded"].get("left"), m
        assert m["embeddings_in_graph"]  # the LM head's weights are the table's bytes: onnxruntime-web gets that file too
    with open_bundle(made[0], backend="onnx") as rt:
        traces = [(x, "good movie 2024 東京 😀 ok") for x in TEXTS[:2]]
        spec = {
            "requests": [{"task": None, "text": x, "max_new_tokens": 6} for x in TEXTS[:2]],
            "traces": [{"task": None, "text": x, "forced": rt.encode(f)} for x, f in traces],
        }
        for level, bundle in made.items():
            srv = serve(build(bundle, tmp_path / f"app-{level}", node_modules=node_modules))
            (tmp_path / "spec.json").write_text(json.dumps({"url": f"http://127.0.0.1:{srv.server_address[1]}/", **spec}))
            try:
                r = subprocess.run(
                    ["node", str(DEMO / "tests" / "e2e.mjs"), str(tmp_path / "spec.json")], capture_output=True, text=True, timeout=300, cwd=DEMO
                )
            finally:
                srv.shutdown()
            assert r.returncode == 0, r.stderr[-3000:]
            rep = json.loads(r.stdout)
            for (text, forced), steps in zip(traces, rep["traces"]):
                ids = rt.input_ids(None, text)
                with rt.backend.sequence(rt.prefix(None)) as seq:
                    want = [seq.feed_ids(ids)[: rt.vocab_size]] + [seq.feed_ids([t])[: rt.vocab_size] for t in rt.encode(forced)]
                assert len(steps) == len(want) > 5
                assert np.abs(np.array(steps) - np.stack(want)).max() < 1e-4, (level, text)
            for req, got in zip(spec["requests"], rep["results"]):
                assert got["tokens"] == _python_greedy(rt, None, req["text"], 6), (level, req)
        with open_bundle(made[4], backend="onnx") as native4:  # native onnxruntime does round at level 4: the check bites
            ids = rt.input_ids(None, TEXTS[0])
            with rt.backend.sequence(None) as a, native4.backend.sequence(None) as b:
                assert np.abs(a.feed_ids(ids) - b.feed_ids(ids)).max() > 1e-3


# -- installable, offline, and errors that show --------------------------------------------------------------------
def test_reloaded_offline_still_classifies(e2e, rt):
    off = e2e["offline"]
    assert off["controlled_before"] and off["state"] == "ready", off
    # served by the service worker alone, the page is still cross-origin isolated: it adds COOP/COEP
    assert off["info"]["crossOriginIsolated"] is True and off["info"]["controlled"] is True
    want = rt.classify("px", TEXTS[0])
    assert off["result"]["label"] == want.label and abs(off["result"]["probabilities"][want.label] - want.probabilities[want.label]) < 1e-3


def test_chromium_finds_it_installable(e2e):
    inst = e2e["installability"]
    assert inst["errors"] == [] and inst["manifest_errors"] == [], inst


@pytest.mark.parametrize(
    "case, kind, words",
    [
        ("gguf", "bundle", "needs an ONNX bundle"),
        ("unknown_task", "request", 'unknown task "nope"'),
        ("damaged", "integrity", "model/decoder.onnx.data is damaged"),
        ("too_large", "memory", "too large for this device"),
    ],
)
def test_bad_input_shows_a_visible_error(e2e, case, kind, words):
    got = next(b for b in e2e["bad"] if b["name"] == case)
    assert got["error"] and words in got["error"], got
    assert got["kind"] == kind and got["body_chars"] > 40, got
    if case != "unknown_task":
        assert got["state"] == "error", got
    if case == "too_large":  # said before loading: no model file was fetched
        assert not [u for u in got["requests"] if "/model/" in u], got["requests"]
