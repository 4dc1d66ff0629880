"""Property-based fuzzing (hypothesis) of every parser edgeprompt has and of its HTTP layer (issue 10).

Each target takes a case hypothesis draws: arbitrary JSON or bytes, or a valid file of its kind with one key
replaced, removed or added (values chosen to hurt: ``"abc"``, ``1e400``, NaN, -1, 2**70, ``"../x"``,
``/dev/zero``, nesting). A case passes when the target returns or raises one of edgeprompt's typed errors
(:class:`EdgePromptError`); any other exception is *unexpected* and recorded with its case. A case over
:data:`HANG_S` seconds is a hang (``SIGALRM`` cuts it). Readers must not write: the bundle a case opens is
compared, file by file, before and after; the work folder is compared after each target.

    python benchmarks/reliability/fuzz.py --cases 100000 --json fuzz.json     # the full run (minutes)

``run(cases, ...)`` is what ``tests/test_fuzz.py`` calls with a few hundred cases.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from edgeprompt.core.errors import EdgePromptError

HANG_S = 10.0
NASTY = [
    "abc",
    "",
    "1e400",
    -1,
    0,
    2**70,
    -(2**63),
    1e308,
    0.5,
    True,
    None,
    [],
    {},
    "../../etc/passwd",
    "/dev/zero",
    "a\nb",
    "x" * 5000,
    "\x00",
    ["ab"],
    {"a": None},
    [[[[[]]]]],
]
_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40), st.sampled_from(NASTY)
)
JSON = st.recursive(_scalar, lambda kids: st.one_of(st.lists(kids, max_size=5), st.dictionaries(st.text(max_size=12), kids, max_size=5)), max_leaves=20)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:6]):
            out += _paths(v, prefix + (i,))
    return out


@st.composite
def mutated(draw, doc: Any) -> bytes:
    """``doc`` with one place replaced by a hostile value, removed, or given an extra key; or raw junk."""
    kind = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add", "json", "bytes", "truncate"]))
    if kind == "json":
        return json.dumps(draw(JSON)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    raw = json.dumps(doc).encode()
    if kind == "truncate":
        return raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    d = copy.deepcopy(doc)
    paths = _paths(d)
    path = draw(st.sampled_from(paths))
    if not path:
        return json.dumps(draw(JSON)).encode()
    parent = d
    for k in path[:-1]:
        parent = parent[k]
    last = path[-1]
    if kind == "delete" and isinstance(parent, dict):
        del parent[last]
    elif kind == "add" and isinstance(parent[last], dict):
        parent[last][draw(st.text(max_size=10))] = draw(JSON)
    else:
        parent[last] = draw(JSON)
    return json.dumps(d, allow_nan=True).encode()


class _Hang(Exception):
    pass


def _alarm(*_):
    raise _Hang()


@dataclass
class Target:
    name: str
    strategy: Callable[[], st.SearchStrategy]
    check: Callable[[Any], None]


def _tree(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            s = p.lstat()
            out[str(p.relative_to(root))] = (s.st_mode, s.st_size, s.st_mtime_ns)
    return out


class Fixtures:
    """Valid files of every kind (from a real bundle) and the scratch places cases are written to."""

    def __init__(self, bundle: Path, work: Path):
        self.bundle, self.work = bundle, work
        self.manifest = json.loads((bundle / "manifest.json").read_text())
        self.bank_json = json.loads((bundle / "bank" / "bank.json").read_text())
        task = sorted((bundle / "bank" / "tasks").iterdir())[0]
        self.task_dir = task
        self.task_manifest = json.loads((task / "manifest.json").read_text())
        self.probes = json.loads((bundle / "probes" / "probes.json").read_text())
        self.peft = {
            "peft_type": "PROMPT_TUNING",
            "task_type": "CAUSAL_LM",
            "num_virtual_tokens": 4,
            "token_dim": 64,
            "num_layers": 2,
            "num_attention_heads": 4,
        }
        self.state = {
            "format": "edgeprompt.checkpoint",
            "version": 1,
            "step": 10,
            "best_step": 10,
            "best_score": 0.5,
            "best_dev": {"accuracy": 0.5},
            "history": [{"step": 10}],
            "loss_ema": 1.0,
            "wall_s": 3.0,
            "param_groups": [{"lr": 0.1, "params": [0]}],
        }
        self.tensors = (task / "prefix.safetensors").read_bytes()
        self.scratch_bundle = work / "bundle"
        shutil.copytree(bundle, self.scratch_bundle)
        self.scratch_task = work / "bank" / "tasks" / task.name
        shutil.copytree(task, self.scratch_task)


def targets(fx: Fixtures, app_client=None) -> list[Target]:
    from edgeprompt.core import schema
    from edgeprompt.core.bank import read_task_folder
    from edgeprompt.core.bundle import Bundle
    from edgeprompt.core.data import read_rows
    from edgeprompt.core.files import read_safetensors

    def decoder(kind):
        return lambda raw: schema.decode(raw, kind, "fuzz case")

    def bundle_open(raw: bytes) -> None:
        (fx.scratch_bundle / "manifest.json").write_bytes(raw)
        before = _tree(fx.scratch_bundle)
        try:
            b = Bundle.open(fx.scratch_bundle)
            b.probes()
        finally:
            if _tree(fx.scratch_bundle) != before:
                raise AssertionError("opening the bundle wrote to it")

    def task_folder(raw: bytes) -> None:
        (fx.scratch_task / "manifest.json").write_bytes(raw)
        t = read_task_folder(fx.scratch_task)
        t.tensors()

    def safetensors(raw: bytes) -> None:
        p = fx.work / "case.safetensors"
        p.write_bytes(raw)
        read_safetensors(p, "fuzz tensors")

    def rows(ext: str):
        def f(raw: bytes) -> None:
            p = fx.work / f"case{ext}"
            p.write_bytes(raw)
            read_rows(p, "text", "label")

        return f

    cell = st.one_of(st.text(max_size=30), st.sampled_from(["text", "label", '"', "\r\n", "\ufeff", "x" * 200_000]))
    header = st.sampled_from(["text,label", "\ufefftext,label", "label,text", "text", ""])
    csv_text = st.tuples(header, st.lists(st.lists(cell, max_size=4), max_size=8)).map(
        lambda hr: "\n".join([hr[0]] + [",".join(r) for r in hr[1]]).encode("utf-8", "surrogatepass")
    )
    row = st.fixed_dictionaries({"text": st.one_of(st.text(max_size=30), JSON), "label": st.one_of(st.sampled_from(["a", "b"]), JSON)})
    jsonl = st.lists(st.one_of(row, row, JSON), max_size=6).map(lambda vs: "\n".join(json.dumps(v) for v in vs).encode())
    st_header = st.binary(max_size=64).map(lambda b: len(b).to_bytes(8, "little") + b)
    out = [
        Target("bundle manifest (schema)", lambda: mutated(fx.manifest), decoder(schema.BundleManifest)),
        Target("bundle manifest (open)", lambda: mutated(fx.manifest), bundle_open),
        Target("bank.json", lambda: mutated(fx.bank_json), decoder(schema.BankFile)),
        Target("task manifest (folder)", lambda: mutated(fx.task_manifest), task_folder),
        Target("probe set", lambda: mutated(fx.probes), decoder(list[schema.Probe])),
        Target("PEFT adapter config", lambda: mutated(fx.peft), decoder(schema.PeftAdapterConfig)),
        Target("checkpoint state", lambda: mutated(fx.state), decoder(schema.CheckpointState)),
        Target("safetensors", lambda: st.one_of(st.binary(max_size=300), st_header, st.just(fx.tensors[: len(fx.tensors) // 2])), safetensors),
        Target("CSV data", lambda: st.one_of(csv_text, st.binary(max_size=200)), rows(".csv")),
        Target("JSONL data", lambda: st.one_of(jsonl, st.binary(max_size=200)), rows(".jsonl")),
    ]
    if app_client is not None:
        out.append(Target("HTTP", http_requests, app_client))
    return out


FIELDS = [
    "task",
    "text",
    "model",
    "prompt",
    "messages",
    "max_tokens",
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "stream",
    "truncate",
    "n",
]


@st.composite
def http_requests(draw) -> tuple:
    method = draw(st.sampled_from(["GET", "POST", "POST", "POST", "PUT", "DELETE", "OPTIONS", "HEAD"]))
    path = draw(
        st.sampled_from(["/health", "/tasks", "/metrics", "/classify", "/generate", "/v1/models", "/v1/completions", "/v1/chat/completions", "/", "/v1/x"])
    )
    if draw(st.booleans()):
        keys = draw(st.lists(st.sampled_from(FIELDS), max_size=6, unique=True))
        good = {"task": st.sampled_from(["pt", "px", None, "nope"]), "model": st.sampled_from(["pt", "px", "nope"]), "text": st.text(max_size=30)}
        body = {k: draw(st.one_of(good.get(k, JSON), JSON)) for k in keys}
        if "max_tokens" in body and isinstance(body["max_tokens"], int) and body["max_tokens"] > 64:
            body["max_tokens"] = 64  # bounded work per case; the limit itself is fuzzed below it
        raw = json.dumps(body, allow_nan=True).encode()
    else:
        raw = draw(st.binary(max_size=100))
    headers = {}
    if draw(st.booleans()):
        headers["content-type"] = draw(st.sampled_from(["application/json", "text/plain", "", "multipart/form-data; boundary=x"]))
    return method, path, raw, headers


def http_client(rt):
    """A check function driving the ASGI app in-process (Starlette's TestClient): never a 500, always JSON."""
    from starlette.testclient import TestClient

    from edgeprompt.runtimes.server import Limits, make_app

    # entered (one event loop for every case, as uvicorn runs the app), and left when the run ends
    client = TestClient(make_app(rt, Limits(max_new_tokens=64, request_timeout=HANG_S / 2)), raise_server_exceptions=True).__enter__()

    def check(case) -> None:
        method, path, raw, headers = case
        r = client.request(method, path, content=raw, headers=headers)
        if r.status_code >= 500 and r.status_code not in (503, 504):
            raise AssertionError(f"{r.status_code}: {r.text[:300]}")
        if path != "/metrics" or r.status_code != 200:
            if method != "HEAD":
                json.loads(
                    r.text.splitlines()[-1] if r.headers.get("content-type", "").startswith(("text/event-stream", "application/x-ndjson")) else r.text or "{}"
                )

    check.client = client  # the run leaves it when it ends
    return check


def run_target(t: Target, cases: int, seed_: int, log=print) -> dict:
    stats = {"cases": 0, "unexpected": 0, "hangs": 0, "expected_errors": 0, "examples": [], "max_case_s": 0.0}

    @seed(seed_)
    @settings(max_examples=cases, deadline=None, database=None, suppress_health_check=list(HealthCheck), derandomize=False)
    @given(t.strategy())
    def go(case):
        stats["cases"] += 1
        t0 = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, HANG_S)
        try:
            t.check(case)
        except EdgePromptError:
            stats["expected_errors"] += 1
        except _Hang:
            stats["hangs"] += 1
            stats["examples"].append({"hang": repr(case)[:300]})
        except Exception as e:  # noqa: BLE001 - what we are counting
            stats["unexpected"] += 1
            if len(stats["examples"]) < 5:
                stats["examples"].append({"error": f"{type(e).__name__}: {str(e)[:200]}", "case": repr(case)[:300]})
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            stats["max_case_s"] = max(stats["max_case_s"], time.perf_counter() - t0)

    t0 = time.perf_counter()
    go()
    stats["seconds"] = round(time.perf_counter() - t0, 1)
    stats["max_case_s"] = round(stats["max_case_s"], 3)
    log(
        f"  {t.name}: {stats['cases']} cases, {stats['expected_errors']} typed errors, {stats['unexpected']} unexpected, {stats['hangs']} hangs, {stats['seconds']} s"
    )
    return stats


def run(bundle: Path, cases: int = 100_000, seed_: int = 0, http: bool = True, log=print) -> dict:
    """Fuzz every target, ``cases`` in all (split evenly; the HTTP layer gets its share). Returns the figures."""
    old = signal.signal(signal.SIGALRM, _alarm)
    work = Path(tempfile.mkdtemp(prefix="edgeprompt-fuzz-"))
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(str(work / ".hypothesis"))  # hypothesis's own cache: not a write of ours, kept out of the tree
    rt = None
    exits: list = []
    try:
        fx = Fixtures(Path(bundle), work)
        check_http = None
        if http:
            from edgeprompt.runtimes import open_bundle

            rt = open_bundle(bundle, threads=1)
            check_http = http_client(rt)
        ts = targets(fx, check_http)
        if check_http is not None:
            exits.append(check_http.client.__exit__)
        per = max(1, -(-cases // len(ts)))  # at least ``cases`` in all
        watched = Path(bundle).resolve()
        before = _tree(watched)
        cwd_before = _tree(Path.cwd()) if Path.cwd() != Path("/") else {}
        results = {}
        for i, t in enumerate(ts):
            results[t.name] = run_target(t, per, seed_ + i, log)
        after, cwd_after = _tree(watched), (_tree(Path.cwd()) if cwd_before else {})
        changed = sorted({k for k in before.keys() | after.keys() if before.get(k) != after.get(k)})
        changed += sorted({f"./{k}" for k in cwd_before.keys() | cwd_after.keys() if cwd_before.get(k) != cwd_after.get(k)})
        writes = len(changed)
        total = {k: sum(r[k] for r in results.values()) for k in ("cases", "unexpected", "hangs", "expected_errors")}
        return {"targets": results, "total": {**total, "writes_outside": writes}, "written": changed[:10], "hang_s": HANG_S, "seed": seed_}
    finally:
        signal.signal(signal.SIGALRM, old)
        for leave in exits:
            leave(None, None, None)
        if rt is not None:
            rt.close()
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True, help="a bundle (the tiny test bundle, or any): its files seed the cases")
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-http", action="store_true")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    out = run(Path(args.bundle), args.cases, args.seed, http=not args.no_http)
    print(json.dumps(out["total"]))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0 if out["total"]["unexpected"] == out["total"]["hangs"] == out["total"]["writes_outside"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
