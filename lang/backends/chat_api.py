"""What the hosted chat APIs (Anthropic's Messages API, LiteLLM's OpenAI-style completion) have
in common: a program's state becomes a message list, and constraints those APIs cannot enforce
are refused up front instead of silently ignored."""
from __future__ import annotations

import importlib
from typing import Any

from sgl.lang.ir import SglSamplingParams


def import_optional(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"this backend needs the {module!r} package: pip install 'sgl[{extra}]'"
                          ) from e


def program_messages(s: Any) -> list[dict[str, str]]:
    """The conversation so far. Text appended inside the open assistant turn (before the gen)
    is sent as the start of the assistant's reply (a prefill); text outside any role is one
    user message."""
    messages = [dict(m) for m in s.messages_]
    if s.cur_role == "assistant":
        partial = s.text_[s.cur_role_begin_pos:].rstrip()
        if partial:
            messages.append({"role": "assistant", "content": partial})
    elif s.cur_role is None and not messages:
        messages = [{"role": "user", "content": s.text_}]
    elif s.cur_role is not None:
        raise RuntimeError(f"a chat API gen must come inside the assistant role, not {s.cur_role!r}")
    return messages


def refuse_constraints(params: SglSamplingParams, api: str, allow_json_schema: bool = False) -> None:
    """NotImplementedError for any output constraint `api` cannot enforce."""
    asked = {"regex": params.regex, "dtype": params.dtype, "stop_regex": params.stop_regex,
             "json_schema": None if allow_json_schema else params.json_schema}
    named = [k for k, v in asked.items() if v]
    if named:
        raise NotImplementedError(f"{', '.join(named)} in gen is not supported by {api}; use "
                                  "sgl.RuntimeEndpoint or sgl.OpenAI against sgl serve")
    if (params.n or 1) > 1:
        raise NotImplementedError(f"gen(n > 1) is not supported by {api}")
