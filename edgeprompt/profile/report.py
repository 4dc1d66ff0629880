"""The report: ``results.json`` (versioned schema), ``report.md``, and a self-contained ``report.html``.

It leads with the answer, then the figures behind it. Measured and projected figures never share a
column: projections have their own tables, each figure with its device profile's source and kind.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from edgeprompt.core.files import atomic_write_bytes
from edgeprompt.profile import svg
from edgeprompt.profile.arms import ARMS

RESULTS_SCHEMA = "edgeprompt.profile"
RESULTS_VERSION = 1


def _ms(s) -> str:
    return "-" if s is None else f"{1e3 * s:.2f}"


def _mib(b) -> str:
    return "-" if b is None else f"{b / 2**20:.1f}"


def _kib(b) -> str:
    return "-" if b is None else f"{b / 1024:.0f}"


def _med(d, key):
    v = (d or {}).get(key) or {}
    return v.get("median") if isinstance(v, dict) else v


def _first(arms: dict, name: str) -> dict | None:
    for r in arms.get(name, []):
        if "skipped" not in r:
            return r
    return None


# -- the answer ---------------------------------------------------------------------------------------
def headline(res: dict) -> list[str]:
    """Claims, each citing a measured figure (and the plot it is in)."""
    lines: list[str] = []
    for bp in res.get("bundles", []):
        if "arms" not in bp:
            continue
        tag = f"{bp['format']} {bp['quant']}"
        arms = bp["arms"]
        pw, xw, pc, xc = (_first(arms, a) for a in ("prompt_warm", "prefix_warm", "prompt_cold", "prefix_cold"))
        ps = {(r["kind"], r["P"]): r for r in bp.get("p_sweep", [])}
        P = bp.get("P_main")
        pe, kv = ps.get(("embeddings", P)), ps.get(("kv", P))
        if pe and kv:
            ratio = kv["tensors_file"] / pe["tensors_file"]
            info = bp.get("model", {})
            analytic = 2 * info.get("num_layers", 0) * info.get("num_kv_heads", 0) * info.get("head_dim", 0) / max(info.get("hidden_size", 1), 1)
            lines.append(
                f"[{tag}] Artifact bytes: a prefix-tuning task is {ratio:.1f}x a prompt-tuning task at P={P} "
                f"({_kib(kv['tensors_file'])} vs {_kib(pe['tensors_file'])} KiB on disk; 2·L·kv_dim/d = {analytic:.1f}). [plot: bytes-vs-P]"
            )
            if pc and xc:
                lines.append(
                    f"[{tag}] Cold swap at P={P}: prompt tuning prefills its rows, {_ms(_med(pe['swap'], 'cold_s'))} ms; "
                    f"prefix tuning reads its KV, {_ms(_med(kv['swap'], 'cold_s'))} ms: prefix tuning needs no prefill "
                    f"(prompt tuning from a prefix file: {_ms(_med(pe['swap'], 'file_s'))} ms; warm, both restore a cached prefix: "
                    f"{_ms(_med(pe['swap'], 'warm_s'))} vs {_ms(_med(kv['swap'], 'warm_s'))} ms). [plot: swap-vs-P]"
                )
        if pw and xw:
            lines.append(
                f"[{tag}] Same cost once warm: decode {pw['decode_tok_s']:.1f} vs {xw['decode_tok_s']:.1f} tok/s, "
                f"time to first token {_ms(_med(pw, 'ttft_s'))} vs {_ms(_med(xw, 'ttft_s'))} ms (prompt vs prefix tuning, P={pw.get('P')} and {xw.get('P')}): "
                "both are the same KV in the cache. [plots: ttft-breakdown, token-latency]"
            )
        bank = [r for r in bp.get("bank_sweep", []) if "error" not in r]
        big = {}
        for r in bank:
            if r["tasks"] >= big.get(r["method"], {}).get("tasks", 0):
                big[r["method"]] = r
        if len(big) == 2:
            a, b = big.get("prompt_tuning"), big.get("prefix_tuning")
            if a and b:
                lines.append(
                    f"[{tag}] Bank of {a['tasks']} tasks ({res['config']['cache_mb']:.0f} MB prefix cache): RSS {_mib(a['rss_end'])} MiB (prompt) vs "
                    f"{_mib(b['rss_end'])} MiB (prefix); on disk {_mib(a['tasks'] * a['task_bytes'])} vs {_mib(b['tasks'] * b['task_bytes'])} MiB; "
                    f"mean request {_ms(a['request_s']['mean'])} vs {_ms(b['request_s']['mean'])} ms at hit rate {a['hit_rate']:.2f}/{b['hit_rate']:.2f}. [plot: rss-vs-tasks]"
                )
        vt = _first(arms, "virtual_tokens")
        lines.append(
            f"[{tag}] Runtime support: stock llama.cpp runs a prompt-tuning task as virtual tokens"
            + (
                f" (measured here: time to first token {_ms(_med(vt, 'ttft_s'))} ms, decode {vt['decode_tok_s']:.1f} tok/s)"
                if vt
                else " (export --virtual-tokens)"
            )
            + "; it has no stock way to take a prefix: prefix tuning needs edgeprompt's runtime."
        )
    for dev in res.get("projections", []):
        c = dev.get("cold_swap_s") or {}
        kv = {k: v for k, v in c.items() if k.startswith("prefix_tuning")}
        pr = {k: v for k, v in c.items() if k.startswith("prompt_tuning (prefill")}
        if dev.get("decode_tok_s") is None:
            continue
        msg = f"[projected: {dev['device']}, {dev['bundle']}] decode {dev['decode_tok_s']:.1f} tok/s"
        if kv:
            msg += "; cold prefix-tuning swap " + ", ".join(f"{_ms(v)} ms ({k.split('from ')[-1].rstrip(')')})" for k, v in kv.items())
        if pr:
            msg += "; cold prompt-tuning prefill " + ", ".join(f"{_ms(v)} ms" for v in pr.values())
        lines.append(msg + ". [plot: projections]")
    return lines


# -- plots --------------------------------------------------------------------------------------------
def plots(res: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, bp in enumerate(res.get("bundles", [])):
        if "arms" not in bp:
            continue
        tag = f"{bp['format']} {bp['quant']}"
        sfx = f"-{i}" if i else ""
        ps = bp.get("p_sweep", [])
        series = {}
        for kind, key, label in (
            ("embeddings", "cold_s", "prompt tuning, cold (prefill)"),
            ("embeddings", "file_s", "prompt tuning, cold (prefix file)"),
            ("embeddings", "warm_s", "prompt tuning, warm"),
            ("kv", "cold_s", "prefix tuning, cold (KV read)"),
            ("kv", "warm_s", "prefix tuning, warm"),
        ):
            pts = [(r["P"], 1e3 * _med(r["swap"], key)) for r in ps if r["kind"] == kind and _med(r.get("swap"), key)]
            if pts:
                series[label] = pts
        out[f"swap-vs-P{sfx}"] = svg.line_chart(
            f"swap-vs-P{sfx}", series, "P (virtual tokens)", "swap into a sequence, ms (median)", logx=True, logy=True, title=f"Task swap vs P ({tag})"
        )
        series = {
            "prompt tuning": [(r["P"], r["tensors_file"] / 1024) for r in ps if r["kind"] == "embeddings"],
            "prefix tuning": [(r["P"], r["tensors_file"] / 1024) for r in ps if r["kind"] == "kv"],
            "prompt tuning, computed prefix": [(r["P"], r["prefix_resident"] / 1024) for r in ps if r["kind"] == "embeddings"],
        }
        out[f"bytes-vs-P{sfx}"] = svg.line_chart(f"bytes-vs-P{sfx}", series, "P", "KiB per task", logx=True, logy=True, title=f"Bytes per task vs P ({tag})")
        bars = {}
        for name, recs in bp["arms"].items():
            r = next((x for x in recs if "skipped" not in x), None)
            if r:
                bars[name] = {
                    "prefix work": 1e3 * (_med(r, "prefix_s") or 0),
                    "restore": 1e3 * (_med(r, "restore_s") or 0),
                    "text prefill": 1e3 * (_med(r, "prefill_s") or 0),
                }
        out[f"ttft-breakdown{sfx}"] = svg.bar_chart(
            f"ttft-breakdown{sfx}", bars, "ms", title=f"Time to first token, by part ({tag}, {bp.get('text_main')} text tokens)"
        )
        bars = {}
        for name, recs in bp["arms"].items():
            r = next((x for x in recs if "skipped" not in x), None)
            if r and r.get("token_s", {}).get("median"):
                t = r["token_s"]
                bars[name] = {"p10": 1e3 * t["p10"], "p50": 1e3 * t["median"], "p90": 1e3 * t["p90"], "p99": 1e3 * t["p99"]}
        out[f"token-latency{sfx}"] = svg.bar_chart(
            f"token-latency{sfx}", bars, "ms per token", stacked=False, title=f"Per-token decode latency, percentiles ({tag})"
        )
        kv = bp.get("kv_growth", [])
        P = bp.get("P_main") or 20
        series = {
            "KV bytes per sequence (text only)": [(r["context"], r["kv_bytes"] / 2**20) for r in kv],
            f"with a P={P} prefix": [(r["context"], (r["kv_bytes"] + r.get("prefix_bytes_at_P", 0)) / 2**20) for r in kv],
            f"the P={P} prefix's part": [(r["context"], r.get("prefix_bytes_at_P", 0) / 2**20) for r in kv],
        }
        out[f"kv-vs-context{sfx}"] = svg.line_chart(
            f"kv-vs-context{sfx}", series, "context (positions)", "MiB", logx=True, logy=True, title=f"KV bytes vs context ({tag})"
        )
        bank = [r for r in bp.get("bank_sweep", []) if "error" not in r]
        series = {}
        for m in sorted({r["method"] for r in bank}):
            series[m] = [(r["tasks"], r["rss_end"] / 2**20) for r in bank if r["method"] == m]
            series[f"{m}, at open"] = [(r["tasks"], r["rss_open"] / 2**20) for r in bank if r["method"] == m]
        out[f"rss-vs-tasks{sfx}"] = svg.line_chart(f"rss-vs-tasks{sfx}", series, "tasks in the bundle", "RSS, MiB", logx=True, title=f"RSS vs tasks ({tag})")
    tr = [r for r in res.get("training") or [] if "error" not in r]
    if tr:
        series = {m: [(r["P"], 1e3 * r["step_s"]) for r in tr if r["method"] == m] for m in sorted({r["method"] for r in tr})}
        out["train-step-vs-P"] = svg.line_chart("train-step-vs-P", series, "P", "ms per training step", logx=True, title="Training step time vs P")
    proj = res.get("projections", [])
    bars = {f"{p['device']} / {p['bundle']}": {"decode tok/s": p["decode_tok_s"]} for p in proj if p.get("decode_tok_s")}
    out["projections"] = svg.bar_chart("projections", bars, "tokens/s (projected)", title="Projected decode speed per device")
    bars = {}
    for p in proj:
        c = p.get("cold_swap_s") or {}
        if c:
            bars[f"{p['device']} / {p['bundle']}"] = {k: 1e3 * v for k, v in c.items()}
    out["projections-cold-swap"] = svg.bar_chart(
        "projections-cold-swap", bars, "ms (projected)", stacked=False, logy=True, title="Projected cold swap per device"
    )
    return out


# -- tables -------------------------------------------------------------------------------------------
def _table(head: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def markdown(res: dict, plot_names: list[str] | None = None) -> str:
    env = res.get("environment", {})
    md = ["# edgeprompt profile", ""]
    if not res.get("complete"):
        md += [f"**Partial results**: missing {', '.join(res.get('missing', [])) or 'later stages'} (the run was interrupted or failed).", ""]
    md += ["## The answer", ""] + [f"- {h}" for h in headline(res)] + [""]
    cfg = res.get("config", {})
    md += [
        "## How it was measured",
        "",
        f"{env.get('cpu')}, {env.get('cores')} cores, {_mib(env.get('memory_bytes'))} MiB, {env.get('os')}; kernel flags: {' '.join(env.get('kernel_flags', []))}.",
        f"Libraries: {', '.join(f'{k} {v}' for k, v in env.get('libraries', {}).items() if v)}.",
        f"Every figure is the median of {cfg.get('reps')} repetitions after {cfg.get('warmup')} warm-up(s) (excluded), with p10-p90 beside it where shown, "
        f"after {cfg.get('global_warmup', 0)} plain requests that page the weights in (excluded); "
        f"{cfg.get('decode')} decoded tokens per request; files read from the page cache (warm) on this machine. "
        "Tasks marked synthetic hold random tensors of the method's shape: right for time and memory, meaningless as tasks.",
        "",
        "Memory bandwidth, measured by the profiler (read, all threads streaming):",
        "",
        _table(["threads", "GB/s"], [[t, f"{v:.1f}"] for t, v in res.get("bandwidth_gbs", {}).items()]),
        "",
    ]
    for bp in res.get("bundles", []):
        md += [f"## Bundle {bp.get('path')} ({bp.get('format')} {bp.get('quant')}, {bp.get('backend')})", ""]
        if "error" in bp:
            md += [f"Failed: {bp['error']}", ""]
            continue
        md += [
            f"Model file {_mib(bp.get('model_bytes'))} MiB; open {_ms(_med(bp, 'open_s'))} ms (p10-p90 {_ms(bp.get('open_s', {}).get('p10'))}-{_ms(bp.get('open_s', {}).get('p90'))}).",
            "",
        ]
        rows = []
        for name, recs in bp.get("arms", {}).items():
            for r in recs:
                if "skipped" in r:
                    rows.append(
                        [f"{name}: {ARMS[name].title}" if name in ARMS else name, r.get("task") or "-", "", "skipped: " + r["skipped"], "", "", "", "", ""]
                    )
                    continue
                t = r.get("token_s", {})
                rows.append(
                    [
                        f"{name}: {ARMS[name].title}" if name in ARMS else name,
                        (r.get("task") or "-") + (" (synthetic)" if r.get("synthetic") else ""),
                        r.get("P", "-"),
                        _ms(_med(r, "prefix_s")),
                        _ms(_med(r, "restore_s")),
                        _ms(_med(r, "prefill_s")),
                        f"{_ms(_med(r, 'ttft_s'))} ({_ms(r['ttft_s'].get('p10'))}-{_ms(r['ttft_s'].get('p90'))})",
                        f"{r['decode_tok_s']:.1f}" if r.get("decode_tok_s") else "-",
                        f"{_ms(t.get('median'))}/{_ms(t.get('p90'))}/{_ms(t.get('p99'))}",
                    ]
                )
        md += [
            f"### Arms ({bp.get('text_main')} text tokens, measured)",
            "",
            _table(["arm", "task", "P", "prefix work ms", "restore ms", "text prefill ms", "TTFT ms (p10-p90)", "decode tok/s", "token ms p50/p90/p99"], rows),
            "",
        ]
        rows = [
            [
                r["method"],
                r["P"],
                _kib(r["tensors_file"]),
                _kib(r["prefix_resident"]),
                _ms(_med(r.get("swap"), "cold_s")),
                _ms(_med(r.get("swap"), "file_s")) if "file_s" in r.get("swap", {}) else "-",
                _ms(_med(r.get("swap"), "warm_s")),
                _ms(r.get("prompt_warm", r.get("prefix_warm", {})).get("ttft_s", {}).get("median")),
            ]
            for r in bp.get("p_sweep", [])
        ]
        md += [
            "### P sweep (synthetic tasks, measured; swaps timed alone, median of many)",
            "",
            _table(["method", "P", "KiB on disk", "KiB resident (prefix)", "cold swap ms", "swap from a prefix file ms", "warm swap ms", "warm TTFT ms"], rows),
            "",
        ]
        rows = []
        for r in bp.get("text_sweep", []):
            rows.append(
                [r["text_tokens"]]
                + [_ms(_med(r.get(a), "ttft_s")) if a in r else "-" for a in ("plain", "prompt_warm", "prefix_warm")]
                + [f"{r['plain']['decode_tok_s']:.1f}" if r["plain"].get("decode_tok_s") else "-"]
            )
        md += [
            "### Text length (measured)",
            "",
            _table(["text tokens", "plain TTFT ms", "prompt warm TTFT ms", "prefix warm TTFT ms", "plain decode tok/s"], rows),
            "",
        ]
        rows = [[r["threads"], _ms(_med(r["plain"], "prefill_s")), f"{r['plain']['decode_tok_s']:.1f}"] for r in bp.get("threads_sweep", [])]
        md += ["### Threads (plain model, measured)", "", _table(["threads", "text prefill ms", "decode tok/s"], rows), ""]
        mem = bp.get("memory", {})
        if mem and "error" not in mem:
            st = mem["stages"]
            rows = [[k, _mib(v), _mib(v - st["imported"]) if k != "imported" else "-"] for k, v in st.items()]
            md += ["### Memory by stage (a child process, measured)", "", _table(["stage", "RSS MiB", "over the interpreter MiB"], rows), ""]
            bd = bp.get("memory_breakdown", {})
            md += [
                "Breakdown at the largest stage (engine-reported where the engine says it, else RSS deltas):",
                "",
                _table(["part", "MiB", "from"], [[k, _mib(v["bytes"]), v["from"]] for k, v in bd.items()]),
                "",
            ]
        rows = [[r["context"], _kib(r["kv_bytes"]), f"{r['bytes_per_position']:.0f}", f"{100 * r['prefix_share_at_P']:.1f}%"] for r in bp.get("kv_growth", [])]
        md += [
            "### KV bytes per sequence vs context (measured: a snapshot's size)",
            "",
            _table(["context", "KiB", "bytes/position", f"P={bp.get('P_main')} prefix share"], rows),
            "",
        ]
        bank = bp.get("bank_sweep", [])
        rows = [
            [r.get("method"), r.get("tasks"), "failed: " + r["error"], "", "", "", "", "", ""]
            if "error" in r
            else [
                r["method"],
                r["tasks"],
                _ms(r["open_s"]),
                _mib(r["rss_open"]),
                _mib(r["rss_end"]),
                _mib(r["cache_bytes"]),
                f"{r['hit_rate']:.2f}",
                _ms(r["request_s"]["mean"]),
                _ms(r["request_s"]["p99"]),
            ]
            for r in bank
        ]
        md += [
            f"### Tasks in the bundle ({cfg.get('cache_mb')} MB prefix cache; a child process per row, measured)",
            "",
            _table(["method", "tasks", "open ms", "RSS at open MiB", "RSS after MiB", "cache MiB", "hit rate", "request mean ms", "request p99 ms"], rows),
            "",
        ]
        acc = bp.get("accuracy", {})
        if acc:
            rows = []
            for t, a in acc.items():
                ev = a.get("eval") or {}
                evs = ev.get("skipped") or (f"{ev['accuracy']:.3f} / {ev['macro_f1']:.3f} (n={ev['n']})" if ev else "-")
                top1 = f"{a['top1_agreement']:.2f}" if "top1_agreement" in a else "-"
                rows.append([t or "(plain)", a["quant"], a.get("probes", "-"), a.get("accuracy_reference"), a.get("accuracy_export"), top1, evs])
            md += [
                "### Accuracy (the bundle's parity record; with --eval N, N test examples through this runtime)",
                "",
                _table(["task", "quant", "probes", "accuracy torch fp32", "accuracy this quant", "top-1 agreement", "--eval accuracy / macro-F1"], rows),
                "",
            ]
        cm = bp.get("cost_model", {})
        if cm:
            c = cm["model"]
            md += [
                "### Cost model (calibrated here, then checked)",
                "",
                f"Fitted: a decoded token costs {_ms(c.get('decode_overhead_s'))} ms besides its bytes at the measured bandwidth; prefill "
                f"G = {c.get('G_flops', 0) / 1e9:.1f} GFLOP/s at {c.get('threads_main')} threads plus {_ms(c.get('overhead_s'))} ms a call; a restore "
                f"{_ms(c.get('restore_overhead_s'))} ms plus its bytes; a float32 KV becomes a prefix at {c.get('kv_convert_bps', 0) / 1e9:.2f} GB/s. "
                f"Measured, not fitted: file read {c.get('read_bps', 0) / 1e9:.1f} GB/s, sha256 {c.get('hash_bps', 0) / 1e9:.2f} GB/s.",
                "",
                _table(
                    ["quantity", "figures", "median |error|", "worst |error|", "worst at"],
                    [
                        [q, s["n"], f"{100 * s['median_abs_error']:.1f}%", f"{100 * s['worst_abs_error']:.1f}%", s["worst_at"]]
                        for q, s in cm.get("errors", {}).items()
                    ],
                ),
                "",
                "<details><summary>every figure</summary>",
                "",
                _table(
                    ["quantity", "where", "measured", "predicted", "error", "calibration"],
                    [
                        [
                            r["quantity"],
                            r["where"],
                            f"{r['measured']:.4g}",
                            f"{r['predicted']:.4g}",
                            f"{100 * r['error']:+.1f}%",
                            "yes" if r["calibration"] else "",
                        ]
                        for r in cm.get("checks", [])
                    ],
                ),
                "",
                "</details>",
                "",
            ]
    tr = res.get("training") or []
    if tr:
        rows = [
            [r["method"], r["P"], "failed: " + r["error"], "", ""]
            if "error" in r
            else [r["method"], r["P"], _ms(r["step_s"]), _mib(r["peak_rss"]), f"{r['trainable_params']:,}"]
            for r in tr
        ]
        md += [
            "## Training cost (measured: a child process per row, batch 8 x 64 tokens, the method's default config)",
            "",
            _table(["method", "P", "step ms (median)", "peak RSS MiB", "trainable parameters"], rows),
            "",
        ]
    if res.get("published_checks"):
        md += [
            "## The cost model against published device figures",
            "",
            _table(
                ["device", "figure", "model", "published", "predicted", "error", "source"],
                [
                    [
                        r["device"],
                        r["what"] + (" (calibrates the profile)" if r["calibration"] else ""),
                        r["model"],
                        f"{r['published']:.3g}",
                        f"{r['predicted']:.3g}",
                        f"{100 * r['error']:+.0f}%",
                        r["source"],
                    ]
                    for r in res["published_checks"]
                ],
            ),
            "",
        ]
    if res.get("projections"):
        md += ["## Projections (not measured: the cost model on each device profile)", ""]
        rows = []
        for p in res["projections"]:
            src = p.get("sources", {})
            bws = src.get("bandwidth") or {}
            rows.append(
                [
                    p["device"],
                    p["bundle"],
                    p["threads"],
                    f"{p['decode_tok_s']:.1f}" if p.get("decode_tok_s") else "-",
                    _ms(p.get("ttft_warm_s")),
                    "; ".join(f"{k}: {_ms(v)}" for k, v in (p.get("cold_swap_s") or {}).items()),
                    f"{bws.get('value')} GB/s ({bws.get('kind')}; {bws.get('source')})",
                ]
            )
        md += [_table(["device", "bundle", "threads", "decode tok/s", "warm TTFT ms", "cold swap ms", "bandwidth used"], rows), ""]
    if plot_names:
        md += ["## Plots", "", "In `report.html`: " + ", ".join(plot_names) + ".", ""]
    return "\n".join(md)


def html(res: dict, figs: dict[str, str]) -> str:
    """``report.md``'s text as simple HTML, with every plot inline (no script, no network)."""
    md = markdown(res)
    body, in_table = [], False
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set(line.replace("|", "").strip()) <= {"-"}:
                continue
            if not in_table:
                body.append("<table>")
                in_table = True
                body.append("<tr>" + "".join(f"<th>{escape(c)}</th>" for c in cells) + "</tr>")
            else:
                body.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("### "):
            body.append(f"<h3>{escape(line[4:])}</h3>")
        elif line.startswith("## "):
            body.append(f"<h2>{escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{escape(line[2:])}</h1>")
        elif line.startswith("- "):
            body.append(f"<li>{escape(line[2:])}</li>")
        elif line.startswith("<details>") or line.startswith("</details>"):
            body.append(line)
        elif line.strip():
            body.append(f"<p>{escape(line)}</p>")
    if in_table:
        body.append("</table>")
    body.append("<h2>Plots</h2>")
    body += [f'<figure id="{escape(k)}">{v}</figure>' for k, v in figs.items()]
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
        "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
        "th{background:#f3f3f3}figure{display:inline-block;margin:8px}"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>edgeprompt profile</title><style>{style}</style></head><body>\n'
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write(out: Path, res: dict) -> None:
    """All three files, each atomically: a reader never sees half a report."""
    figs = plots(res)
    atomic_write_bytes(out / "results.json", json.dumps(res, indent=1, default=float).encode())
    atomic_write_bytes(out / "report.md", markdown(res, list(figs)).encode())
    atomic_write_bytes(out / "report.html", html(res, figs).encode())
