"""Chat messages to the model's prompt text, with the chat template the bundle's tokenizer shipped.

The template is the Jinja2 text Hugging Face tokenizers carry (``tokenizer_config.json``'s
``chat_template``, a GGUF's ``tokenizer.chat_template``); the export copies it into the bundle
manifest's tokenizer section. It is rendered the way ``transformers`` renders it (a sandboxed,
immutable environment with ``trim_blocks`` and ``lstrip_blocks``, ``raise_exception`` and
``strftime_now``), as llama-cpp-python's server does. Needs ``jinja2`` (the ``serve`` extra).
"""

from __future__ import annotations

import datetime
from typing import Any, Sequence

from edgeprompt.core.errors import EdgePromptError, RequestError

ROLES = ("system", "user", "assistant", "tool", "developer")
MAX_MESSAGES = 256


class ChatTemplate:
    """``render(messages) -> str``: the prompt text ending where the assistant's turn starts."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = ""):
        try:
            from jinja2.exceptions import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            raise EdgePromptError("chat needs jinja2: pip install 'edgeprompt[serve]'") from None

        def raise_exception(message: str):
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
        try:
            self._template = env.from_string(source)
        except TemplateError as e:
            raise EdgePromptError(f"the bundle's chat template does not parse ({e}); re-export with a tokenizer whose template works.") from None
        self._error = TemplateError
        self.bos_token, self.eos_token = bos_token, eos_token

    def render(self, messages: Sequence[Any]) -> str:
        msgs = check_messages(messages)
        try:
            return self._template.render(messages=msgs, add_generation_prompt=True, bos_token=self.bos_token, eos_token=self.eos_token)
        except self._error as e:
            raise RequestError(f"the chat template refused these messages: {e}") from None


def check_messages(messages: Any) -> list[dict[str, str]]:
    """OpenAI chat messages, checked: a non-empty list of ``{"role", "content"}``; content a string or a list of
    ``{"type": "text", "text"}`` parts (joined). Returns plain ``{"role", "content"}`` dicts."""
    if not isinstance(messages, list) or not messages:
        raise RequestError('"messages" must be a non-empty list of {"role", "content"} objects.')
    if len(messages) > MAX_MESSAGES:
        raise RequestError(f'"messages" holds {len(messages)} messages; at most {MAX_MESSAGES}.')
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise RequestError(f'messages[{i}] needs "role": one of {", ".join(ROLES)}.')
        c = m.get("content")
        if isinstance(c, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in c):
                raise RequestError(f'messages[{i}].content: only text parts ({{"type": "text", "text": ...}}) are supported.')
            c = "".join(p["text"] for p in c)
        if c is None and m["role"] == "assistant":
            c = ""
        if not isinstance(c, str):
            raise RequestError(f"messages[{i}].content must be a string or a list of text parts.")
        out.append({"role": m["role"], "content": c})
    return out
