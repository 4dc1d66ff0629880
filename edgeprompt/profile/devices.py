"""Device profiles: data files (shipped in ``devices/``, or a user's ``--device FILE``), and
``--calibrate``, which measures this device and writes its profile.

A profile gives, per figure, ``{"value", "kind", "source"}``: ``kind`` says whether it was ``measured``,
is a ``vendor`` figure or ``vendor peak``, or an ``estimate``; the report shows it beside every projection.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from edgeprompt.core.errors import EdgePromptError

DEVICE_FORMAT = "edgeprompt.device"
DEVICE_VERSION = 1
REQUIRED = ("name", "cores", "memory_bandwidth_gbs")


def builtin_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("edgeprompt.profile").joinpath("devices").iterdir() if p.name.endswith(".json"))


def _check(d, where: str) -> dict:
    if not isinstance(d, dict) or d.get("format") != DEVICE_FORMAT:
        raise EdgePromptError(f"{where} is not a device profile (a JSON object with format {DEVICE_FORMAT!r}); see edgeprompt/profile/devices/*.json.")
    if not isinstance(d.get("version"), int) or d["version"] > DEVICE_VERSION:
        raise EdgePromptError(f"{where}: device profile version {d.get('version')!r}; this edgeprompt reads version {DEVICE_VERSION}.")
    missing = [k for k in REQUIRED if k not in d]
    if missing:
        raise EdgePromptError(f"{where} lacks {missing}; a profile needs {list(REQUIRED)}.")
    for key in ("memory_bandwidth_gbs", "compute_gflops"):
        for t, rec in (d.get(key) or {}).items():
            v = rec.get("value") if isinstance(rec, dict) else None
            if not str(t).isdigit() or not isinstance(v, (int, float)) or not v > 0 or v != v or v == float("inf"):
                raise EdgePromptError(f"{where}: {key}[{t!r}] must be {{'value': a positive number, 'kind', 'source'}} keyed by a thread count.")
    return d


def load(spec: str) -> dict:
    """A built-in profile by name, or a profile file."""
    p = Path(spec)
    if p.suffix == ".json" or p.exists():
        if not p.is_file():
            raise EdgePromptError(f"device profile {spec} does not exist; built-in profiles: {', '.join(builtin_names())}.")
        try:
            return _check(json.loads(p.read_text()), str(p))
        except json.JSONDecodeError as e:
            raise EdgePromptError(f"device profile {p} is not valid JSON ({e}).") from None
    if spec not in builtin_names():
        raise EdgePromptError(f"unknown device profile {spec!r}; built-in profiles: {', '.join(builtin_names())} (or pass a .json file).")
    text = resources.files("edgeprompt.profile").joinpath("devices").joinpath(f"{spec}.json").read_text()
    return _check(json.loads(text), f"built-in profile {spec}")


def calibrated(name: str, env: dict, bandwidth: dict[int, float], model_cal: dict | None, read_bps: float | None) -> dict:
    """This machine as a device profile, from the profiler's own measurements."""
    src = f"measured by edgeprompt profile --calibrate on {env.get('cpu')}"
    d = {
        "format": DEVICE_FORMAT,
        "version": DEVICE_VERSION,
        "name": name,
        "title": f"{env.get('cpu')} ({env.get('cores')} cores), measured",
        "cores": {"value": env.get("cores"), "kind": "measured", "source": "os.sched_getaffinity"},
        "ram_gib": {"value": round((env.get("memory_bytes") or 0) / 2**30, 1), "kind": "measured", "source": "/proc/meminfo"},
        "memory_bandwidth_gbs": {str(t): {"value": round(v, 2), "kind": "measured", "source": src} for t, v in bandwidth.items()},
        "published": [],
    }
    if model_cal:
        T, G = model_cal["threads"], model_cal["G_flops"]
        d["compute_gflops"] = {str(T): {"value": round(G / 1e9, 2), "kind": "measured", "source": src + " (effective prefill throughput)"}}
    if read_bps:
        d["storage_read_mbs"] = {
            "this device": {"value": round(read_bps / 1e6, 1), "kind": "measured", "source": src + " (sequential read; page cache if warm)"}
        }
    return d
