"""The text a request is routed by (cache_aware matches it against earlier requests): `text`
for /generate, `prompt` for /v1/completions, the messages' contents for /v1/chat/completions.
Token-id prompts become their ids joined by spaces, which keeps prefixes prefixes. For a batch
the first prompt stands for all."""
from __future__ import annotations

from typing import Any


def request_text(path: str, body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    if path == "/generate":
        return _prompt_text(body.get("text", body.get("input_ids")))
    if path == "/v1/completions":
        return _prompt_text(body.get("prompt"))
    if path == "/v1/chat/completions":
        messages = body.get("messages")
        return "".join(_content_text(m.get("content")) for m in messages
                       if isinstance(m, dict)) if isinstance(messages, list) else ""
    return ""


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        if isinstance(prompt[0], int):  # token ids (checking every id cost ~0.2 ms at 2k ids)
            return " ".join(map(str, prompt))
        return _prompt_text(prompt[0])  # a batch
    return ""


def _content_text(content: Any) -> str:
    """A message's content: a string, or a list of parts of which the text parts count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""
