"""Bundles from anywhere: every path a manifest names stays inside the bundle, is a regular file, and
opening a bundle (and serving from it) writes nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from edgeprompt.core.errors import BundleError


@pytest.fixture()
def bundle(bundle_of, tmp_path) -> Path:
    b = tmp_path / "b"
    shutil.copytree(bundle_of("gguf", "f32"), b)
    return b


def _edit(b: Path, fn) -> None:
    m = json.loads((b / "manifest.json").read_text())
    fn(m)
    (b / "manifest.json").write_text(json.dumps(m))


def _open(b: Path, timeout: float = 30.0):
    """open_bundle in a thread: a hang fails the test instead of stalling the suite."""
    from edgeprompt.runtimes import open_bundle

    out: dict = {}

    def run():
        try:
            out["rt"] = open_bundle(b, threads=1)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["err"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "open_bundle hung"
    if "err" in out:
        raise out["err"]
    return out["rt"]


@pytest.mark.parametrize("where", ["../outside.bin", "/etc/hostname", "model/../../outside.bin", "model//model.gguf", "./tokenizer.json"])
def test_paths_outside_the_bundle_or_not_normalized_are_refused_without_reading_them(bundle, tmp_path, where):
    secret = tmp_path / "outside.bin"
    secret.write_bytes(b"x" * 12345)
    rec = {"sha256": hashlib.sha256(secret.read_bytes()).hexdigest(), "bytes": 12345}
    _edit(bundle, lambda m: m["files"].__setitem__(where, rec))
    with pytest.raises(BundleError, match="outside the bundle or not normalized") as e:
        _open(bundle)
    assert "12,345" not in str(e.value) and "12345" not in str(e.value)  # nothing about the file is revealed


def test_the_model_file_pointing_outside_is_refused(bundle, tmp_path):
    _edit(bundle, lambda m: m["model"].__setitem__("file", "../../elsewhere.gguf"))
    with pytest.raises(BundleError):
        _open(bundle)


@pytest.mark.parametrize("rel", ["tokenizer.json", "model/model.gguf"])
def test_symlinks_are_refused_even_to_a_file_with_the_right_bytes(bundle, tmp_path, rel):
    real = tmp_path / "real"
    shutil.copy2(bundle / rel, real)  # same bytes, same sha256: only the link is wrong
    (bundle / rel).unlink()
    (bundle / rel).symlink_to(real)
    with pytest.raises(BundleError, match="symbolic link"):
        _open(bundle)


def test_a_fifo_or_a_folder_in_place_of_a_file_is_refused_not_waited_on(bundle):
    (bundle / "tokenizer.json").unlink()
    os.mkfifo(bundle / "tokenizer.json")
    with pytest.raises(BundleError, match="not a regular file"):
        _open(bundle, timeout=20)
    os.unlink(bundle / "tokenizer.json")
    (bundle / "tokenizer.json").mkdir()
    with pytest.raises(BundleError, match="not a regular file"):
        _open(bundle, timeout=20)


@pytest.mark.parametrize("key,value", [("files", ["tokenizer.json"]), ("model", "model.gguf"), ("tasks", None), ("files", {"tokenizer.json": {"sha256": 1}})])
def test_manifest_shapes_are_checked_with_a_typed_error(bundle, key, value):
    _edit(bundle, lambda m: m.__setitem__(key, value))
    with pytest.raises(BundleError, match="damaged|re-export"):
        _open(bundle)


def _tree(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def test_opening_and_serving_a_bundle_writes_nothing_in_it(bundle):
    """Read-only media: even a crash leftover (a task's ``.old-*`` copy) is left for the bank's owner."""
    leftover = bundle / "bank" / "tasks" / ".pt.old-123"
    shutil.copytree(bundle / "bank" / "tasks" / "pt", leftover)
    before = _tree(bundle)
    rt = _open(bundle)
    try:
        rt.classify("pt", "the movie was good")
        rt.classify("px", "the movie was bad")
        list(rt.generate(None, "the", max_new_tokens=2))
    finally:
        rt.close()
    assert _tree(bundle) == before


def test_add_task_of_a_bare_folder_gets_every_check_a_bank_task_gets(bundle, tmp_path):
    """A folder copied from anywhere: its name, format, version, keys, and tensors (shape, P, finite)."""
    import numpy as np
    from safetensors.numpy import save_file

    from edgeprompt.core.errors import BankError, EdgePromptError

    src = bundle / "bank" / "tasks" / "pt"
    rt = _open(bundle)
    try:

        def folder(name: str, edit=None, tensors=None) -> Path:
            d = tmp_path / "drop" / name
            shutil.copytree(src, d)
            if edit:
                m = json.loads((d / "manifest.json").read_text())
                edit(m)
                (d / "manifest.json").write_text(json.dumps(m))
            if tensors is not None:
                save_file(tensors, str(d / "prefix.safetensors"))
            return d

        with pytest.raises(BankError, match="not allowed"):
            rt.add_task(folder("bad name!"))
        with pytest.raises(BankError, match="not an edgeprompt.task file"):
            rt.add_task(folder("fmt", lambda m: m.__setitem__("format", "other")))
        with pytest.raises(EdgePromptError, match="version"):
            rt.add_task(folder("ver", lambda m: m.__setitem__("version", 99)))
        with pytest.raises(BankError, match="P = 0|shape"):
            rt.add_task(folder("p0", tensors={"prompt_embeddings": np.zeros((0, 32), np.float32)}))
        with pytest.raises(BankError, match="NaN"):
            rt.add_task(folder("nan", tensors={"prompt_embeddings": np.full((4, 32), np.nan, np.float32)}))
        assert sorted(rt.tasks) == ["pt", "px"]  # nothing half-added
        assert rt.add_task(folder("good")) == "good"
    finally:
        rt.close()


def test_an_unlisted_file_beside_the_onnx_model_is_refused(bundle_of, tmp_path):
    """onnxruntime reads whatever external data the graph names beside it: every file there must be checked."""
    b = tmp_path / "onnx"
    shutil.copytree(bundle_of("onnx", "fp32"), b)
    (b / "model" / "extra.data").write_bytes(b"\0" * 64)
    with pytest.raises(BundleError, match="model/extra.data"):
        _open(b)
    os.unlink(b / "model" / "extra.data")
    _open(b).close()


def test_an_export_cut_between_its_renames_still_opens_the_previous_bundle(bundle, tmp_path, env):
    """kill -9 between `export --overwrite`'s two renames leaves the bundle set aside (found by the kill trials):
    readers open that copy, without writing, and say so."""
    from .conftest import run_cli

    aside = bundle.parent / f".{bundle.name}.old-1796419533504763300"
    os.replace(bundle, aside)
    (bundle.parent / f".{bundle.name}.tmp-a6e6effc").mkdir()  # the new bundle, half written
    before = _tree(bundle.parent)
    with pytest.warns(UserWarning, match="cut between its two renames"):
        rt = _open(bundle)
    assert rt.classify("pt", "nice").label in ("negative", "positive")
    rt.close()
    assert _tree(bundle.parent) == before  # opening wrote nothing
    r = run_cli(["verify", str(bundle)], env=env)
    assert "parity ok" in r.stdout and "cut between its two renames" in r.stderr
