"""``edgeprompt serve``: a small HTTP JSON server over one :class:`Runtime` (standard library only).

Endpoints (JSON in, JSON out; every request names its ``task``, ``null`` = the plain model)::

    GET  /health                      {"ok": true, "backend": ..., "quant": ...}
    GET  /tasks                       {"tasks": [{"name", "method", "kind", "labels"}], "cache": {...}}
    GET  /metrics                     Prometheus text: requests by endpoint and status, latency histograms,
                                      the prefix cache, connections served and refused
    POST /classify  {"task", "text", "truncate"?}          -> {"label", "probabilities", "logprobs"}
    POST /generate  {"task", "text", "max_new_tokens"?, "temperature"?, "top_k"?, "top_p"?,
                     "seed"?, "stop"?, "stream"?, "truncate"?}
                    -> {"text"}; with "stream": true, newline-delimited JSON {"piece": ...} lines
                       then {"done": true}

Bad requests get status 400 and ``{"error": message}``; every other error too is JSON (404, 405, 411, 413,
414, 503), never HTML. Every request's body is read (or the connection closed), so a body can never be
parsed as the next request; chunked bodies are refused (411). At most ``max_connections`` connections are
served at once (one thread each); beyond that a connection gets 503 with ``Retry-After`` at once.
Bound to 127.0.0.1 unless told otherwise; another address needs an API key (``--api-key``: every endpoint but
``/health`` then wants ``Authorization: Bearer KEY``) or an explicit ``--no-api-key``.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edgeprompt.core.errors import EdgePromptError, RequestError
from edgeprompt.runtimes.runtime import Runtime

MAX_BODY = 1 << 20  # 1 MiB of JSON per request
MAX_CONNECTIONS = 64  # served at once, a thread each; beyond it: 503
BACKLOG = 128  # connections the OS queues before accept (the standard library's default is 5)

_GEN_FIELDS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed")  # checked by Runtime.generate


ENDPOINTS = ("/health", "/tasks", "/metrics", "/classify", "/generate")


class _Metrics:
    """Counters for ``GET /metrics`` (Prometheus text format 0.0.4). Latency is the time to the status line:
    for a stream, its start."""

    BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.hist: dict[str, list[float]] = {}  # endpoint -> bucket counts + [sum, count]
        self.active = 0
        self.refused = 0

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        ep = path if path in ENDPOINTS else "other"
        with self.lock:
            k = (method, ep, status)
            self.requests[k] = self.requests.get(k, 0) + 1
            h = self.hist.setdefault(ep, [0.0] * (len(self.BUCKETS) + 2))
            for i, b in enumerate(self.BUCKETS):
                if seconds <= b:
                    h[i] += 1
            h[-2] += seconds
            h[-1] += 1

    def render(self, rt: Runtime) -> str:
        out = [
            "# HELP edgeprompt_requests_total Requests answered, by method, endpoint and status.",
            "# TYPE edgeprompt_requests_total counter",
        ]
        with self.lock:
            out += [f'edgeprompt_requests_total{{method="{m}",endpoint="{e}",status="{st}"}} {n}' for (m, e, st), n in sorted(self.requests.items())]
            out += ["# HELP edgeprompt_request_seconds Time to the status line.", "# TYPE edgeprompt_request_seconds histogram"]
            for ep, h in sorted(self.hist.items()):
                out += [f'edgeprompt_request_seconds_bucket{{endpoint="{ep}",le="{b:g}"}} {int(h[i])}' for i, b in enumerate(self.BUCKETS)]
                out += [f'edgeprompt_request_seconds_bucket{{endpoint="{ep}",le="+Inf"}} {int(h[-1])}']
                out += [f'edgeprompt_request_seconds_sum{{endpoint="{ep}"}} {h[-2]:.6f}', f'edgeprompt_request_seconds_count{{endpoint="{ep}"}} {int(h[-1])}']
            active, refused = self.active, self.refused
        s = rt.cache.stats
        out += [
            "# TYPE edgeprompt_connections_active gauge",
            f"edgeprompt_connections_active {active}",
            "# TYPE edgeprompt_connections_refused_total counter",
            f"edgeprompt_connections_refused_total {refused}",
            "# TYPE edgeprompt_prefix_cache_hits_total counter",
            f"edgeprompt_prefix_cache_hits_total {s.hits}",
            "# TYPE edgeprompt_prefix_cache_misses_total counter",
            f"edgeprompt_prefix_cache_misses_total {s.misses}",
            "# TYPE edgeprompt_prefix_cache_evictions_total counter",
            f"edgeprompt_prefix_cache_evictions_total {s.evictions}",
            "# TYPE edgeprompt_prefix_cache_bytes gauge",
            f"edgeprompt_prefix_cache_bytes {s.bytes}",
            "# TYPE edgeprompt_tasks gauge",
            f"edgeprompt_tasks {len(rt.tasks)}",
        ]
        return "\n".join(out) + "\n"


def _handler(rt: Runtime, api_key: str | None = None, metrics: _Metrics | None = None):
    want = f"Bearer {api_key}".encode() if api_key else None
    metrics = metrics or _Metrics()

    class Handler(BaseHTTPRequestHandler):
        server_version = "edgeprompt"
        protocol_version = "HTTP/1.1"
        timeout = 60  # seconds a client may take to send a request

        def log_message(self, fmt, *args):  # quiet by default
            pass

        def send_response(self, code, message=None):
            t0 = getattr(self, "_t0", None)
            if t0 is not None:
                metrics.observe(self.command or "?", (self.path or "").split("?")[0], code, time.perf_counter() - t0)
            super().send_response(code, message)

        def parse_request(self):
            self._t0 = time.perf_counter()
            return super().parse_request()

        def _send(self, status: int, obj: Any) -> None:
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def send_error(self, code, message=None, explain=None):  # the standard library's errors are HTML
            self.close_connection = True
            try:
                self._send(code, {"error": message or self.responses.get(code, ("error",))[0]})
            except OSError:
                pass

        def _raw_body(self) -> bytes:
            """The request's body, read whole: whatever the method and path, so it is never taken for the
            next request on the connection. Chunked bodies are refused; a body too large closes the connection."""
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                raise _HTTPError(411, "Transfer-Encoding is not accepted; send the body with a Content-Length.")
            try:
                n = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                n = -1
            if n < 0 or n > MAX_BODY:
                self.close_connection = True  # the body is not read: the connection cannot be reused
                raise _HTTPError(413, f"Content-Length must be between 0 and {MAX_BODY} bytes.")
            return self.rfile.read(n) if n else b""

        def _body(self, raw: bytes) -> dict:
            try:
                obj = json.loads(raw or b"{}")
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise EdgePromptError(f"the request body is not JSON ({e}).") from None
            if not isinstance(obj, dict):
                raise EdgePromptError("the request body must be a JSON object.")
            if not isinstance(obj.get("text"), str):
                raise EdgePromptError('the request needs "text": a string.')
            if "task" in obj and obj["task"] is not None and not isinstance(obj["task"], str):
                raise EdgePromptError('"task" must be a task name or null.')
            for flag in ("truncate", "stream"):
                if flag in obj and not isinstance(obj[flag], bool):
                    raise EdgePromptError(f'"{flag}" must be true or false.')
            return obj

        def _authorized(self) -> bool:
            """With an API key, every endpoint but /health needs ``Authorization: Bearer KEY`` (constant-time compare)."""
            if want is None or self.path == "/health":
                return True
            got = (self.headers.get("Authorization") or "").encode()
            if hmac.compare_digest(got, want):
                return True
            body = json.dumps({"error": "missing or wrong API key: send Authorization: Bearer KEY."}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("WWW-Authenticate", "Bearer")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return False

        def do_GET(self):
            try:
                self._raw_body()
            except _HTTPError as e:
                return self._send(e.status, {"error": str(e)})
            if not self._authorized():
                return
            if self.path == "/health":
                self._send(200, {"ok": True, "backend": rt.backend.name, "quant": rt.bundle.quant})
            elif self.path == "/metrics":
                body = metrics.render(rt).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path == "/tasks":
                tasks = [rt.task_info(name) for name in rt.tasks]
                s = rt.cache.stats
                self._send(200, {"tasks": tasks, "cache": {"hits": s.hits, "misses": s.misses, "entries": s.entries, "bytes": s.bytes}})
            else:
                self._send(404, {"error": f"no endpoint GET {self.path}; try /health, /tasks, /metrics, POST /classify, POST /generate."})

        def _unsupported(self):
            try:
                self._raw_body()
            except _HTTPError:
                pass
            self.close_connection = True
            self._send(405, {"error": f"{self.command} is not supported; use GET /health, GET /tasks, POST /classify or POST /generate."})

        do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _unsupported

        def do_POST(self):
            streaming = False
            try:
                raw = self._raw_body()
                if not self._authorized():
                    return
                if self.path == "/classify":
                    req = self._body(raw)
                    out = rt.classify(req.get("task"), req["text"], truncate=req.get("truncate", False))
                    self._send(200, out.to_dict())
                elif self.path == "/generate":
                    req = self._body(raw)
                    kw = {k: req[k] for k in _GEN_FIELDS if req.get(k) is not None}
                    stop = req.get("stop") or []
                    # generate() checks the task and the length before returning: errors come before the 200
                    it = rt.generate(req.get("task"), req["text"], stop=stop, truncate=req.get("truncate", False), **kw)
                    if req.get("stream"):
                        self.send_response(200)
                        self.send_header("Content-Type", "application/x-ndjson")
                        self.send_header("Transfer-Encoding", "chunked")
                        self.end_headers()
                        streaming = True
                        try:
                            for piece in it:
                                self._chunk(json.dumps({"piece": piece}) + "\n")
                            self._chunk(json.dumps({"done": True}) + "\n")
                        finally:
                            it.close()
                        self.wfile.write(b"0\r\n\r\n")
                    else:
                        self._send(200, {"text": "".join(it)})
                else:
                    self._send(404, {"error": f"no endpoint POST {self.path}; try /classify or /generate."})
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client went away
            except _HTTPError as e:
                self._send(e.status, {"error": str(e)})
            except Exception as e:  # noqa: BLE001 - every error becomes a JSON answer, never a dropped connection
                bad_request = isinstance(e, (EdgePromptError, ValueError, TypeError))
                msg = str(e) if bad_request else f"internal error: {type(e).__name__}: {e}"
                try:
                    if streaming:  # the status line is gone: end the stream with an error line
                        self._chunk(json.dumps({"error": msg}) + "\n")
                        self.wfile.write(b"0\r\n\r\n")
                        self.close_connection = True
                    else:
                        self._send(400 if bad_request else 500, {"error": msg})
                except OSError:
                    self.close_connection = True

        def _chunk(self, s: str) -> None:
            b = s.encode()
            self.wfile.write(f"{len(b):x}\r\n".encode() + b + b"\r\n")
            self.wfile.flush()

    return Handler


class _HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` at once; the next ones get 503 and are closed."""

    daemon_threads = True
    request_queue_size = BACKLOG

    def __init__(self, addr, handler, max_connections: int = MAX_CONNECTIONS, metrics: _Metrics | None = None):
        self._slots = threading.BoundedSemaphore(max_connections)
        self.metrics = metrics or _Metrics()
        super().__init__(addr, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            with self.metrics.lock:
                self.metrics.refused += 1
            body = json.dumps({"error": "the server is busy; retry shortly."}).encode()
            head = f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            try:
                request.sendall(head.encode() + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        with self.metrics.lock:
            self.metrics.active += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        with self.metrics.lock:
            self.metrics.active -= 1
        self._slots.release()

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def make_server(
    rt: Runtime, host: str = "127.0.0.1", port: int = 8080, max_connections: int = MAX_CONNECTIONS, api_key: str | None = None, allow_open: bool = False
) -> ThreadingHTTPServer:
    """A threading HTTP server over ``rt`` (call ``serve_forever()``; port 0 picks a free port).

    ``api_key``: every endpoint but ``/health`` then needs ``Authorization: Bearer KEY``. An address other than
    loopback without a key is refused unless ``allow_open`` says the network is trusted.
    """
    if host not in LOOPBACK and not api_key and not allow_open:
        raise RequestError(
            f"serving on {host} would let anyone on the network use this model: pass --api-key KEY "
            "(clients send Authorization: Bearer KEY), or --no-api-key if the network is trusted."
        )
    if api_key is not None and len(api_key) < 16:
        raise RequestError("--api-key must be at least 16 characters.")
    metrics = _Metrics()
    return _Server((host, port), _handler(rt, api_key, metrics), max_connections=max_connections, metrics=metrics)
