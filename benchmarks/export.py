"""Export benchmark: bundle size, wall time and peak RSS per format and quantization, and the parity
figures (logit and accuracy deltas against fp32 torch) the export recorded.

    python benchmarks/export.py --bank BANK --out-dir /tmp/bundles --probes 32 \
        --configs onnx:fp32,onnx:int8,onnx:int4,onnx:int8-dynamic,gguf:f32,gguf:f16,gguf:q8_0,gguf:q4_0,gguf:q4_k_m,gguf:source

Each export runs in its own process (its peak RSS is the export's own). Writes a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, resource, sys, time
from edgeprompt.export.writer import ExportConfig, export_bundle
fmt, quant, bank, out, probes = sys.argv[1:6]
t = time.perf_counter()
r = export_bundle(out, bank=bank, config=ExportConfig(format=fmt, quant=quant, probes_per_task=int(probes), with_kv=True), overwrite=True, log=lambda s: None)
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")]
print(json.dumps({"wall_s": time.perf_counter() - t, "rss_mib": (hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024, "timings": r.timings}))
"""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bank", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--configs", default="onnx:fp32,onnx:int8,onnx:int4,gguf:f32,gguf:q8_0,gguf:q4_0,gguf:q4_k_m")
    p.add_argument("--probes", type=int, default=32)
    p.add_argument("--md", default=None, help="write the markdown table here")
    a = p.parse_args()
    rows = []
    for c in a.configs.split(","):
        fmt, quant = c.split(":")
        out = Path(a.out_dir) / f"{fmt}-{quant}"
        r = subprocess.run([sys.executable, "-c", CHILD, fmt, quant, a.bank, str(out), str(a.probes)], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{c}: FAILED\n{r.stderr[-2000:]}", file=sys.stderr)
            rows.append((c, None, None))
            continue
        meas = json.loads(r.stdout.strip().splitlines()[-1])
        m = json.loads((out / "manifest.json").read_text())
        model_bytes = sum(f["bytes"] for k, f in m["files"].items() if k.startswith("model/"))
        rows.append((c, meas, m, model_bytes))
        print(f"{c}: {meas['wall_s']:.0f} s, {meas['rss_mib']:.0f} MiB RSS, model {model_bytes / 2**20:.1f} MiB", file=sys.stderr)
    lines = [
        "| format:quant | model files MiB | export s | peak RSS MiB | tensor types written | task | max abs dlogit | top-1 agree | label agree | probe accuracy torch -> export |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row[1] is None:
            lines.append(f"| {row[0]} | failed | | | | | | | | |")
            continue
        c, meas, m, mb = row
        types = ", ".join(f"{k} {v}" for k, v in m["model"]["tensor_types"].items())
        first = True
        for task, r in m["parity"].items():
            name = task or "(plain)"
            lead = f"| {c} | {mb / 2**20:.1f} | {meas['wall_s']:.0f} | {meas['rss_mib']:.0f} | {types} " if first else "| | | | | "
            first = False
            acc = "" if r["accuracy_reference"] is None else f"{r['accuracy_reference']:.3f} -> {r['accuracy_export']:.3f}"
            la = "" if r["label_agreement"] is None else f"{r['label_agreement']:.3f}"
            lines.append(lead + f"| {name} | {r['max_abs_logit_diff']:.2e} | {r['top1_agreement']:.3f} | {la} | {acc} |")
    table = "\n".join(lines)
    print(table)
    if a.md:
        Path(a.md).write_text(table + "\n")


if __name__ == "__main__":
    main()
