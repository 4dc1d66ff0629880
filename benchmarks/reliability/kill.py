"""Kill -9 crash-consistency trials (issue 10, "Prove it").

For each operation that writes state (a training checkpoint, a bank task added over an older version,
a bank task removed, a PEFT adapter imported over a task, a bundle exported over an older bundle), every
trial:

1. copies a prepared *old* state into a fresh folder;
2. starts a child process (this file, ``--child OP PARAMS``) that imports what it needs, loads the model,
   prints ``@@kill start`` just before the write begins, performs the operation with the library's own
   code, prints ``@@kill done`` and then waits (so the kill always meets a live process);
3. sends SIGKILL after a random delay after ``start``, drawn uniformly from [0, 1.2 x the write's
   duration], the duration measured first by one uncut run (which also records the *new* state);
4. lists the writer's leftovers next to the target (``.NAME.tmp-*`` folders and their ``.lock``,
   ``.NAME.old-*`` copies set aside, ``.NAME.removed``, ``.NAME.*.tmp`` files): any leftover means the
   kill landed inside the write window; ``done`` on the child's stdout means it landed after the
   operation had completed;
5. opens the state the way the library's readers do, running the recovery they run:
   ``PromptBank.task`` (which calls ``recover_directory``) for the bank; ``recover_directory`` then
   ``train(resume=True)`` for a checkpoint (as ``train_task`` and ``train`` do); ``open_bundle`` with
   every file's sha256 and the parity probes (what ``edgeprompt verify`` does; bundle readers run no
   recovery) for a bundle;
6. classifies it: ``old`` or ``new`` when it opens and matches one of them exactly (tensors array for
   array, manifests key for key but their timestamps, bundles by manifest hash or by every file's hash);
   ``torn`` otherwise: a read that raises, a state that matches neither, or one mixing both.

The bank operations need no model, only its shapes: SmolLM2-135M's, so the files written are of a real
size (a prefix task of P=64 is 2.9 MB). The checkpoint and the export use the tests' tiny random llama
(``tests/conftest.py``), a prefix-tuning run and a GGUF f32 bundle. Nothing is downloaded.

    python benchmarks/reliability/kill.py --trials 50 --json kill.json
    python benchmarks/reliability/kill.py --trials 5 --ops bank_add,bank_remove
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
OPS = ("checkpoint", "bank_add", "bank_remove", "import_peft", "export")
MARK = "@@kill"
STRETCH = 1.2  # delays are drawn over [0, STRETCH x the measured write duration]
CHILD_TIMEOUT_S = 300.0
MAX_EXAMPLES = 5

# SmolLM2-135M's shapes: the bank operations write tasks of a real size without loading a model
SYNTHETIC_INFO = dict(
    fingerprint="5" * 64,
    name="synthetic (SmolLM2-135M shapes)",
    architecture="llama",
    hidden_size=576,
    num_layers=30,
    num_kv_heads=3,
    head_dim=64,
    vocab_size=49152,
)
BANK_P = 64
TASK = "t"  # the task the bank operations write
OTHER = "other"  # a task they must leave alone
TRAIN_CONFIG = dict(steps=4, batch_size=4, eval_every=4, eval_examples=10, checkpoint_every=2, max_length=32, warmup_steps=1, seed=0)
TRAIN_METHOD, TRAIN_METHOD_CONFIG = "prefix_tuning", {"num_virtual_tokens": 8}
EXPORT_OLD_TASKS, EXPORT_NEW_TASKS = ["pt"], ["pt", "px"]


def _spec():
    from edgeprompt.core.tasks import TaskSpec

    return TaskSpec(template="Text: {text}\nLabel:", instruction="Label the text as negative, positive.\n", labels=["negative", "positive"])


def _announce(what: str) -> None:
    sys.stdout.write(f"{MARK} {what}\n")
    sys.stdout.flush()


def _wait_for_kill() -> None:
    sys.stdin.read()  # the parent never writes: this returns only if the parent goes away
    os._exit(3)


# -- the state readers and comparisons -------------------------------------------------------


def _strip(obj: Any, keys: tuple[str, ...]) -> Any:
    """``obj`` without the given keys at any depth (timestamps and wall times differ between runs)."""
    if isinstance(obj, dict):
        return {k: _strip(v, keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [_strip(v, keys) for v in obj]
    return obj


def _same_arrays(a: dict, b: dict) -> bool:
    import numpy as np

    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and np.array_equal(a[k], b[k]) for k in a)


def _leftovers(target: Path) -> list[str]:
    """The writer's temporaries and set-aside copies of ``target`` (all named ``.NAME.*`` beside it), and
    dot-files inside it: any of them after a kill means the kill landed inside the write window."""
    found = []
    if target.parent.is_dir():
        found += sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))
    if target.is_dir():
        found += sorted(f"{target.name}/{p.name}" for p in target.iterdir() if p.name.startswith("."))
    return found


def _read_task(bank_root: Path, name: str) -> tuple[dict, dict]:
    from edgeprompt.core.bank import PromptBank

    t = PromptBank(bank_root).task(name)
    return t.manifest, t.tensors()


def _bundle_files(path: Path) -> set[str]:
    return {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}


# -- the operations -----------------------------------------------------------------------------


class Op:
    """One operation under test: the old state, the child's work, and how to tell old, new and torn apart."""

    name = ""

    def __init__(self, work: Path, ctx: "Context"):
        self.work, self.ctx = work, ctx
        self.template = work / "old"  # the prepared old state, copied into each trial's folder
        self.new_ref: Any = None

    def prepare(self) -> None:
        raise NotImplementedError

    def target(self, trial: Path) -> Path:
        """The folder the operation replaces (its parent holds the writer's leftovers)."""
        raise NotImplementedError

    def params(self, trial: Path) -> dict:
        raise NotImplementedError

    def learn_new(self, trial: Path) -> None:
        """Record the new state an uncut run left in ``trial`` (and check it is what the operation should write)."""
        raise NotImplementedError

    def classify(self, trial: Path) -> tuple[str, str]:
        """``("old" | "new" | "torn", detail)`` of the state in ``trial``, opened as the library's readers open it."""
        raise NotImplementedError

    def fresh(self, trial: Path) -> None:
        shutil.copytree(self.template, trial, symlinks=True)


class _BankOp(Op):
    """A bank holding ``other`` and ``t`` (v1, a prefix-tuning task of SmolLM2 shapes) as the old state."""

    def prepare(self) -> None:
        import numpy as np

        from edgeprompt.core.bank import PromptBank
        from edgeprompt.core.files import atomic_write_safetensors
        from edgeprompt.core.model_info import ModelInfo

        info = ModelInfo(**SYNTHETIC_INFO)
        rng = np.random.default_rng(0)
        kv_shape = (info.num_layers, 2, info.num_kv_heads, BANK_P, info.head_dim)
        self.v1 = {"kv_prefix": rng.standard_normal(kv_shape, dtype=np.float32)}
        self.v2 = {"kv_prefix": rng.standard_normal(kv_shape, dtype=np.float32)}
        self.other = {"prompt_embeddings": rng.standard_normal((20, info.hidden_size), dtype=np.float32)}
        bank = PromptBank(self.template / "bank")
        bank.add(OTHER, "prompt_tuning", self.other, _spec(), info)
        bank.add(TASK, "prefix_tuning", self.v1, _spec(), info, extra={"kill_version": 1})
        self.old_manifest = bank.task(TASK).manifest
        self.other_manifest = bank.task(OTHER).manifest
        self.v2_file = self.work / "v2.safetensors"
        atomic_write_safetensors(self.v2_file, self.v2)

    def target(self, trial: Path) -> Path:
        return trial / "bank" / "tasks" / TASK

    def _others_intact(self, trial: Path) -> str:
        m, t = _read_task(trial / "bank", OTHER)
        return "" if m == self.other_manifest and _same_arrays(t, self.other) else f"task {OTHER!r}, which the operation does not touch, changed"

    def _names(self, trial: Path) -> list[str]:
        from edgeprompt.core.bank import PromptBank

        return PromptBank(trial / "bank").names()

    def learn_new(self, trial: Path) -> None:
        m, t = _read_task(trial / "bank", TASK)
        self.new_ref = (m, t)

    def classify(self, trial: Path) -> tuple[str, str]:
        manifest, tensors = _read_task(trial / "bank", TASK)
        names = self._names(trial)
        if names != sorted([OTHER, TASK]):
            return "torn", f"the bank lists {names}"
        if bad := self._others_intact(trial):
            return "torn", bad
        if manifest == self.old_manifest and _same_arrays(tensors, self.v1):
            return "old", ""
        new_m, new_t = self.new_ref
        if _strip(manifest, ("created",)) == _strip(new_m, ("created",)) and _same_arrays(tensors, new_t):
            return "new", ""
        mix = f"manifest is {'v1' if manifest == self.old_manifest else 'v2' if _strip(manifest, ('created',)) == _strip(new_m, ('created',)) else 'neither'}"
        arr = "v1" if _same_arrays(tensors, self.v1) else "v2" if _same_arrays(tensors, new_t) else "neither"
        return "torn", f"task {TASK!r} opens with a {mix} and tensors of {arr}"


class BankAdd(_BankOp):
    """``PromptBank.add(t, v2, overwrite=True)`` over task ``t`` v1."""

    name = "bank_add"

    def params(self, trial: Path) -> dict:
        return {"bank": str(trial / "bank"), "tensors": str(self.v2_file)}

    def learn_new(self, trial: Path) -> None:
        super().learn_new(trial)
        m, t = self.new_ref
        if not (m.get("kill_version") == 2 and _same_arrays(t, self.v2)):
            raise RuntimeError("an uncut bank add did not write task v2")


class BankRemove(_BankOp):
    """``PromptBank.remove(t)``: the new state has no task ``t``."""

    name = "bank_remove"

    def params(self, trial: Path) -> dict:
        return {"bank": str(trial / "bank")}

    def learn_new(self, trial: Path) -> None:
        if self._names(trial) != [OTHER]:
            raise RuntimeError("an uncut bank remove left the task")

    def classify(self, trial: Path) -> tuple[str, str]:
        from edgeprompt.core.errors import BankError

        names = self._names(trial)
        if bad := self._others_intact(trial):
            return "torn", bad
        if names == [OTHER]:
            try:
                _read_task(trial / "bank", TASK)
            except BankError:
                return "new", ""
            return "torn", f"task {TASK!r} is not listed but opens"
        if names != sorted([OTHER, TASK]):
            return "torn", f"the bank lists {names}"
        manifest, tensors = _read_task(trial / "bank", TASK)
        if manifest == self.old_manifest and _same_arrays(tensors, self.v1):
            return "old", ""
        return "torn", f"task {TASK!r} is listed but is not the old one"


class ImportPeft(_BankOp):
    """``import_peft`` of a PEFT prefix-tuning adapter (v2, written by ``export_peft``) over task ``t`` v1."""

    name = "import_peft"

    def prepare(self) -> None:
        super().prepare()
        from edgeprompt.core.bank import PromptBank
        from edgeprompt.core.model_info import ModelInfo
        from edgeprompt.train.peft_interop import export_peft, read_peft

        info = ModelInfo(**SYNTHETIC_INFO)
        scratch = PromptBank(self.work / "v2-bank")
        task = scratch.add(TASK, "prefix_tuning", self.v2, _spec(), info)
        self.peft_dir = export_peft(task, self.work / "peft-v2", "synthetic-smollm2-shapes", info)
        self.expected = read_peft(self.peft_dir, info)[1]
        if not _same_arrays(self.expected, self.v2):
            raise RuntimeError("the PEFT adapter does not hold v2")

    def params(self, trial: Path) -> dict:
        return {"bank": str(trial / "bank"), "peft": str(self.peft_dir)}

    def learn_new(self, trial: Path) -> None:
        super().learn_new(trial)
        m, t = self.new_ref
        if not (m.get("source") == "peft" and _same_arrays(t, self.v2)):
            raise RuntimeError("an uncut import-peft did not write the adapter as the task")


class Checkpoint(Op):
    """A resumed prefix-tuning run of 4 steps on the tiny llama: the old state is its checkpoint at step 2,
    the new one the checkpoint it writes at step 4 (``train_task``'s layout: ``BANK/.checkpoints/NAME``)."""

    name = "checkpoint"

    def prepare(self) -> None:
        self.model = self.ctx.tiny_model()
        self.csv = self.ctx.data_csv()
        # the old state: a run from scratch, stopped (killed) once its step-2 checkpoint is written
        self.template.mkdir(parents=True)
        err, _ = self.ctx.run_child(self.name, {**self.params(self.template), "resume": False})
        if err:
            raise RuntimeError(f"could not write the step-2 checkpoint: {err}")
        if _leftovers(self.target(self.template)):
            raise RuntimeError(f"the step-2 checkpoint has leftovers: {_leftovers(self.target(self.template))}")
        self.old = self._read(self.template)
        if self.old[0]["step"] != 2:
            raise RuntimeError(f"the old checkpoint is at step {self.old[0]['step']}, not 2")

    def target(self, trial: Path) -> Path:
        return trial / "bank" / ".checkpoints" / TASK

    def params(self, trial: Path) -> dict:
        return {
            "model": str(self.model),
            "csv": str(self.csv),
            "ckpt": str(self.target(trial)),
            "resume": True,
            "train_config": TRAIN_CONFIG,
            "method": TRAIN_METHOD,
            "method_config": TRAIN_METHOD_CONFIG,
        }

    def _read(self, trial: Path) -> tuple[dict, dict]:
        from edgeprompt.core.files import read_json, read_safetensors

        ckpt = self.target(trial)
        return read_json(ckpt / "state.json", "checkpoint state"), read_safetensors(ckpt / "tensors.safetensors", "checkpoint tensors")

    def learn_new(self, trial: Path) -> None:
        self.new_ref = self._read(trial)
        if self.new_ref[0]["step"] != TRAIN_CONFIG["steps"]:
            raise RuntimeError(f"an uncut resumed run wrote a checkpoint at step {self.new_ref[0]['step']}")

    def classify(self, trial: Path) -> tuple[str, str]:
        from edgeprompt.core.files import recover_directory

        ckpt = self.target(trial)
        recover_directory(ckpt)  # what train(resume=True) and train_task do first
        state, tensors = self._read(trial)
        volatile = ("wall_s",)
        if state == self.old[0] and _same_arrays(tensors, self.old[1]):
            outcome = "old"
        elif _strip(state, volatile) == _strip(self.new_ref[0], volatile) and _same_arrays(tensors, self.new_ref[1]):
            outcome = "new"
        else:
            return "torn", f"the checkpoint (state step {state.get('step')}) matches neither step 2 nor step 4 exactly"
        # and it resumes through the library's loader (from step 2 this trains the last two steps)
        result = self.ctx.resume(self.params(trial))
        if result.steps != TRAIN_CONFIG["steps"]:
            return "torn", f"resuming the {outcome} checkpoint ended at step {result.steps}"
        return outcome, ""


class Export(Op):
    """``edgeprompt export --overwrite`` (GGUF f32, tasks pt and px) over a bundle of task pt alone."""

    name = "export"

    def prepare(self) -> None:
        from edgeprompt.export.writer import ExportConfig, export_bundle

        self.model = self.ctx.tiny_model(tied=True)
        self.bank = self.ctx.export_bank()
        cfg = ExportConfig(format="gguf", quant="f32", tasks=EXPORT_OLD_TASKS, probes_per_task=2, threads=1)
        export_bundle(self.target(self.template), bank=self.bank, model=self.model, config=cfg, log=lambda s: None)
        self.old_sha = hashlib.sha256((self.target(self.template) / "manifest.json").read_bytes()).hexdigest()

    def target(self, trial: Path) -> Path:
        return trial / "bundle"

    def params(self, trial: Path) -> dict:
        return {"out": str(self.target(trial)), "bank": str(self.bank), "model": str(self.model), "tasks": EXPORT_NEW_TASKS}

    def _open(self, trial: Path) -> dict:
        """Open the bundle as ``edgeprompt verify`` does: the runtime, every file's sha256, the parity probes."""
        from edgeprompt.core.errors import EdgePromptError
        from edgeprompt.core.parity import judge
        from edgeprompt.runtimes import open_bundle

        rt = open_bundle(self.target(trial), threads=1)
        try:
            rt.bundle.verify_files()
            verdicts = judge(rt.check_parity(), rt.bundle.parity())
        finally:
            rt.close()
        if not all(v.ok for v in verdicts.values()):
            raise EdgePromptError(f"parity failed for {[t for t, v in verdicts.items() if not v.ok]}")
        return rt.bundle.manifest

    def learn_new(self, trial: Path) -> None:
        m = self._open(trial)
        if sorted(m["tasks"]) != sorted(EXPORT_NEW_TASKS):
            raise RuntimeError(f"an uncut export wrote tasks {sorted(m['tasks'])}")
        self.new_ref = m

    def classify(self, trial: Path) -> tuple[str, str]:
        out = self.target(trial)
        if not out.exists():
            aside = [p.name for p in out.parent.glob(f".{out.name}.old-*")]
            return "torn", "no bundle at the output" + (f"; the previous one is renamed aside as {aside}" if aside else "")
        manifest = self._open(trial)
        unlisted = _bundle_files(out) - set(manifest["files"]) - {"manifest.json"}
        if unlisted:
            return "torn", f"the bundle holds files its manifest does not list: {sorted(unlisted)[:5]}"
        if hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest() == self.old_sha:
            return "old", ""
        if manifest["files"] == self.new_ref["files"] and manifest["tasks"] == self.new_ref["tasks"]:
            return "new", ""
        return "torn", "the bundle verifies but is neither the old nor the new one"


OP_CLASSES: dict[str, type[Op]] = {c.name: c for c in (Checkpoint, BankAdd, BankRemove, ImportPeft, Export)}


# -- the children -------------------------------------------------------------------------------


def _train_setup(p: dict):
    """The model, data, method config and train config of the checkpoint runs (the child's and the checker's)."""
    from edgeprompt.core.data import load_dataset
    from edgeprompt.train.loop import TrainConfig
    from edgeprompt.train.models import FrozenLM

    lm = FrozenLM.load(p["model"])
    data = load_dataset(p["csv"], spec=_spec(), text_column="text", label_column="label", seed=0, dev=10, test=20)
    return lm, data, _method_config(p), TrainConfig(**p["train_config"])


def _method_config(p: dict):
    """A fresh method config (training may fill in its ``init_text``)."""
    from edgeprompt.core.methods import config_from_dict, get_method

    return config_from_dict(get_method(p["method"]).config_cls, dict(p["method_config"]))


def _child_checkpoint(p: dict) -> None:
    import torch

    import edgeprompt.train.loop as loop

    torch.set_num_threads(1)
    lm, data, mcfg, cfg = _train_setup(p)
    real = loop._save_checkpoint

    def announced(*a, **kw):
        _announce("start")
        real(*a, **kw)
        _announce("done")
        _wait_for_kill()  # one checkpoint per run: the step-2 one from scratch, the step-4 one resumed

    loop._save_checkpoint = announced
    loop.train(lm, data, p["method"], mcfg, cfg, checkpoint_dir=p["ckpt"], resume=p["resume"], progress=False)
    raise RuntimeError("train returned without writing a checkpoint")


def _child_bank(op: str, p: dict) -> None:
    from edgeprompt.core.bank import PromptBank
    from edgeprompt.core.files import read_safetensors

    bank = PromptBank(p["bank"])
    info = bank.base_model()
    if op == "bank_add":
        tensors = read_safetensors(p["tensors"], "v2")
        _announce("start")
        bank.add(TASK, "prefix_tuning", tensors, _spec(), info, extra={"kill_version": 2}, overwrite=True)
    elif op == "bank_remove":
        _announce("start")
        bank.remove(TASK)
    else:
        from edgeprompt.train.peft_interop import import_peft

        _announce("start")
        import_peft(p["peft"], bank, TASK, info, _spec(), overwrite=True)
    _announce("done")


def _child_export(p: dict) -> None:
    import torch

    import edgeprompt.export.writer as writer

    torch.set_num_threads(1)
    real = writer.atomic_directory

    @contextlib.contextmanager
    def announced(final):
        _announce("start")  # after the model is loaded and checked: the bundle's folder is begun now
        with real(final) as tmp:
            yield tmp

    writer.atomic_directory = announced
    cfg = writer.ExportConfig(format="gguf", quant="f32", tasks=p["tasks"], probes_per_task=2, threads=1)
    writer.export_bundle(p["out"], bank=p["bank"], model=p["model"], config=cfg, overwrite=True, log=lambda s: None)
    _announce("done")


def _child(op: str, p: dict) -> None:
    if op == "checkpoint":
        _child_checkpoint(p)
    elif op == "export":
        _child_export(p)
    else:
        _child_bank(op, p)
    _wait_for_kill()


# -- the parent ---------------------------------------------------------------------------------


def _conftest():
    """The tests' helpers (the tiny llama, its data and bank), loaded from their file: the repository's
    root is not put on ``sys.path``, where its ``edgeprompt`` folder would shadow the installed package."""
    name = "edgeprompt_kill_conftest"
    if name not in sys.modules:
        import importlib.util

        spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "conftest.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


class Context:
    """What the operations share: the work folder, the children's environment, the tiny models."""

    def __init__(self, work: Path, log: Callable[[str], None]):
        self.work, self.log = work, log
        self.env = dict(os.environ)
        self.env.update(
            EDGEPROMPT_CACHE=str(work / "cache"),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            TOKENIZERS_PARALLELISM="false",
        )
        self.env.pop("EDGEPROMPT_BANK", None)
        import edgeprompt

        root = Path(edgeprompt.__file__).parent.parent
        if root.name not in ("site-packages", "dist-packages"):  # a source tree: the children import the same edgeprompt
            self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), self.env.get("PYTHONPATH")]))
        self._made: dict[str, Any] = {}

    def _once(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    def tiny_model(self, tied: bool = False) -> Path:
        return self._once(f"model-{tied}", lambda: _conftest().build_tiny_model(self.work / ("tiny-tied" if tied else "tiny"), tie=tied))

    def data_csv(self) -> Path:
        import csv

        def make() -> Path:
            p = self.work / "data.csv"
            with open(p, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["text", "label"])
                w.writerows(_conftest().make_sentences(120))
            return p

        return self._once("csv", make)

    def export_bank(self) -> Path:
        return self._once("bank", lambda: _conftest().make_bank(self.work / "export-bank", self.tiny_model(tied=True), self.data_csv()))

    def resume(self, p: dict):
        """``train(resume=True)`` in this process, on the checkpoint's folder."""
        import torch

        from edgeprompt.train.loop import train

        torch.set_num_threads(1)
        lm, data, _, cfg = self._once("train", lambda: _train_setup(p))
        return train(lm, data, p["method"], _method_config(p), cfg, checkpoint_dir=p["ckpt"], resume=True, progress=False)

    def run_child(self, op: str, params: dict, delay: float | None = None, stderr_path: Path | None = None) -> tuple[Any, dict | None]:
        """Run the child for ``op``; SIGKILL it ``delay`` s after it starts writing (``None``: after it is done).

        Returns ``(error, None)`` when the child failed before writing, else ``(None, record)`` with the
        record's ``write_s`` (start to done, ``None`` if killed first) and ``done`` (it completed before the kill)."""
        stderr_path = stderr_path or (self.work / f"{op}.stderr")
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--child", op, json.dumps(params)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=self.env,
                cwd=str(REPO),
            )
        watchdog = threading.Timer(CHILD_TIMEOUT_S, proc.kill)
        watchdog.start()
        try:
            line = proc.stdout.readline().decode(errors="replace").strip()
            t0 = time.perf_counter()
            if line != f"{MARK} start":
                proc.kill()
                proc.wait()
                return f"the child did not start writing (exit {proc.returncode}): {line!r}\n{stderr_path.read_text(errors='replace')[-3000:]}", None
            write_s = None
            if delay is None:
                line = proc.stdout.readline().decode(errors="replace").strip()
                write_s = time.perf_counter() - t0
                if line != f"{MARK} done":
                    proc.kill()
                    proc.wait()
                    return f"the child failed while writing (exit {proc.returncode}):\n{stderr_path.read_text(errors='replace')[-3000:]}", None
            else:
                # sleep, not spin: with one core free, a spinning parent would starve the child it times
                time.sleep(max(0.0, t0 + delay - time.perf_counter()))
            alive = proc.poll() is None
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            rest = proc.stdout.read().decode(errors="replace")
            if not alive:
                return f"the child exited by itself (exit {proc.returncode}) before the kill:\n{stderr_path.read_text(errors='replace')[-3000:]}", None
            return None, {"write_s": write_s, "done": write_s is not None or f"{MARK} done" in rest}
        finally:
            watchdog.cancel()
            proc.stdout.close()
            proc.stdin.close()


def _run_op(op: Op, trials: int, rng: random.Random, log: Callable[[str], None]) -> dict:
    t_start = time.perf_counter()
    op.prepare()
    # one uncut run: the write's duration, and the new state
    cal = op.work / "calibration"
    op.fresh(cal)
    err, rec = op.ctx.run_child(op.name, op.params(cal))
    if err:
        raise RuntimeError(f"{op.name}: the uncut run failed: {err}")
    if _leftovers(op.target(cal)):
        raise RuntimeError(f"{op.name}: an uncut run left {_leftovers(op.target(cal))}")
    op.learn_new(cal)
    duration = rec["write_s"]
    shutil.rmtree(cal)
    res: dict[str, Any] = {
        "trials": trials,
        "kills_in_window": 0,
        "completed_before_kill": 0,
        "before_window": 0,
        "after_window": 0,
        "torn": 0,
        "errors": 0,
        "outcomes": {"old": 0, "new": 0},
        "in_window_outcomes": {"old": 0, "new": 0},  # new: the kill landed after the swap, in the clean-up
        "write_s": round(duration, 6),
        "examples": [],
    }
    log(f"{op.name}: the write takes {duration * 1e3:.1f} ms uncut; {trials} trials, kills over [0, {STRETCH * duration * 1e3:.1f}] ms after it starts")
    for i in range(trials):
        trial = op.work / f"trial-{i:03d}"
        op.fresh(trial)
        delay = rng.uniform(0.0, STRETCH * duration)
        err, rec = op.ctx.run_child(op.name, op.params(trial), delay=delay, stderr_path=op.work / f"trial-{i:03d}.stderr")
        if err:
            res["errors"] += 1
            if len(res["examples"]) < MAX_EXAMPLES:
                res["examples"].append({"trial": i, "delay_s": round(delay, 6), "outcome": "error", "detail": err[-1500:], "kept": str(trial)})
            continue
        left = _leftovers(op.target(trial))
        try:
            outcome, detail = op.classify(trial)
        except Exception as e:  # an EdgePromptError or anything else: the state does not open
            outcome, detail = "torn", f"{type(e).__module__}.{type(e).__name__}: {e}"
        if left:
            res["kills_in_window"] += 1
        if rec["done"]:
            res["completed_before_kill"] += 1
        elif not left and outcome != "torn":
            res["before_window" if outcome == "old" else "after_window"] += 1
        if outcome == "torn":
            res["torn"] += 1
            if len(res["examples"]) < MAX_EXAMPLES:
                res["examples"].append({"trial": i, "delay_s": round(delay, 6), "outcome": "torn", "detail": detail, "leftovers": left, "kept": str(trial)})
            log(f"{op.name}: TORN at trial {i}, {delay * 1e3:.2f} ms: {detail} (leftovers {left}; kept in {trial})")
            continue
        res["outcomes"][outcome] += 1
        if left:
            res["in_window_outcomes"][outcome] += 1
        shutil.rmtree(trial)
        (op.work / f"trial-{i:03d}.stderr").unlink(missing_ok=True)
    res["wall_s"] = round(time.perf_counter() - t_start, 1)
    res["s_per_trial"] = round(res["wall_s"] / max(trials, 1), 2)
    return res


def run(
    trials: int = 50,
    ops=OPS,
    seed: int = 0,
    workdir: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Kill each operation ``trials`` times at random moments of its write; return per operation what was
    found on disk (see the module docstring). A ``workdir`` is kept; a temporary one is removed unless a
    trial was torn or failed (its folder is kept for inspection)."""
    unknown = [o for o in ops if o not in OP_CLASSES]
    if unknown:
        raise ValueError(f"unknown operation(s) {unknown}; choose from {', '.join(OPS)}")
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="edgeprompt-kill-")) if own else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(work, log)
    rng = random.Random(seed)
    results = {}
    for name in ops:
        op_dir = work / name
        if op_dir.exists():
            shutil.rmtree(op_dir)
        op_dir.mkdir()
        results[name] = _run_op(OP_CLASSES[name](op_dir, ctx), trials, rng, log)
        r = results[name]
        log(
            f"{name}: {r['kills_in_window']} of {trials} kills inside the write, {r['completed_before_kill']} after it completed; "
            f"torn {r['torn']}, old {r['outcomes']['old']}, new {r['outcomes']['new']}, errors {r['errors']} ({r['wall_s']} s)"
        )
    if own and not any(r["torn"] or r["errors"] for r in results.values()):
        shutil.rmtree(work, ignore_errors=True)
    return results


def format_table(results: dict) -> str:
    head = ("op", "trials", "in window", "(old/new)", "completed", "before", "after", "torn", "old", "new", "errors", "write ms", "s/trial")
    rows = [head]
    for name, r in results.items():
        rows.append(
            (
                name,
                str(r["trials"]),
                str(r["kills_in_window"]),
                f"{r['in_window_outcomes']['old']}/{r['in_window_outcomes']['new']}",
                str(r["completed_before_kill"]),
                str(r["before_window"]),
                str(r["after_window"]),
                str(r["torn"]),
                str(r["outcomes"]["old"]),
                str(r["outcomes"]["new"]),
                str(r["errors"]),
                f"{r['write_s'] * 1e3:.1f}",
                f"{r['s_per_trial']:.2f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Kill -9 crash-consistency trials of edgeprompt's writes (issue 10).")
    ap.add_argument("--trials", type=int, default=50, help="kills per operation (default 50)")
    ap.add_argument("--ops", default=",".join(OPS), help=f"comma-separated operations (default: {','.join(OPS)})")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    ap.add_argument("--workdir", type=Path, help="work folder (kept; default: a temporary one, removed unless a trial fails)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--quiet", action="store_true", help="only the table")
    ap.add_argument("--child", nargs=2, metavar=("OP", "PARAMS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child[0], json.loads(args.child[1]))
        return 0
    ops = tuple(o.strip() for o in args.ops.split(",") if o.strip())
    t0 = time.perf_counter()
    results = run(args.trials, ops, seed=args.seed, workdir=args.workdir, log=(lambda s: None) if args.quiet else print)
    import edgeprompt

    print(format_table(results))
    print(f"total {time.perf_counter() - t0:.0f} s; edgeprompt {edgeprompt.__version__} from {Path(edgeprompt.__file__).parent}")
    for name, r in results.items():
        for ex in r["examples"]:
            print(f"{name} trial {ex['trial']} ({ex['outcome']}, delay {ex['delay_s'] * 1e3:.2f} ms): {ex['detail']}")
    if args.json:
        meta = {"seed": args.seed, "stretch": STRETCH, "edgeprompt": str(Path(edgeprompt.__file__).parent), "total_s": round(time.perf_counter() - t0, 1)}
        args.json.write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")
    return 1 if any(r["torn"] or r["errors"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
