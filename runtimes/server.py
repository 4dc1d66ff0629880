"""``edgeprompt serve``: a small HTTP JSON server over one :class:`Runtime` (standard library only).

Endpoints (JSON in, JSON out; every request names its ``task``, ``null`` = the plain model)::

    GET  /health                      {"ok": true, "backend": ..., "quant": ...}
    GET  /tasks                       {"tasks": [{"name", "method", "kind", "labels"}], "cache": {...}}
    POST /classify  {"task", "text", "truncate"?}          -> {"label", "probabilities", "logprobs"}
    POST /generate  {"task", "text", "max_new_tokens"?, "temperature"?, "top_k"?, "top_p"?,
                     "seed"?, "stop"?, "stream"?, "truncate"?}
                    -> {"text"}; with "stream": true, newline-delimited JSON {"piece": ...} lines
                       then {"done": true}

Bad requests get status 400 and ``{"error": message}``. Bound to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edgeprompt.core.errors import EdgePromptError
from edgeprompt.runtimes.runtime import Runtime

MAX_BODY = 1 << 20  # 1 MiB of JSON per request

_GEN_FIELDS = {"max_new_tokens": int, "temperature": float, "top_k": int, "top_p": float, "seed": int}


def _handler(rt: Runtime):
    class Handler(BaseHTTPRequestHandler):
        server_version = "edgeprompt"
        protocol_version = "HTTP/1.1"
        timeout = 60  # seconds a client may take to send a request

        def log_message(self, fmt, *args):  # quiet by default
            pass

        def _send(self, status: int, obj: Any) -> None:
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> dict:
            try:
                n = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                n = -1
            if n < 0 or n > MAX_BODY:
                self.close_connection = True  # the body is not read: the connection cannot be reused
                raise EdgePromptError(f"Content-Length must be between 0 and {MAX_BODY} bytes.")
            try:
                obj = json.loads(self.rfile.read(n) or b"{}")
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

        def do_GET(self):
            if self.path == "/health":
                self._send(200, {"ok": True, "backend": rt.backend.name, "quant": rt.bundle.quant})
            elif self.path == "/tasks":
                tasks = [rt.task_info(name) for name in rt.tasks]
                s = rt.cache.stats
                self._send(200, {"tasks": tasks, "cache": {"hits": s.hits, "misses": s.misses, "entries": s.entries, "bytes": s.bytes}})
            else:
                self._send(404, {"error": f"no endpoint GET {self.path}; try /health, /tasks, POST /classify, POST /generate."})

        def do_POST(self):
            streaming = False
            try:
                if self.path == "/classify":
                    req = self._body()
                    out = rt.classify(req.get("task"), req["text"], truncate=req.get("truncate", False))
                    self._send(200, out.to_dict())
                elif self.path == "/generate":
                    req = self._body()
                    kw = {k: f(req[k]) for k, f in _GEN_FIELDS.items() if req.get(k) is not None}
                    stop = req.get("stop") or []
                    if isinstance(stop, str):
                        stop = [stop]
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


def make_server(rt: Runtime, host: str = "127.0.0.1", port: int = 8080) -> ThreadingHTTPServer:
    """A threading HTTP server over ``rt`` (call ``serve_forever()``; port 0 picks a free port)."""
    srv = ThreadingHTTPServer((host, port), _handler(rt))
    srv.daemon_threads = True
    return srv
