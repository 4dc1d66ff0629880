"""``edgeprompt serve``: the OpenAI-compatible API driven by the real ``openai`` client, the native API, and the
red-team findings of issue 10 (request desync, unbounded settings, overload, slow and vanishing clients, keys).

Every answer is compared with the same request made on the runtime directly, number for number."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import run_cli

openai = pytest.importorskip("openai")  # the dev extra installs it; the runtime extra does not

TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"


def _serve(rt, **kw):
    from edgeprompt.runtimes.server import Limits, make_server

    limits = Limits(**{k: kw.pop(k) for k in list(kw) if k in Limits.__dataclass_fields__})
    return make_server(rt, "127.0.0.1", 0, limits=limits, **kw).start()


def _http(port: int, method: str, path: str, body=None, headers=None, timeout: float = 30.0) -> tuple[int, dict, bytes]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes on a fresh connection; everything the server answers until it closes or goes quiet."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    out = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
    except OSError:  # quiet for `timeout`: the server kept the connection open
        pass
    s.close()
    return out


@pytest.fixture(params=[("onnx", "fp32"), ("gguf", "f32")], ids=["onnx", "llamacpp"])
def runtime(request, bundle_of):
    from edgeprompt.runtimes import open_bundle

    rt = open_bundle(bundle_of(*request.param), threads=1)
    yield rt
    rt.close()


def test_openai_client(runtime):
    """Completions, chat and models through the openai package, each equal to the runtime's own answer."""
    rt = runtime
    rt.bundle.manifest["tokenizer"]["chat_template"] = TEMPLATE  # the tiny tokenizer has none
    srv = _serve(rt)
    host, port = srv.server_address
    c = openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key="unused", max_retries=0)
    try:
        ids = [m.id for m in c.models.list()]
        plain = ids[0]
        assert ids[1:] == ["pt", "px"] and plain not in ("pt", "px")
        # the plain model: greedy completion = the runtime's, streamed or not; usage counts the tokens
        want = rt.generate(None, "the food was", max_new_tokens=7, temperature=0, stream=False)
        r = c.completions.create(model=plain, prompt="the food was", max_tokens=7, temperature=0)
        assert r.choices[0].text == want and r.object == "text_completion"
        assert r.usage.prompt_tokens == len(rt.input_ids(None, "the food was")) and r.usage.completion_tokens <= 7
        assert r.choices[0].finish_reason == ("length" if r.usage.completion_tokens == 7 else "stop")
        chunks = list(c.completions.create(model=plain, prompt="the food was", max_tokens=7, temperature=0, stream=True))
        assert "".join(ch.choices[0].text for ch in chunks) == want and chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason
        # a seed makes sampling repeatable, as on the runtime
        sampled = [c.completions.create(model=plain, prompt="the", max_tokens=6, temperature=0.9, seed=5).choices[0].text for _ in range(2)]
        assert sampled[0] == sampled[1] == rt.generate(None, "the", max_new_tokens=6, temperature=0.9, top_p=1.0, seed=5, stream=False)
        # chat: the tokenizer's template renders the messages, then the same greedy decode
        msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
        rendered = "<system>be brief\n<user>hello there\n<assistant>"
        want = rt.generate(None, rendered, max_new_tokens=6, temperature=0, stream=False)
        r = c.chat.completions.create(model=plain, messages=msgs, max_tokens=6, temperature=0)
        assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"
        s = list(c.chat.completions.create(model=plain, messages=msgs, max_tokens=6, temperature=0, stream=True, stream_options={"include_usage": True}))
        assert "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices) == want
        assert s[-1].usage.prompt_tokens == len(rt.input_ids(None, rendered)) and s[-1].usage.completion_tokens == r.usage.completion_tokens
        # a classification task answers its label, with the runtime's probabilities
        for task in ("pt", "px"):
            out = rt.classify(task, "what a lovely day")
            r = c.completions.create(model=task, prompt="what a lovely day")
            assert r.choices[0].text == out.label and r.choices[0].model_extra["probabilities"] == out.probabilities
            r = c.chat.completions.create(model=task, messages=[{"role": "user", "content": "what a lovely day"}])
            assert r.choices[0].message.content == out.label
            s = list(c.completions.create(model=task, prompt="what a lovely day", stream=True))
            assert "".join(ch.choices[0].text for ch in s) == out.label
        # errors in OpenAI's shape, as the client's typed exceptions
        with pytest.raises(openai.NotFoundError) as e:
            c.completions.create(model="nope", prompt="x")
        assert e.value.body["code"] == "model_not_found" and "pt, px" in e.value.body["message"]
        for kw, word in (({"temperature": -1}, "temperature"), ({"n": 2}, "n"), ({"max_tokens": 5000}, "max_new_tokens"), ({"top_p": 0}, "top_p")):
            with pytest.raises(openai.BadRequestError) as e:
                c.completions.create(model=plain, prompt="x", **kw)
            assert e.value.body["type"] == "invalid_request_error" and word in e.value.body["message"], (kw, e.value.body)
        with pytest.raises(openai.BadRequestError, match="role"):
            c.chat.completions.create(model=plain, messages=[{"role": "wizard", "content": "x"}])
        del rt.bundle.manifest["tokenizer"]["chat_template"]
        srv.app.state.edgeprompt._chat = None
        with pytest.raises(openai.BadRequestError, match="chat template"):
            c.chat.completions.create(model=plain, messages=msgs)
    finally:
        srv.shutdown()


def test_native_endpoints(bundle_of):
    from edgeprompt.runtimes import open_bundle

    rt = open_bundle(bundle_of("onnx", "fp32"))
    srv = _serve(rt)
    port = srv.server_address[1]
    try:
        tasks = json.loads(_http(port, "GET", "/tasks")[2])
        assert [t["name"] for t in tasks["tasks"]] == ["pt", "px"]
        status, _, body = _http(port, "POST", "/classify", {"task": "px", "text": "awful day"})
        assert status == 200 and json.loads(body) == rt.classify("px", "awful day").to_dict()
        text = json.loads(_http(port, "POST", "/generate", {"task": "pt", "text": "the day", "max_new_tokens": 5})[2])["text"]
        assert text == rt.generate("pt", "the day", max_new_tokens=5, stream=False)
        lines = [
            json.loads(x) for x in _http(port, "POST", "/generate", {"task": "pt", "text": "the day", "max_new_tokens": 5, "stream": True})[2].splitlines()
        ]
        assert lines[-1] == {"done": True} and "".join(x["piece"] for x in lines[:-1]) == text
        for body, word in (({"task": "nope", "text": "x"}, "this runtime has: pt, px"), ({"task": "pt"}, '"text"'), (b'{"task": "pt", "text": NaN}', "NaN")):
            status, headers, out = _http(port, "POST", "/classify", body)
            assert status == 400 and word in json.loads(out)["error"] and headers["content-type"] == "application/json"
        status, _, out = _http(port, "POST", "/classify", b"{}", headers={"Content-Length": "-5"})
        assert status in (400, 413)  # uvicorn refuses the framing itself (400) or the app does (413)
        for method, path, code in (("GET", "/nowhere", 404), ("PUT", "/classify", 405), ("GET", "/v1/nowhere", 404)):
            status, headers, out = _http(port, method, path)
            err = json.loads(out)["error"]
            assert status == code and (err["type"] if path.startswith("/v1/") else err), out

        def broken(*a, **k):  # an engine failure after the first piece was streamed
            yield "x"
            raise RuntimeError("decode failed")

        real, rt._generate = rt._generate, broken
        try:
            lines = [json.loads(x) for x in _http(port, "POST", "/generate", {"task": "pt", "text": "a", "stream": True})[2].splitlines()]
        finally:
            rt._generate = real
        assert lines[0] == {"piece": "x"} and "decode failed" in lines[-1]["error"]
        assert json.loads(_http(port, "GET", "/health")[2])["ok"]  # still serving
    finally:
        srv.shutdown()
        rt.close()


def test_hostile_requests(bundle_of):
    """Request desync, settings out of range, a full queue, slow and vanishing clients, time limits."""
    from edgeprompt.runtimes import open_bundle

    rt = open_bundle(bundle_of("gguf", "f32"), threads=1)
    srv = _serve(rt, concurrency=1, queue=1, request_timeout=2.0, body_timeout=0.5, max_new_tokens=64)
    port = srv.server_address[1]
    try:
        # a body smuggling a second request is read as a body, never answered as a request; chunked bodies are framed
        smuggled = b"GET /tasks HTTP/1.1\r\nHost: x\r\n\r\n"
        for method, path in (("POST", "/nowhere"), ("GET", "/health"), ("POST", "/classify")):
            head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(smuggled)}\r\nConnection: close\r\n\r\n".encode()
            out = _raw(port, head + smuggled)
            assert out.count(b"HTTP/1.1 ") == 1 and b"<html" not in out.lower(), out
        body = json.dumps({"task": "pt", "text": "nice"}).encode()
        out = _raw(
            port,
            b"POST /classify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            + f"{len(body):x}\r\n".encode()
            + body
            + b"\r\n0\r\n\r\n",
        )
        assert out.startswith(b"HTTP/1.1 200") and json.loads(out.split(b"\r\n\r\n", 1)[1])["label"] == rt.classify("pt", "nice").label
        out = _raw(port, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 4") and b"<html" not in out.lower()
        # a body too slow to arrive: 408, the connection freed
        out = _raw(port, b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{", timeout=5)
        assert out.startswith(b"HTTP/1.1 408"), out

        # settings out of range: 400 with the setting named, before any stream starts
        for bad, word in (
            ({"stop": ["x" * 1000] * 1000}, "stop"),
            ({"stop": [1, 2]}, "stop"),
            ({"top_k": -1}, "top_k"),
            ({"top_p": 0}, "top_p"),
            ({"temperature": 1e300}, "temperature"),
            ({"seed": 10**30}, "seed"),
            ({"seed": -1}, "seed"),
            ({"max_new_tokens": "9"}, "max_new_tokens"),
            ({"max_new_tokens": 65}, "max_new_tokens"),  # above serve --max-new-tokens
        ):
            for stream in (False, True):
                status, _, out = _http(port, "POST", "/generate", {"task": "pt", "text": "the day", "max_new_tokens": 3, **bad, "stream": stream})
                assert status == 400 and word in json.loads(out)["error"], (bad, status, out)

        # slow generations (one token every 50 ms, 20 tokens) to fill the queue and to walk away from
        closed = []

        def slow(*a, **k):
            try:
                for i in range(20):
                    time.sleep(0.05)
                    yield f"{i} "
            finally:
                closed.append(time.monotonic())

        real, rt._generate = rt._generate, slow
        try:
            # concurrency 1 + queue 1: of four at once, two are served in turn and two get 503 + Retry-After at once
            with ThreadPoolExecutor(4) as ex:
                got = list(ex.map(lambda _: _http(port, "POST", "/generate", {"task": None, "text": "a", "max_new_tokens": 3}), range(4)))
            statuses = sorted(s for s, _, _ in got)
            assert statuses == [200, 200, 503, 503], statuses
            assert all(h.get("retry-after") == "1" and "busy" in json.loads(b)["error"] for s, h, b in got if s == 503)
            assert all(json.loads(b)["text"] == "".join(f"{i} " for i in range(20)) for s, _, b in got if s == 200)
            # a client that goes away mid-stream stops its generation at the next token and frees the turn
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            req = json.dumps({"text": "a", "stream": True, "max_new_tokens": 3}).encode()
            s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(req) + req)
            assert b'"piece"' in s.recv(4096) or b'"piece"' in s.recv(4096)
            n_closed, t_gone = len(closed), time.monotonic()
            s.close()
            while len(closed) == n_closed and time.monotonic() - t_gone < 5:
                time.sleep(0.01)
            assert len(closed) == n_closed + 1 and closed[-1] - t_gone < 1.0
            # past the request timeout (2 s): 504 as JSON; a stream ends with an error event
            rt._generate = lambda *a, **k: (time.sleep(0.2) or str(i) for i in range(100))
            status, _, out = _http(port, "POST", "/generate", {"text": "a", "max_new_tokens": 3})
            assert status == 504 and "longer than 2 s" in json.loads(out)["error"]
            lines = _http(port, "POST", "/generate", {"text": "a", "max_new_tokens": 3, "stream": True})[2].splitlines()
            assert "longer than 2 s" in json.loads(lines[-1])["error"]
        finally:
            rt._generate = real
        assert _http(port, "POST", "/generate", {"task": "pt", "text": "the day", "max_new_tokens": 3})[0] == 200

        # /metrics counts what was answered (Prometheus text), the refused requests and the cache
        text = _http(port, "GET", "/metrics")[2].decode()
        metric = lambda name: {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(name)}  # noqa: E731
        reqs = metric("edgeprompt_requests_total")
        assert reqs['edgeprompt_requests_total{method="POST",endpoint="/generate",status="400"}'] == 18
        assert reqs['edgeprompt_requests_total{method="POST",endpoint="/generate",status="503"}'] == 2
        assert reqs['edgeprompt_requests_total{method="POST",endpoint="other",status="404"}'] == 1
        assert metric("edgeprompt_requests_rejected_total")["edgeprompt_requests_rejected_total"] == 2
        # a turn is given back when its generation has stopped on the pool thread, which can trail the response's
        # last byte on a loaded machine: the gauge must come back to 0 (a turn never given back would stay at 1)
        deadline = time.monotonic() + 10
        while metric("edgeprompt_requests_running")["edgeprompt_requests_running"] != 0 and time.monotonic() < deadline:
            time.sleep(0.02)
            text = _http(port, "GET", "/metrics")[2].decode()
        assert metric("edgeprompt_requests_running")["edgeprompt_requests_running"] == 0
        assert metric("edgeprompt_prefix_cache_misses_total")["edgeprompt_prefix_cache_misses_total"] >= 1
    finally:
        srv.shutdown()
        rt.close()


def test_api_key_and_open_binding(bundle_of):
    from edgeprompt.core.errors import RequestError
    from edgeprompt.runtimes import open_bundle
    from edgeprompt.runtimes.server import make_server

    rt = open_bundle(bundle_of("gguf", "f32"), threads=1)
    try:
        with pytest.raises(RequestError, match="--api-key"):
            make_server(rt, "0.0.0.0", 0)  # the whole network, no key: refused unless asked
        with pytest.raises(RequestError, match="16 characters"):
            make_server(rt, "127.0.0.1", 0, api_key="short")
        key = "k" * 24
        srv = _serve(rt, api_key=key)
        port = srv.server_address[1]
        try:
            assert _http(port, "GET", "/health")[0] == 200  # liveness stays open
            for headers in ({}, {"Authorization": "Bearer " + "k" * 23 + "x"}, {"Authorization": key}):
                status, h, out = _http(port, "POST", "/classify", {"task": "pt", "text": "nice"}, headers)
                assert status == 401 and "API key" in json.loads(out)["error"] and h["www-authenticate"] == "Bearer"
            assert _http(port, "GET", "/tasks", headers={"Authorization": "Bearer wrong"})[0] == 401
            status, _, out = _http(port, "POST", "/classify", {"task": "pt", "text": "nice"}, {"Authorization": f"Bearer {key}"})
            assert status == 200 and json.loads(out)["label"] in ("negative", "positive")
            c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong-key-wrong-key", max_retries=0)
            with pytest.raises(openai.AuthenticationError):
                c.models.list()
            c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
            assert [m.id for m in c.models.list()][1:] == ["pt", "px"]
        finally:
            srv.shutdown()
        make_server(rt, "0.0.0.0", 0, allow_open=True)  # said explicitly: allowed
    finally:
        rt.close()


def test_serve_cli(bundle_of, env):
    """`edgeprompt serve` starts, answers the OpenAI client, and refuses bad limits before loading the model."""
    import subprocess
    import sys

    r = run_cli(["serve", str(bundle_of("gguf", "f32")), "--queue", "-1"], env=env, check=False)
    assert r.returncode == 2 and "--queue" in r.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen(
        [sys.executable, "-m", "edgeprompt", "serve", str(bundle_of("gguf", "f32")), "--port", str(port), "--threads", "1"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = p.stderr.readline()
        assert f"http://127.0.0.1:{port}/v1" in line, line
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        r = c.completions.create(model="pt", prompt="a fine day")
        assert r.choices[0].text in ("negative", "positive")
    finally:
        p.terminate()
        p.wait(timeout=30)


def test_chat_template_is_sandboxed():
    from edgeprompt.core.errors import RequestError
    from edgeprompt.runtimes.chat import ChatTemplate

    t = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(Exception) as e:  # jinja2's sandbox refuses attribute access to internals
        t.render([{"role": "user", "content": "x"}])
    assert "unsafe" in str(e.value).lower() or isinstance(e.value, RequestError)
    t = ChatTemplate("{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}ok")
    with pytest.raises(RequestError, match="user first"):
        t.render([{"role": "system", "content": "x"}])
    assert t.render([{"role": "user", "content": [{"type": "text", "text": "a"}]}]) == "ok"


def test_the_queue_survives_its_event_loop():
    """The fuzzer's find: an app driven from a new event loop per request (Starlette's TestClient outside a `with`)
    found its queue's semaphore bound to a dead loop, with a turn still held there: 500s and a 60 s wait. A turn held
    on a loop that is gone is gone with it."""
    import asyncio

    from edgeprompt.runtimes.server import _Gate

    gate = _Gate(concurrency=1, queue=0, timeout=1.0)
    asyncio.run(gate.enter())  # loop A ends with its turn still held
    leave = asyncio.run(gate.enter())  # loop B: served, not refused as "busy", not bound to A
    assert gate.running == 1
    leave()
    assert gate.running == 0
