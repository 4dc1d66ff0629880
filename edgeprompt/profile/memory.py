"""Memory as the OS sees it, and the memory bandwidth this machine gives a decode's threads.

RSS figures come from ``/proc/self/status`` (Linux); a mapped file's size and resident share from
``/proc/self/smaps`` (llama.cpp maps the GGUF: mapped is its size, resident what was touched).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np


def status_bytes(field: str) -> int | None:
    """``VmRSS``, ``VmHWM`` (peak RSS), ... of this process, in bytes (None off Linux)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss() -> int | None:
    return status_bytes("VmRSS")


def peak_rss() -> int | None:
    return status_bytes("VmHWM")


def mapped_files(under: str | Path) -> dict[str, dict[str, int]]:
    """Files under ``under`` mapped into this process: ``{path: {"mapped": bytes, "resident": bytes}}``."""
    root = str(Path(under).resolve())
    out: dict[str, dict[str, int]] = {}
    cur = None
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split()
                if not head:
                    continue
                if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                    path = head[5] if len(head) >= 6 else ""
                    cur = path if path.startswith(root) else None
                    if cur:
                        out.setdefault(cur, {"mapped": 0, "resident": 0})
                        lo, hi = head[0].split("-")
                        out[cur]["mapped"] += int(hi, 16) - int(lo, 16)
                elif cur and head[0] == "Rss:":
                    out[cur]["resident"] += int(head[1]) * 1024
    except OSError:
        return {}
    return out


def bandwidth_gbs(threads: int, mib_per_thread: int = 256, reps: int = 5) -> dict:
    """Read bandwidth (GB/s) with ``threads`` threads each streaming over its own buffer, as a decode's
    threads stream over the weights; the best of ``reps`` after one warm-up. numpy's reductions release
    the GIL, so the threads run in parallel; a single-threaded read understates what a decode gets."""
    n = mib_per_thread * 2**20 // 8
    bufs = [np.ones(n, dtype=np.int64) for _ in range(threads)]  # touched: resident before timing
    best, times = 0.0, []
    for r in range(reps + 1):
        barrier = threading.Barrier(threads + 1)

        def work(a):
            barrier.wait()
            np.bitwise_or.reduce(a)

        ts = [threading.Thread(target=work, args=(b,)) for b in bufs]
        for t in ts:
            t.start()
        t0 = time.perf_counter()
        barrier.wait()
        for t in ts:
            t.join()
        dt = time.perf_counter() - t0
        if r:
            times.append(dt)
            best = max(best, threads * n * 8 / dt / 1e9)
    return {"gbs": best, "threads": threads, "bytes_per_thread": n * 8, "reps": reps, "kernel": "numpy bitwise_or.reduce over int64, per thread"}
