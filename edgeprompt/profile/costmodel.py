"""An analytic cost model of each arm, calibrated on this machine, checked against every measured figure,
and projected onto device profiles.

Per component, with ``W`` the weight bytes a decoded token reads, ``k`` the KV bytes per position, ``N`` the
parameters, ``BW(t)`` the read bandwidth the profiler measured with ``t`` threads:

* decode, per token at context ``c``: ``o_d + (W + k c) / BW(t)``: the bytes it reads at the measured
  bandwidth, plus a fixed per-token cost ``o_d`` (graph dispatch, the logits row, sampling), calibrated once
  (the plain model, the main thread count);
* prefill of ``n`` positions (text tokens or a prompt's rows): ``o + n 2N / G(t)``; the throughput ``G`` and
  the per-call overhead ``o`` are calibrated from the plain model at the shortest and longest text;
  ``G(t)`` scales with threads;
* a restore (a warm swap) of a prefix of ``b`` bytes: ``o_r + b / BW`` where the backend copies it
  (llama.cpp), ``o_r`` where it only references it (ONNX); a snapshot the same;
* a cold prompt-tuning swap: the prefill of its ``P`` rows plus a snapshot;
* a cold prefix-tuning swap: the file read at the storage bandwidth, its sha256, the float32 KV converted
  into the backend's form at a rate ``C``, and a restore;
* RSS with ``n`` tasks: the plain runtime's RSS plus the prefix cache, ``min(n b, budget)``.

Fitted, each on one named figure (``calibration``): ``o_d`` (the plain decode), ``G`` and ``o`` (the plain
prefill at the shortest and longest text), ``o_r`` (the warm swap at the main P), ``C`` (the cold
prefix-tuning swap at the main P). Every other figure (other P, text lengths, thread counts, arms, bank
sizes) is a prediction, and its error is reported. Storage and hashing rates are measured by
micro-benchmarks, not fitted. On a device profile, byte terms use its bandwidth and storage, and the fixed
CPU costs (``o_d``, ``o``, the KV conversion) scale by its compute throughput against this machine's ``G``.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

QUANTITIES = ("decode_tok_s", "ttft_s", "cold_swap_s", "warm_swap_s", "rss_bytes")


def hash_rate_bps(mib: int = 64) -> float:
    buf = np.ones(mib * 2**20, dtype=np.uint8).tobytes()
    t = time.perf_counter()
    hashlib.sha256(buf).digest()
    return len(buf) / (time.perf_counter() - t)


def read_rate_bps(path: Path, limit: int = 256 * 2**20) -> float:
    """Sequential read of a file (from the page cache when it was read lately: say so in the report)."""
    t = time.perf_counter()
    n = 0
    with open(path, "rb", buffering=0) as f:
        while n < limit:
            b = f.read(8 * 2**20)
            if not b:
                break
            n += len(b)
    return n / max(time.perf_counter() - t, 1e-9)


class CostModel:
    def __init__(self, W: float, k: float, N: float, bw: dict[int, float], threads_main: int, read_bps: float, hash_bps: float, restore_copies: bool = True):
        self.W, self.k, self.N = W, k, N
        self.bw = {int(t): v * 1e9 for t, v in bw.items()}  # bytes/s
        self.threads_main = threads_main
        self.read_bps, self.hash_bps = read_bps, hash_bps
        self.restore_copies = restore_copies  # False: a restore or snapshot references the prefix (ONNX)
        self.o_d = 0.0  # fixed cost of a decoded token
        self.G = 1e10  # FLOP/s at threads_main
        self.o = 0.0
        self.o_r = 0.0  # fixed cost of a restore
        self.C = 1e10  # bytes/s at which a float32 KV becomes the backend's prefix
        self.calibration: dict = {}

    def BW(self, t: int) -> float:
        if t in self.bw:
            return self.bw[t]
        ks = sorted(self.bw)
        below = [x for x in ks if x <= t]
        return self.bw[below[-1] if below else ks[0]]

    # -- components -------------------------------------------------------------------------------
    def token_s(self, ctx: float, t: int | None = None) -> float:
        return self.o_d + (self.W + self.k * ctx) / self.BW(t or self.threads_main)

    def prefill_s(self, n: float, t: int | None = None) -> float:
        t = t or self.threads_main
        return self.o + n * 2 * self.N / (self.G * t / self.threads_main)

    def copy_s(self, nbytes: float) -> float:
        return self.o_r + (nbytes / self.BW(self.threads_main) if self.restore_copies else 0.0)

    def cold_prompt_s(self, P: int, prefix_bytes: float) -> float:
        return self.prefill_s(P) + self.copy_s(prefix_bytes)

    def _kv_read_s(self, file_bytes: float) -> float:
        return file_bytes / self.read_bps + file_bytes / self.hash_bps

    def cold_kv_s(self, file_bytes: float, prefix_bytes: float) -> float:
        return self._kv_read_s(file_bytes) + file_bytes / self.C

    def calibrate_swaps(self, warm: tuple[float, float] | None, cold_kv: tuple[float, float, float] | None) -> None:
        """``o_r`` from a warm swap ``(prefix bytes, s)``; ``C`` from a cold KV swap ``(file bytes, prefix bytes, s)``."""
        if warm:
            b, s = warm
            self.o_r = max(s - (b / self.BW(self.threads_main) if self.restore_copies else 0.0), 0.0)
            self.calibration["restore_overhead_s"] = self.o_r
            self.calibration.setdefault("from", {})["warm_swap"] = list(warm)
        if cold_kv:
            fb, pb, s = cold_kv
            self.C = fb / max(s - self._kv_read_s(fb), 1e-9)
            self.calibration["kv_convert_bps"] = self.C
            self.calibration.setdefault("from", {})["cold_kv_swap"] = list(cold_kv)

    # -- calibration ------------------------------------------------------------------------------
    def calibrate(self, decode_tok_s: float, decode_ctx: float, prefill_short: tuple[int, float], prefill_long: tuple[int, float] | None) -> None:
        """``o_d`` from one decode figure; ``G`` and ``o`` from the plain prefill at two lengths."""
        self.o_d = max(1.0 / decode_tok_s - (self.W + self.k * decode_ctx) / self.BW(self.threads_main), 0.0)
        n1, s1 = prefill_short
        if prefill_long and prefill_long[0] > n1:
            n2, s2 = prefill_long
            per = max((s2 - s1) / (n2 - n1), 1e-12)
            self.o = max(s1 - n1 * per, 0.0)
        else:
            per, self.o = s1 / n1, 0.0
        self.G = 2 * self.N / per
        self.calibration = {
            "decode_overhead_s": self.o_d,
            "G_flops": self.G,
            "overhead_s": self.o,
            "from": {
                "decode_tok_s": decode_tok_s,
                "decode_context": decode_ctx,
                "prefill_short": list(prefill_short),
                "prefill_long": list(prefill_long or []),
            },
        }

    def to_dict(self) -> dict:
        return {
            "weights_bytes": self.W,
            "kv_bytes_per_position": self.k,
            "n_params": self.N,
            "bandwidth_gbs": {t: v / 1e9 for t, v in self.bw.items()},
            "threads_main": self.threads_main,
            "restore_copies": self.restore_copies,
            "read_bps": self.read_bps,
            "hash_bps": self.hash_bps,
            **self.calibration,
        }


def check(model: CostModel, bp: dict, bank: list[dict] | None) -> list[dict]:
    """Every measured figure of a bundle's profile beside its prediction: ``{quantity, where, measured, predicted, error, calibration}``."""
    rows: list[dict] = []
    cal = model.calibration.get("from", {})

    def add(q, where, measured, predicted, calibration=False):
        if measured is None or predicted is None or measured <= 0:
            return
        rows.append(
            {
                "quantity": q,
                "where": where,
                "measured": measured,
                "predicted": predicted,
                "error": (predicted - measured) / measured,
                "calibration": calibration,
            }
        )

    dec = bp.get("decode_tokens", 0)
    for arm, recs in bp.get("arms", {}).items():
        for r in recs:
            if "skipped" in r or arm == "virtual_tokens":
                continue
            P = r.get("P") or 0
            n = r["text_tokens"]
            pre = 0 if arm in ("plain",) else P
            if arm == "hard_prompt":
                pre = r.get("hard_prompt_tokens", 0)
            ctx = pre + n + dec / 2
            add("decode_tok_s", arm, r["decode_tok_s"], 1 / model.token_s(ctx), calibration=(arm == "plain"))
    for row in bp.get("text_sweep", []):
        n = row["text_tokens"]
        is_cal = n in (cal.get("prefill_short") or [None])[:1] or n in (cal.get("prefill_long") or [None])[:1]
        add("ttft_s", f"plain, {n} text tokens", row["plain"]["ttft_s"]["median"], model.prefill_s(n), calibration=is_cal)
        for arm in ("prompt_warm", "prefix_warm"):
            if arm in row:
                r = row[arm]
                add("ttft_s", f"{arm}, {n} text tokens", r["ttft_s"]["median"], model.copy_s(row.get(f"{arm}_prefix_bytes", 0)) + model.prefill_s(n))
    P_main = bp.get("P_main")
    for row in bp.get("p_sweep", []):
        P, pb, fb = row["P"], row["prefix_resident"], row["tensors_file"]
        main = P == P_main
        sw = row.get("swap", {})
        if "prompt_cold" in row:
            add("cold_swap_s", f"prompt tuning P={P}, prefill", _med_of(sw, "cold_s"), model.cold_prompt_s(P, pb) + model.copy_s(pb))
            add("cold_swap_s", f"prompt tuning P={P}, prefix file", _med_of(sw, "file_s"), pb / model.read_bps + 2 * model.copy_s(pb))
            add(
                "ttft_s",
                f"prompt tuning P={P}, cold",
                row["prompt_cold"]["ttft_s"]["median"],
                model.cold_prompt_s(P, pb) + model.copy_s(pb) + model.prefill_s(bp["text_main"]),
            )
            add("warm_swap_s", f"prompt tuning P={P}", _med_of(sw, "warm_s"), model.copy_s(pb), calibration=main)
        if "prefix_cold" in row:
            add("cold_swap_s", f"prefix tuning P={P}, KV read", _med_of(sw, "cold_s"), model.cold_kv_s(fb, pb) + model.copy_s(pb), calibration=main)
            add(
                "ttft_s",
                f"prefix tuning P={P}, cold",
                row["prefix_cold"]["ttft_s"]["median"],
                model.cold_kv_s(fb, pb) + model.copy_s(pb) + model.prefill_s(bp["text_main"]),
            )
            add("warm_swap_s", f"prefix tuning P={P}", _med_of(sw, "warm_s"), model.copy_s(pb))
    for row in bp.get("threads_sweep", []):
        t = row["threads"]
        add(
            "decode_tok_s",
            f"plain, {t} threads",
            row["plain"]["decode_tok_s"],
            1 / model.token_s(bp["text_main"] + dec / 2, t),
            calibration=(t == model.threads_main),
        )
    base = None
    for r in bank or []:
        if "error" in r:
            continue
        if base is None or r["tasks"] < base["tasks"]:
            base = r
    for r in bank or []:
        if "error" in r or base is None:
            continue
        budget = r.get("cache_budget", 0)
        pred = base["rss_end"] - base["cache_bytes"] + min(r["tasks"] * r["prefix_bytes"], budget if budget else r["tasks"] * r["prefix_bytes"])
        add("rss_bytes", f"{r['method']}, {r['tasks']} tasks", r["rss_end"], pred, calibration=(r is base))
    return rows


def _med_of(d: dict, key: str) -> float | None:
    v = (d or {}).get(key)
    return v.get("median") if isinstance(v, dict) else None


def error_summary(rows: list[dict]) -> dict:
    """Median and worst absolute relative error per quantity, calibration points excluded."""
    out = {}
    for q in QUANTITIES:
        errs = [(abs(r["error"]), r) for r in rows if r["quantity"] == q and not r["calibration"]]
        if not errs:
            continue
        worst = max(errs, key=lambda e: e[0])
        out[q] = {"median_abs_error": float(np.median([e for e, _ in errs])), "worst_abs_error": worst[0], "worst_at": worst[1]["where"], "n": len(errs)}
    return out


# -- devices ----------------------------------------------------------------------------------------
def _fig(d: dict, key: str, threads: int) -> tuple[float | None, dict | None]:
    table = d.get(key) or {}
    if not table:
        return None, None
    ks = sorted(int(k) for k in table)
    pick = max([k for k in ks if k <= threads] or [ks[0]])
    rec = table[str(pick)]
    return float(rec["value"]), {**rec, "threads": pick}


def project(model: CostModel, device: dict, facts: dict) -> dict:
    """This bundle's figures on a device: byte terms at its bandwidth and storage, fixed CPU costs scaled by its
    compute against this machine's (``speed = G_device / G``; 1 when the profile has no compute figure).

    ``facts``: ``W, k, N, P, text, prompt_prefix_bytes, kv_file_bytes, kv_prefix_bytes``.
    """
    cores = int(device["cores"]["value"])
    t = min(cores, 4)
    bw, bw_src = _fig(device, "memory_bandwidth_gbs", t)
    G, g_src = _fig(device, "compute_gflops", t)
    out: dict = {"device": device["name"], "threads": t, "sources": {"bandwidth": bw_src, "compute": g_src}}
    if bw is None:
        return out
    B = bw * 1e9
    slow = model.G / (G * 1e9) if G else 1.0  # how much longer a fixed CPU cost takes there
    W, k, N, P, n = facts["W"], facts["k"], facts["N"], facts["P"], facts["text"]
    restore = lambda b: model.o_r * slow + (b / B if model.restore_copies else 0.0)  # noqa: E731
    out["decode_tok_s"] = 1.0 / (model.o_d * slow + (W + k * (P + n)) / B)
    out["warm_swap_s"] = {"prompt_tuning": restore(facts["prompt_prefix_bytes"]), "prefix_tuning": restore(facts["kv_prefix_bytes"])}
    if G is not None:
        prefill = model.o * slow + n * 2 * N / (G * 1e9)
        out["ttft_warm_s"] = prefill + restore(facts["prompt_prefix_bytes"])
        out["cold_swap_s"] = {"prompt_tuning (prefill)": model.o * slow + P * 2 * N / (G * 1e9) + restore(facts["prompt_prefix_bytes"])}
    for medium, rec in (device.get("storage_read_mbs") or {}).items():
        rate = float(rec["value"]) * 1e6
        convert = facts["kv_file_bytes"] / model.C * slow
        out.setdefault("cold_swap_s", {})[f"prefix_tuning (KV read from {medium})"] = (
            facts["kv_file_bytes"] / rate + convert + restore(facts["kv_prefix_bytes"])
        )
        out["cold_swap_s"][f"prompt_tuning (prefix file from {medium})"] = facts["prompt_prefix_bytes"] / rate + restore(facts["prompt_prefix_bytes"])
    return out


def published_checks(model: CostModel, devices: list[dict]) -> list[dict]:
    """Each device's published figures predicted from its profile and this machine's calibration."""
    rows = []
    for d in devices:
        for p in d.get("published", []):
            t = int(p.get("threads", 4))
            G, _ = _fig(d, "compute_gflops", t)
            slow = model.G / (G * 1e9) if G else 1.0
            if p["what"] == "decode_tok_s":
                bw, _ = _fig(d, "memory_bandwidth_gbs", t)
                pred = None if bw is None else 1.0 / (model.o_d * slow + p["model_bytes"] / (bw * 1e9))
            elif p["what"] == "prefill_tok_s":
                pred = None if G is None else G * 1e9 / (2 * p["n_params"])
            else:
                continue
            if pred is None:
                continue
            rows.append(
                {
                    "device": d["name"],
                    "what": p["what"],
                    "model": p["model"],
                    "published": p["value"],
                    "predicted": pred,
                    "error": (pred - p["value"]) / p["value"],
                    "source": p["source"],
                    "calibration": p.get("calibrates") is not None,
                }
            )
    return rows
