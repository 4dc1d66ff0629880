"""What one client may ask of ``edgeprompt serve`` (:class:`Limits`): its own module, so that the CLI builds its
flags without importing the HTTP stack."""

from __future__ import annotations

from dataclasses import dataclass

from edgeprompt.core.errors import RequestError


@dataclass
class Limits:
    """What one client may ask of the server; every field is a ``serve`` flag of the same name."""

    max_body: int = 1 << 20  # bytes of JSON per request
    body_timeout: float = 30.0  # seconds to send the body
    max_new_tokens: int = 1024  # per request (the context bounds it too)
    concurrency: int = 1  # requests computing at once (llama.cpp: one context, one sequence at a time)
    queue: int = 64  # requests waiting for a turn; beyond: 503 + Retry-After
    queue_timeout: float = 60.0  # seconds a request may wait for its turn; then 503
    request_timeout: float = 300.0  # seconds of compute per request; then 504 (a stream: an error event)
    idle_timeout: float = 5.0  # seconds a kept-alive connection may stay idle
    max_connections: int = 512  # open at once (uvicorn's limit; its 503 is plain text, so it sits above the queue)

    def check(self) -> "Limits":
        for name in ("max_body", "max_new_tokens", "concurrency", "max_connections"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RequestError(f"--{name.replace('_', '-')} must be an integer of at least 1, got {v!r}.")
        if isinstance(self.queue, bool) or not isinstance(self.queue, int) or self.queue < 0:
            raise RequestError(f"--queue must be an integer of at least 0, got {self.queue!r}.")
        for name in ("body_timeout", "queue_timeout", "request_timeout", "idle_timeout"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1e6:
                raise RequestError(f"--{name.replace('_', '-')} must be a number of seconds in (0, 1e6), got {v!r}.")
        return self
