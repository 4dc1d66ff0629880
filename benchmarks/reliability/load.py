"""Load on loopback (issue 10): 32 concurrent clients with mixed tasks on both backends, then a soak.

``burst``: each backend is served (``edgeprompt serve``, a child process); every request of a mixed set
(classify ``pt``/``px``, greedy generation plain and per task, native and OpenAI endpoints) is first asked
alone, then ``clients`` threads ask them all at once, each in its own order. An answer that differs from
the one asked alone is *wrong*; a connection reset or a dropped connection is a *reset*; 503s are counted.
Run once with the queue above the clients (expect 0 wrong, 0 resets, 0 × 503) and once below it (503s,
still 0 wrong and 0 resets).

``soak``: ``clients`` threads loop over the same requests for ``seconds``; the server's RSS is sampled every
few seconds; growth is measured from the end of the warm-up (the first 20%); latency p50 and p99.

    python benchmarks/reliability/load.py --soak-seconds 600 --json load.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Served, tiny_bundles  # noqa: E402

REQUESTS = [
    ("/classify", {"task": "pt", "text": "what a lovely morning"}),
    ("/classify", {"task": "px", "text": "the service was awful"}),
    ("/classify", {"task": "pt", "text": "ok I guess, nothing special " * 3}),
    ("/generate", {"task": None, "text": "the food was", "max_new_tokens": 8}),
    ("/generate", {"task": "pt", "text": "the day", "max_new_tokens": 6}),
    ("/generate", {"task": "px", "text": "a long night", "max_new_tokens": 6, "stream": True}),
    ("/v1/completions", {"model": "px", "prompt": "never again"}),
    ("/v1/completions", {"model": "pt", "prompt": "the film", "max_tokens": 5, "temperature": 0, "stream": True}),
]


def ask(port: int, path: str, body: dict, timeout: float = 120.0) -> tuple[str, object, float]:
    """One request on a fresh connection: ``("ok", answer)``, ``("503", None)``, ``("reset", error)`` or ``("http", status)``."""
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        dt = time.perf_counter() - t0
        if r.status == 503:
            return "503", r.getheader("Retry-After"), dt
        if r.status != 200:
            return "http", r.status, dt
        if data.startswith(b"data: "):  # SSE: the pieces joined
            out = "".join(json.loads(x[6:])["choices"][0]["text"] for x in data.decode().split("\n\n") if x.startswith("data: {"))
        elif b"\n" in data.strip():  # NDJSON
            out = "".join(json.loads(x).get("piece", "") for x in data.decode().splitlines())
        else:
            out = json.loads(data)
            if "choices" in out:
                out = (out["choices"][0]["text"], out["choices"][0].get("probabilities"))
        return "ok", out, dt
    except (ConnectionError, http.client.RemoteDisconnected, http.client.IncompleteRead, OSError) as e:
        return "reset", f"{type(e).__name__}: {e}", time.perf_counter() - t0
    finally:
        c.close()


def burst(port: int, clients: int, rounds: int, seed: int = 0) -> dict:
    alone = {i: ask(port, p, b) for i, (p, b) in enumerate(REQUESTS)}
    if any(s != "ok" for s, _, _ in alone.values()):
        raise RuntimeError(f"a request failed alone: {alone}")
    counts = {"requests": 0, "ok": 0, "wrong": 0, "503": 0, "reset": 0, "other": 0}
    wrong_examples = []
    lock = threading.Lock()

    def client(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        order = [i for _ in range(rounds) for i in range(len(REQUESTS))]
        rng.shuffle(order)
        for i in order:
            status, out, _ = ask(port, *REQUESTS[i])
            with lock:
                counts["requests"] += 1
                if status == "ok":
                    if out == alone[i][1]:
                        counts["ok"] += 1
                    else:
                        counts["wrong"] += 1
                        wrong_examples.append((REQUESTS[i], out, alone[i][1]))
                elif status in ("503", "reset"):
                    counts[status] += 1
                else:
                    counts["other"] += 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        list(ex.map(client, range(clients)))
    counts["seconds"] = round(time.perf_counter() - t0, 1)
    counts["wrong_examples"] = [repr(w)[:300] for w in wrong_examples[:3]]
    return counts


def soak(served: Served, clients: int, seconds: float, sample_s: float = 5.0) -> dict:
    stop = time.monotonic() + seconds
    lat: list[float] = []
    errors: list[str] = []
    rss: list[tuple[float, float]] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        rng = random.Random(k)
        while time.monotonic() < stop:
            status, out, dt = ask(served.port, *REQUESTS[rng.randrange(len(REQUESTS))])
            with lock:
                (lat.append(dt) if status == "ok" else errors.append(f"{status}: {out}"))

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    while time.monotonic() < stop:
        rss.append((time.monotonic() - t0, served.rss_mib()))
        time.sleep(min(sample_s, max(0.0, stop - time.monotonic())))
    for t in threads:
        t.join(timeout=180)
    rss.append((time.monotonic() - t0, served.rss_mib()))
    warm = [r for t, r in rss if t >= 0.2 * seconds]
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")  # noqa: E731
    return {
        "seconds": seconds,
        "clients": clients,
        "requests": len(lat) + len(errors),
        "errors": len(errors),
        "error_examples": errors[:3],
        "p50_ms": round(q(0.50), 1),
        "p99_ms": round(q(0.99), 1),
        "mean_ms": round(statistics.fmean(lat) * 1000, 1) if lat else None,
        "rss_start_mib": round(rss[0][1], 1),
        "rss_after_warmup_mib": round(warm[0], 1),
        "rss_end_mib": round(rss[-1][1], 1),
        "rss_growth_after_warmup_mib": round(rss[-1][1] - warm[0], 1),
        "rss_growth_after_warmup_pct": round(100 * (rss[-1][1] - warm[0]) / warm[0], 2),
        "rss_samples": [(round(t, 1), round(r, 1)) for t, r in rss],
    }


def run(work: Path | None = None, clients: int = 32, rounds: int = 2, soak_seconds: float = 600.0, soak_clients: int = 8, log=print) -> dict:
    work = Path(work or tempfile.mkdtemp(prefix="edgeprompt-load-"))
    bundles = tiny_bundles(work)
    out: dict = {"clients": clients, "rounds": rounds, "burst": {}, "overload": {}, "soak": {}}
    for backend, b in bundles.items():
        with Served(b, "--queue", "64") as s:
            out["burst"][backend] = burst(s.port, clients, rounds)
            log(f"  {backend} burst, {clients} clients, queue 64: {out['burst'][backend]}")
        with Served(b, "--queue", "8") as s:
            out["overload"][backend] = burst(s.port, clients, rounds, seed=1)
            log(f"  {backend} burst, {clients} clients, queue 8: {out['overload'][backend]}")
    servers = {backend: Served(b, "--queue", "64") for backend, b in bundles.items()}
    try:  # both backends at once, each for the whole time
        with ThreadPoolExecutor(len(servers)) as ex:
            futs = {backend: ex.submit(soak, s, soak_clients, soak_seconds) for backend, s in servers.items()}
            out["soak"] = {backend: f.result() for backend, f in futs.items()}
    finally:
        for s in servers.values():
            s.close()
    for backend, r in out["soak"].items():
        log(
            f"  {backend} soak {r['seconds']:.0f} s: {r['requests']} requests, {r['errors']} errors, p50 {r['p50_ms']} ms, "
            f"p99 {r['p99_ms']} ms, RSS {r['rss_after_warmup_mib']} -> {r['rss_end_mib']} MiB after warm-up"
        )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="times each client asks each request")
    ap.add_argument("--soak-seconds", type=float, default=600.0, help="each backend, both at once")
    ap.add_argument("--soak-clients", type=int, default=8)
    ap.add_argument("--work", help="a folder to build the tiny bundles in (reused)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    out = run(Path(args.work) if args.work else None, args.clients, args.rounds, args.soak_seconds, args.soak_clients)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    bad = sum(r["wrong"] + r["reset"] + r["other"] for part in ("burst", "overload") for r in out[part].values())
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
