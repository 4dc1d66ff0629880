"""What the reliability harnesses share: tiny bundles built from a config (no download), and a served bundle."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def tiny_bundles(work: Path) -> dict[str, Path]:
    """The test suite's tiny tied llama and its two-task bank (``pt`` prompt tuning, ``px`` prefix tuning),
    exported as ONNX fp32 and GGUF f32: ``{"onnx": path, "gguf": path}`` (made once per ``work`` folder)."""
    sys.path.insert(0, str(REPO))
    from edgeprompt.export.writer import ExportConfig, export_bundle
    from tests.conftest import build_tiny_model, make_bank

    out = {"onnx": work / "tiny-onnx", "gguf": work / "tiny-gguf"}
    if all((p / "manifest.json").exists() for p in out.values()):
        return out
    model = build_tiny_model(work / "model", tie=True)
    bank = make_bank(work / "bank", model, work / "data.csv")
    for fmt, quant in (("onnx", "fp32"), ("gguf", "f32")):
        export_bundle(out[fmt], bank=bank, model=model, config=ExportConfig(format=fmt, quant=quant, probes_per_task=4), log=lambda s: None)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """``edgeprompt serve BUNDLE`` in a child process (its own RSS), stopped on exit."""

    def __init__(self, bundle: Path, *flags: str):
        self.port = free_port()
        env = dict(os.environ, EDGEPROMPT_CACHE=os.environ.get("EDGEPROMPT_CACHE", str(Path(bundle).parent / ".cache")))
        cmd = [sys.executable, "-m", "edgeprompt", "serve", str(bundle), "--port", str(self.port), "--threads", "1", *flags]
        self.proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        if "serving" not in line:
            self.proc.kill()
            raise RuntimeError(f"serve did not start: {line}{self.proc.stderr.read()}")
        self.base = f"http://127.0.0.1:{self.port}"
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30:
            try:
                urllib.request.urlopen(self.base + "/health", timeout=5).read()
                break
            except OSError:
                time.sleep(0.1)

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self) -> "Served":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
