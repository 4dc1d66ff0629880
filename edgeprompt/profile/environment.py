"""The machine a profile was measured on: CPU model and flags, cores, memory, OS, library versions."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

#: CPU flags that decide which kernels llama.cpp and onnxruntime pick (x86 and ARM names).
KERNEL_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_int8",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
    "fphp",
    "asimdhp",
)
LIBRARIES = ("edgeprompt", "numpy", "onnxruntime", "llama-cpp-python", "tokenizers", "safetensors")


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo"):
            key, _, val = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware", "cpu model") and val.strip():
                model = val.strip()
            elif key in ("flags", "features"):
                flags |= set(val.split())
    except OSError:
        pass
    return model, flags


def memory_total_bytes() -> int | None:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def environment() -> dict:
    model, flags = _cpuinfo()
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    return {
        "cpu": model,
        "machine": platform.machine(),
        "kernel_flags": sorted(f for f in KERNEL_FLAGS if f in flags),
        "cores": usable_cores(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": memory_total_bytes(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "libraries": versions,
    }
