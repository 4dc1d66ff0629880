"""``edgeprompt serve``: one :class:`Runtime` over HTTP, OpenAI-compatible and native (the ``serve`` extra).

A Starlette app run by uvicorn (as llama-cpp-python's server is). A task is a model: ``/v1/models`` lists
the bundle's tasks and the plain model, and a request's ``model`` picks one.

OpenAI-compatible (errors in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``)::

    GET  /v1/models
    POST /v1/completions       {"model", "prompt", "max_tokens"?, "temperature"?, "top_p"?, "stop"?, "seed"?,
                                "stream"?, "stream_options"?}   (SSE with "stream": true, ending "data: [DONE]")
    POST /v1/chat/completions  {"model", "messages", ...}: the plain model renders the messages with the
                                tokenizer's chat template; a task takes the last user message as its text

    A classification task answers with its label (scored over the labels, not sampled); the choice also
    carries ``"probabilities"``. OpenAI's defaults apply (``max_tokens`` 16, ``temperature`` 1).

Native (errors ``{"error": message}``; ``task`` null = the plain model)::

    GET  /health                      {"ok": true, "backend": ..., "quant": ...}   (open without the API key)
    GET  /tasks                       {"tasks": [{"name", "method", "kind", "labels", ...}], "cache": {...}}
    GET  /metrics                     Prometheus text: requests by endpoint and status, latency, the queue, the cache
    POST /classify  {"task", "text", "truncate"?}          -> {"label", "probabilities", "logprobs"}
    POST /generate  {"task", "text", "max_new_tokens"?, "temperature"?, "top_k"?, "top_p"?, "seed"?, "stop"?,
                     "stream"?, "truncate"?}  -> {"text"}; streamed: NDJSON {"piece"} lines, then {"done": true}

Limits (:class:`Limits`, each a ``serve`` flag): body size and the time to send it; ``max_new_tokens``; the
runtime's own limits on stop strings and sampling; ``concurrency`` requests computing at once per runtime
(llama.cpp runs one sequence at a time) with ``queue`` more waiting at most ``queue_timeout`` seconds, and
503 + ``Retry-After`` beyond; ``request_timeout`` seconds of compute (a request past it ends with 504, a stream
with an error event); ``idle_timeout`` for a kept-alive connection; ``max_connections`` open at once. JSON
bodies with NaN or Infinity are refused. Bound to 127.0.0.1 unless told otherwise; another address needs an
API key (every endpoint but ``/health`` then wants ``Authorization: Bearer KEY``, compared in constant time)
or an explicit ``allow_open``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable

from edgeprompt.core.constants import TaskKind, TokenizerKeys
from edgeprompt.core.errors import EdgePromptError, RequestError
from edgeprompt.runtimes.limits import Limits
from edgeprompt.runtimes.runtime import Generation, Runtime

try:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route
except ImportError:  # the runtime extra alone has no HTTP stack
    uvicorn = None

LOOPBACK = ("127.0.0.1", "::1", "localhost")


class _HTTPError(Exception):
    """An answer other than 200: its status, message and (for /v1) OpenAI's error type, param and code."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error", 408: "invalid_request_error", 413: "invalid_request_error"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.param, self.code, self.headers = status, param, code, headers or {}

    def body(self, openai: bool) -> dict:
        if not openai:
            return {"error": str(self)}
        kind = self.TYPES.get(self.status, "server_error")
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}


def _json(obj: Any, status: int = 200, headers: dict | None = None) -> "Response":
    return Response(json.dumps(obj, allow_nan=False), status_code=status, media_type="application/json", headers=headers)


class _Metrics:
    """Counters for ``GET /metrics`` (Prometheus text format 0.0.4). Latency is the time to the response's
    start: for a stream, its first byte."""

    BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

    def __init__(self, endpoints: tuple[str, ...]):
        self.endpoints = endpoints
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.hist: dict[str, list[float]] = {}  # endpoint -> bucket counts + [sum, count]

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        ep = path if path in self.endpoints else "other"
        with self.lock:
            k = (method, ep, status)
            self.requests[k] = self.requests.get(k, 0) + 1
            h = self.hist.setdefault(ep, [0.0] * (len(self.BUCKETS) + 2))
            for i, b in enumerate(self.BUCKETS):
                if seconds <= b:
                    h[i] += 1
            h[-2] += seconds
            h[-1] += 1

    def render(self, rt: Runtime, gate: "_Gate") -> str:
        out = [
            "# HELP edgeprompt_requests_total Requests answered, by method, endpoint and status.",
            "# TYPE edgeprompt_requests_total counter",
        ]
        with self.lock:
            out += [f'edgeprompt_requests_total{{method="{m}",endpoint="{e}",status="{st}"}} {n}' for (m, e, st), n in sorted(self.requests.items())]
            out += ["# HELP edgeprompt_request_seconds Time to the response's start.", "# TYPE edgeprompt_request_seconds histogram"]
            for ep, h in sorted(self.hist.items()):
                out += [f'edgeprompt_request_seconds_bucket{{endpoint="{ep}",le="{b:g}"}} {int(h[i])}' for i, b in enumerate(self.BUCKETS)]
                out += [f'edgeprompt_request_seconds_bucket{{endpoint="{ep}",le="+Inf"}} {int(h[-1])}']
                out += [f'edgeprompt_request_seconds_sum{{endpoint="{ep}"}} {h[-2]:.6f}', f'edgeprompt_request_seconds_count{{endpoint="{ep}"}} {int(h[-1])}']
        s = rt.cache.stats
        gauges = (
            ("requests_running", "gauge", gate.running),
            ("requests_queued", "gauge", gate.waiting),
            ("requests_rejected_total", "counter", gate.rejected),
            ("prefix_cache_hits_total", "counter", s.hits),
            ("prefix_cache_misses_total", "counter", s.misses),
            ("prefix_cache_evictions_total", "counter", s.evictions),
            ("prefix_cache_bytes", "gauge", s.bytes),
            ("tasks", "gauge", len(rt.tasks)),
        )
        for name, kind, v in gauges:
            out += [f"# TYPE edgeprompt_{name} {kind}", f"edgeprompt_{name} {v}"]
        return "\n".join(out) + "\n"


class _Gate:
    """At most ``concurrency`` requests compute at once; ``queue`` more wait (at most ``timeout`` seconds);
    beyond that a request is refused at once with 503 and ``Retry-After``. Lives on the event loop's thread."""

    def __init__(self, concurrency: int, queue: int, timeout: float):
        self.concurrency, self.capacity, self.timeout = concurrency, concurrency + queue, timeout
        self._sem: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.running = self.waiting = self.rejected = 0

    async def enter(self) -> Callable[[], None]:
        """Wait for a turn; returns the function that gives it back (call it exactly once)."""
        loop = asyncio.get_running_loop()
        if self._sem is None or self._loop is not loop:  # first use, or the app now runs on another loop: turns
            self._sem, self._loop = asyncio.Semaphore(self.concurrency), loop  # held on a dead loop are gone with it
            self.running = self.waiting = 0
        if self.running + self.waiting >= self.capacity:
            self.rejected += 1
            raise _HTTPError(503, "the server is busy (its queue is full); retry shortly.", code="overloaded", headers={"Retry-After": "1"})
        self.waiting += 1
        try:
            await asyncio.wait_for(self._sem.acquire(), self.timeout)
        except asyncio.TimeoutError:
            self.rejected += 1
            raise _HTTPError(
                503, f"the server is busy (waited {self.timeout:g} s for a turn); retry shortly.", code="overloaded", headers={"Retry-After": "1"}
            ) from None
        finally:
            self.waiting -= 1
        self.running += 1
        done = False

        sem = self._sem

        def leave() -> None:
            nonlocal done
            if not done:
                done = True
                if sem is self._sem:  # a turn of a loop since replaced is not counted any more
                    self.running -= 1
                    sem.release()

        return leave


class _Turn:
    """A request's turn at the compute pool (from :meth:`_Gate.enter`), given back exactly once: when the work
    it started has stopped, not before (a client that goes away stops a generation at its next token)."""

    def __init__(self, leave: Callable[[], None]):
        self._leave = leave
        self.stop = threading.Event()
        self.work: asyncio.Future | None = None

    def finish(self) -> None:
        self.stop.set()
        if self.work is None or self.work.done():
            self._leave()
        else:
            self.work.add_done_callback(lambda _: self._leave())


class _Stream(StreamingResponse if uvicorn else object):
    """A streaming response that stops its generation when the client goes away (whatever the ASGI version)
    and gives its turn back however it ends."""

    def __init__(self, body: AsyncIterator[bytes], turn: _Turn, media_type: str):
        super().__init__(body, media_type=media_type, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._turn = turn

    async def __call__(self, scope, receive, send):
        import anyio

        try:
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(watch)
                try:
                    await self.stream_response(send)
                except OSError:
                    pass  # the client went away mid-send
                tg.cancel_scope.cancel()
        finally:
            self._turn.finish()


_END, _ERROR = object(), object()


class _App:
    """The routes over one runtime. Compute runs on a pool of ``concurrency`` threads; a generation runs
    start to end on one thread (a llama.cpp sequence belongs to the thread that opened it) and hands its
    pieces to the event loop."""

    NATIVE = ("/health", "/tasks", "/metrics", "/classify", "/generate")
    OPENAI = ("/v1/models", "/v1/completions", "/v1/chat/completions")

    def __init__(self, rt: Runtime, limits: Limits, api_key: str | None):
        self.rt, self.limits = rt, limits
        self._want = f"Bearer {api_key}".encode() if api_key else None
        self.metrics = _Metrics(self.NATIVE + self.OPENAI)
        self.gate = _Gate(limits.concurrency, limits.queue, limits.queue_timeout)
        self.pool = ThreadPoolExecutor(max_workers=limits.concurrency, thread_name_prefix="edgeprompt")
        self.created = int(time.time())
        names = set(rt.tasks)
        base = "-".join(re.findall(r"[A-Za-z0-9._]+", rt.bundle.base_model.name)) or "base"  # an id clients can pass around
        self.plain_id = base if base not in names else f"base:{base}"
        self._chat = None

    # -- plumbing ---------------------------------------------------------------------------------
    def routes(self) -> list:
        r = [
            ("/health", self.health, ["GET"]),
            ("/tasks", self.tasks, ["GET"]),
            ("/metrics", self.metrics_text, ["GET"]),
            ("/classify", self.classify, ["POST"]),
            ("/generate", self.generate, ["POST"]),
            ("/v1/models", self.models, ["GET"]),
            ("/v1/completions", self.completions, ["POST"]),
            ("/v1/chat/completions", self.chat_completions, ["POST"]),
        ]
        return [Route(path, self._wrap(fn), methods=methods) for path, fn, methods in r]

    def _wrap(self, fn):
        async def endpoint(request: Request) -> Response:
            t0 = time.perf_counter()
            openai = request.url.path.startswith("/v1/")
            try:
                if self._want is not None and request.url.path != "/health":
                    got = (request.headers.get("authorization") or "").encode()
                    if not hmac.compare_digest(got, self._want):
                        raise _HTTPError(
                            401, "missing or wrong API key: send Authorization: Bearer KEY.", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
                        )
                resp = await fn(request)
            except _HTTPError as e:
                resp = _json(e.body(openai), e.status, e.headers)
            except (EdgePromptError, ValueError, TypeError) as e:  # a bad request the runtime recognised
                resp = _json(_HTTPError(400, str(e)).body(openai), 400)
            except Exception as e:  # noqa: BLE001 - every error is a JSON answer
                resp = _json(_HTTPError(500, f"internal error: {type(e).__name__}: {e}").body(openai), 500)
            self.metrics.observe(request.method, request.url.path, resp.status_code, time.perf_counter() - t0)
            return resp

        return endpoint

    async def not_found(self, request: Request, exc) -> Response:
        """Starlette's 404 and 405, as JSON (OpenAI's shape under /v1)."""
        status = getattr(exc, "status_code", 404)
        if status == 405:
            msg = f"{request.method} {request.url.path} is not supported."
        else:
            msg = f"no endpoint {request.method} {request.url.path}; try {', '.join(self.NATIVE + self.OPENAI)}."
        self.metrics.observe(request.method, request.url.path, status, 0.0)
        return _json(_HTTPError(status, msg).body(request.url.path.startswith("/v1/")), status, getattr(exc, "headers", None))

    async def _body(self, request: Request) -> dict:
        """The JSON object of the body: size-bounded (413), time-bounded (408), NaN and Infinity refused."""
        cl = request.headers.get("content-length")
        if cl is not None and (not cl.isdigit() or int(cl) > self.limits.max_body):
            raise _HTTPError(413, f"the body must be at most {self.limits.max_body} bytes (Content-Length {cl[:20]!r}).")
        chunks: list[bytes] = []

        async def read() -> None:
            n = 0
            async for c in request.stream():
                n += len(c)
                if n > self.limits.max_body:
                    raise _HTTPError(413, f"the body must be at most {self.limits.max_body} bytes.")
                chunks.append(c)

        try:
            await asyncio.wait_for(read(), self.limits.body_timeout)
        except asyncio.TimeoutError:
            raise _HTTPError(408, f"the body took longer than {self.limits.body_timeout:g} s to arrive.") from None

        def refuse(name: str):
            raise ValueError(f"{name} is not JSON")

        try:
            obj = json.loads(b"".join(chunks) or b"{}", parse_constant=refuse)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise _HTTPError(400, f"the request body is not JSON ({e}).") from None
        if not isinstance(obj, dict):
            raise _HTTPError(400, "the request body must be a JSON object.")
        return obj

    async def _call(self, fn, *args):
        """Run ``fn`` on the compute pool, in turn (the gate), within the request timeout (504 beyond it; the
        turn is given back when ``fn`` has returned)."""
        turn = _Turn(await self.gate.enter())
        try:
            turn.work = asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
            try:
                return await asyncio.wait_for(asyncio.shield(turn.work), self.limits.request_timeout)
            except asyncio.TimeoutError:
                raise _HTTPError(504, f"the request took longer than {self.limits.request_timeout:g} s.") from None
        finally:
            turn.finish()

    def _drive(self, loop, q: asyncio.Queue, g: Generation, stop: threading.Event, deadline: float) -> None:
        """On a pool thread: run a generation to its end, handing pieces to the loop; stop when asked or late."""

        def put(item) -> None:
            try:
                loop.call_soon_threadsafe(q.put_nowait, item)
            except RuntimeError:  # the loop is closed: the server is stopping
                stop.set()

        try:
            for piece in g:
                put(piece)
                if stop.is_set():
                    return
                if time.monotonic() > deadline:
                    put((_ERROR, _HTTPError(504, f"the request took longer than {self.limits.request_timeout:g} s.")))
                    return
            put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the loop, which answers with it
            put((_ERROR, e))
        finally:
            g.close()

    async def _pieces(self, g: Generation, turn: _Turn) -> AsyncIterator[str]:
        """The generation's pieces as they come, run start to end on one pool thread; raises its error."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        turn.work = loop.run_in_executor(self.pool, self._drive, loop, q, g, turn.stop, time.monotonic() + self.limits.request_timeout)
        while True:
            item = await q.get()
            if item is _END:
                return
            if isinstance(item, tuple) and item[0] is _ERROR:
                raise item[1]
            yield item

    async def _generation(self, task, text, kw, stop, truncate) -> tuple[Generation, _Turn]:
        """Start a generation in turn: its checks (task, length, settings) run before any 200 is sent."""
        if isinstance(kw.get("max_new_tokens"), int) and kw["max_new_tokens"] > self.limits.max_new_tokens:
            raise _HTTPError(400, f"max_new_tokens must be at most {self.limits.max_new_tokens} on this server (serve --max-new-tokens).", param="max_tokens")
        turn = _Turn(await self.gate.enter())
        try:
            g = await asyncio.get_running_loop().run_in_executor(self.pool, lambda: self.rt.generate(task, text, stop=stop, truncate=truncate, **kw))
        except BaseException:
            turn.finish()
            raise
        return g, turn

    async def _collect(self, g: Generation, turn: _Turn) -> str:
        try:
            return "".join([p async for p in self._pieces(g, turn)])
        finally:
            turn.finish()

    # -- native -----------------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        return _json({"ok": True, "backend": self.rt.backend.name, "quant": self.rt.bundle.quant})

    async def tasks(self, request: Request) -> Response:
        s = self.rt.cache.stats
        return _json(
            {"tasks": [self.rt.task_info(n) for n in self.rt.tasks], "cache": {"hits": s.hits, "misses": s.misses, "entries": s.entries, "bytes": s.bytes}}
        )

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.render(self.rt, self.gate), media_type="text/plain; version=0.0.4")

    @staticmethod
    def _native_request(req: dict) -> tuple[str | None, str, bool]:
        if not isinstance(req.get("text"), str):
            raise RequestError('the request needs "text": a string.')
        task = req.get("task")
        if task is not None and not isinstance(task, str):
            raise RequestError('"task" must be a task name or null.')
        for flag in ("truncate", "stream"):
            if flag in req and not isinstance(req[flag], bool):
                raise RequestError(f'"{flag}" must be true or false.')
        return task, req["text"], req.get("truncate", False)

    async def classify(self, request: Request) -> Response:
        task, text, truncate = self._native_request(await self._body(request))
        out = await self._call(self.rt.classify, task, text, truncate)
        return _json(out.to_dict())

    async def generate(self, request: Request) -> Response:
        req = await self._body(request)
        task, text, truncate = self._native_request(req)
        kw = {k: req[k] for k in ("max_new_tokens", "temperature", "top_k", "top_p", "seed") if req.get(k) is not None}
        kw.setdefault("max_new_tokens", 64)
        g, turn = await self._generation(task, text, kw, req.get("stop") or [], truncate)
        if not req.get("stream"):
            return _json({"text": await self._collect(g, turn)})

        async def lines() -> AsyncIterator[bytes]:
            try:
                async for piece in self._pieces(g, turn):
                    yield (json.dumps({"piece": piece}) + "\n").encode()
                yield b'{"done": true}\n'
            except Exception as e:  # noqa: BLE001 - the status is sent: the stream ends with an error line
                yield (
                    json.dumps({"error": str(e) if isinstance(e, (EdgePromptError, _HTTPError)) else f"internal error: {type(e).__name__}: {e}"}) + "\n"
                ).encode()

        return _Stream(lines(), turn, "application/x-ndjson")

    # -- OpenAI -----------------------------------------------------------------------------------
    async def models(self, request: Request) -> Response:
        ids = [self.plain_id] + self.rt.tasks
        data = [{"id": i, "object": "model", "created": self.created, "owned_by": "edgeprompt"} for i in ids]
        for d in data[1:]:
            d["edgeprompt"] = self.rt.task_info(d["id"])
        return _json({"object": "list", "data": data})

    def _task_of(self, model: Any) -> str | None:
        if not isinstance(model, str):
            raise _HTTPError(400, '"model" is required: a task name, or the plain model\'s id (GET /v1/models).', param="model")
        if model == self.plain_id:
            return None
        if model not in self.rt.tasks:
            ids = ", ".join([self.plain_id] + self.rt.tasks)
            raise _HTTPError(404, f"the model {model!r} does not exist; this server has: {ids}.", param="model", code="model_not_found")
        return model

    @staticmethod
    def _sampling(req: dict, max_key: str) -> dict:
        """OpenAI's sampling fields to the runtime's (its checks name the setting); unsupported ones refused."""
        for key, ok in (("n", (None, 1)), ("best_of", (None, 1)), ("echo", (None, False)), ("logprobs", (None, False, 0)), ("suffix", (None,))):
            if req.get(key) not in ok:
                raise _HTTPError(400, f'"{key}" = {req.get(key)!r} is not supported here (supported: {ok[1] if len(ok) > 1 else "null"}).', param=key)
        for key in ("presence_penalty", "frequency_penalty"):
            if req.get(key) not in (None, 0, 0.0):
                raise _HTTPError(400, f'"{key}" is not supported here; leave it 0.', param=key)
        if req.get("logit_bias"):
            raise _HTTPError(400, '"logit_bias" is not supported here.', param="logit_bias")
        if "stream" in req and not isinstance(req["stream"], bool):
            raise _HTTPError(400, '"stream" must be true or false.', param="stream")
        n = req.get(max_key)
        kw = {
            "max_new_tokens": 16 if n is None else n,
            "temperature": 1.0 if req.get("temperature") is None else req["temperature"],
            "top_p": 1.0 if req.get("top_p") is None else req["top_p"],
        }
        for key in ("seed", "top_k"):
            if req.get(key) is not None:
                kw[key] = req[key]
        if isinstance(kw["max_new_tokens"], bool) or not isinstance(kw["max_new_tokens"], int):
            raise _HTTPError(400, f'"{max_key}" must be an integer, got {n!r}.', param=max_key)
        return kw

    async def _openai(self, request: Request, chat: bool) -> Response:
        req = await self._body(request)
        model = req.get("model")
        task = self._task_of(model)
        max_key = "max_completion_tokens" if chat and req.get("max_completion_tokens") is not None else "max_tokens"
        kw = self._sampling(req, max_key)
        stop = req.get("stop") or []
        if chat:
            text = self._chat_text(task, req.get("messages"))
        else:
            text = req.get("prompt")
            if isinstance(text, list) and len(text) == 1:
                text = text[0]
            if not isinstance(text, str):
                raise _HTTPError(400, '"prompt" must be a string (or a list of one string).', param="prompt")
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        head = {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()), "model": model}
        stream = bool(req.get("stream"))
        usage_in_stream = stream and isinstance(req.get("stream_options"), dict) and bool(req["stream_options"].get("include_usage"))

        if task is not None and self.rt.task_info(task)["kind"] == TaskKind.CLASSIFICATION.value:
            out, n_in = await self._call(lambda: (self.rt.classify(task, text), len(self.rt.input_ids(task, text))))
            return self._one_shot(head, chat, stream, usage_in_stream, out.label, "stop", n_in, 0, {"probabilities": out.probabilities})

        g, turn = await self._generation(task, text, kw, stop, False)
        if not stream:
            content = await self._collect(g, turn)
            return self._one_shot(head, chat, False, False, content, g.finish_reason or "stop", g.prompt_tokens, g.completion_tokens, {})

        async def events() -> AsyncIterator[bytes]:
            try:
                if chat:
                    yield _sse(
                        {
                            **head,
                            "object": "chat.completion.chunk",
                            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
                        }
                    )
                async for piece in self._pieces(g, turn):
                    yield _sse(self._chunk(head, chat, piece, None))
                yield _sse(self._chunk(head, chat, None, g.finish_reason or "stop"))
                if usage_in_stream:
                    obj = "chat.completion.chunk" if chat else "text_completion"
                    yield _sse({**head, "object": obj, "choices": [], "usage": _usage(g.prompt_tokens, g.completion_tokens)})
                yield b"data: [DONE]\n\n"
            except Exception as e:  # noqa: BLE001 - the 200 is sent: the stream ends with an error event
                err = e if isinstance(e, _HTTPError) else _HTTPError(400 if isinstance(e, EdgePromptError) else 500, str(e))
                yield _sse(err.body(True))

        return _Stream(events(), turn, "text/event-stream")

    @staticmethod
    def _chunk(head: dict, chat: bool, piece: str | None, finish: str | None) -> dict:
        if chat:
            choice = {"index": 0, "delta": {} if piece is None else {"content": piece}, "finish_reason": finish}
            return {**head, "object": "chat.completion.chunk", "choices": [choice]}
        return {**head, "choices": [{"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}]}

    def _one_shot(self, head, chat, stream, usage_in_stream, content, finish, n_in, n_out, extra) -> Response:
        if not stream:
            choice = {"index": 0, "message": {"role": "assistant", "content": content}} if chat else {"index": 0, "text": content, "logprobs": None}
            return _json({**head, "choices": [{**choice, "finish_reason": finish, **extra}], "usage": _usage(n_in, n_out)})
        chunks = []
        if chat:
            chunks.append(
                {
                    **head,
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": content}, "finish_reason": None, **extra}],
                }
            )
        else:
            chunks.append({**head, "choices": [{"index": 0, "text": content, "logprobs": None, "finish_reason": None, **extra}]})
        chunks.append(self._chunk(head, chat, None, finish))
        if usage_in_stream:
            chunks.append({**head, "object": chunks[-1]["object"], "choices": [], "usage": _usage(n_in, n_out)})
        body = b"".join(_sse(c) for c in chunks) + b"data: [DONE]\n\n"
        return Response(body, media_type="text/event-stream")

    def _chat_text(self, task: str | None, messages: Any) -> str:
        from edgeprompt.runtimes.chat import ChatTemplate, check_messages

        msgs = check_messages(messages)
        if task is not None:  # a task was trained on its own template around one text: the last user message
            users = [m["content"] for m in msgs if m["role"] == "user"]
            if not users:
                raise _HTTPError(400, "a task's chat needs a user message: its text is the task's input.", param="messages")
            return users[-1]
        if self._chat is None:
            src = self.rt.bundle.tokenizer.get(TokenizerKeys.CHAT_TEMPLATE)
            if not src:
                raise _HTTPError(400, "this bundle's tokenizer has no chat template; use /v1/completions.", param="messages")
            t = self.rt.bundle.tokenizer
            self._chat = ChatTemplate(
                src, bos_token=self.rt.token_string(t.get(TokenizerKeys.BOS_ID)), eos_token=self.rt.token_string(t.get(TokenizerKeys.EOS_ID))
            )
        return self._chat.render(msgs)

    async def completions(self, request: Request) -> Response:
        return await self._openai(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self._openai(request, chat=True)


def _sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, allow_nan=False).encode() + b"\n\n"


def _usage(n_in: int, n_out: int) -> dict:
    return {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}


def make_app(rt: Runtime, limits: Limits | None = None, api_key: str | None = None) -> "Starlette":
    """The ASGI app over ``rt`` (run it with any ASGI server; :func:`make_server` runs it with uvicorn)."""
    if uvicorn is None:
        raise EdgePromptError("serve needs starlette and uvicorn: pip install 'edgeprompt[serve]'")
    limits = (limits or Limits()).check()
    app = _App(rt, limits, api_key)
    star = Starlette(routes=app.routes(), exception_handlers={404: app.not_found, 405: app.not_found})
    star.state.edgeprompt = app
    return star


class Server:
    """uvicorn serving :func:`make_app`: ``serve_forever()`` in the foreground (Ctrl-C stops it), or
    ``start()`` on a thread and ``shutdown()``; ``server_address`` is ``(host, port)`` once listening."""

    def __init__(self, app: "Starlette", host: str, port: int, limits: Limits):
        self.app = app
        self.config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_keep_alive=limits.idle_timeout,
            limit_concurrency=limits.max_connections,
            backlog=2048,
            server_header=False,
        )
        self._uv = uvicorn.Server(self.config)
        self._thread: threading.Thread | None = None

    @property
    def server_address(self) -> tuple[str, int]:
        return self._uv.servers[0].sockets[0].getsockname()[:2]

    def serve_forever(self) -> None:
        """Serve until Ctrl-C or SIGTERM (then finish the requests in flight and stop)."""
        self._uv.run()

    def wait(self) -> None:
        """After :meth:`start`: block until the server stops."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.5)

    def start(self, timeout: float = 30.0) -> "Server":
        self._thread = threading.Thread(target=self._uv.run, daemon=True, name="edgeprompt-serve")
        self._thread.start()
        t0 = time.monotonic()
        while not self._uv.started:
            if not self._thread.is_alive() or time.monotonic() - t0 > timeout:
                raise EdgePromptError(f"the server did not start on {self.config.host}:{self.config.port} (is the port in use?).")
            time.sleep(0.01)
        return self

    def shutdown(self) -> None:
        self._uv.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.app.state.edgeprompt.pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()


def make_server(
    rt: Runtime, host: str = "127.0.0.1", port: int = 8080, limits: Limits | None = None, api_key: str | None = None, allow_open: bool = False
) -> Server:
    """A :class:`Server` over ``rt`` (port 0 picks a free port).

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
    limits = (limits or Limits()).check()
    return Server(make_app(rt, limits, api_key), host, port, limits)
