"""Putting tools into the prompt. A chat template that renders `tools=` itself (Qwen 2.5,
Llama 3.1, ...) gets them that way. A template that ignores them (SmolLM2's own, which has no
tool support) gets a system-prompt section describing the tools and the parser's format, and
past assistant tool calls are written into the message text in that format."""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sgl.runtime.server.tools.parsers import ToolCallParser

Render = Callable[..., str]  # apply_chat_template(messages, tools=...) -> prompt text


def template_messages(messages: list[Any], native: bool, parser: ToolCallParser
                      ) -> list[dict[str, Any]]:
    """Chat-template input from request messages (protocol.ChatMessage). Past tool calls go to
    templates that know `tool_calls` (`native`) as such; others get them written into the
    message text in the parser's format."""
    out = []
    for m in messages:
        msg: dict[str, Any] = {"role": m.role, "content": m.text()}
        if m.tool_call_id is not None:
            msg["tool_call_id"] = m.tool_call_id
        if m.name is not None:
            msg["name"] = m.name
        if m.tool_calls:
            msg["tool_calls"] = [_past_call(c.model_dump()) for c in m.tool_calls]
        out.append(msg if native else calls_as_text(msg, parser))
    return out


def render_with_tools(render: Render, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                      parser: ToolCallParser) -> str:
    """The prompt text for `messages` with `tools` (OpenAI tool dicts) offered to the model."""
    native = render(messages, tools=tools)
    if native != render(messages, tools=None):  # the template rendered them
        return native
    return render(with_tools_system_prompt(messages, tools, parser), tools=None)


def with_tools_system_prompt(messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                             parser: ToolCallParser) -> list[dict[str, Any]]:
    section = tools_section(tools, parser)
    out = list(messages)
    if out and out[0]["role"] in ("system", "developer"):
        out[0] = dict(out[0], content=(out[0]["content"] + "\n\n" + section).strip())
        return out
    return [{"role": "system", "content": section}, *out]


def tools_section(tools: list[dict[str, Any]], parser: ToolCallParser) -> str:
    lines = [json.dumps(t["function"], ensure_ascii=False) for t in tools]
    example = parser.render([{"name": "<function name>", "arguments": {"<parameter>": "<value>"}}])
    return ("You may call functions. Their JSON schemas:\n<tools>\n" + "\n".join(lines)
            + "\n</tools>\nTo call one or more functions, reply with nothing but the calls, "
            "written exactly like this:\n" + example + "\nIf no function fits, reply in "
            "plain text.")


def calls_as_text(message: dict[str, Any], parser: ToolCallParser) -> dict[str, Any]:
    """An assistant message with `tool_calls`, its calls written into its text instead (for
    templates that do not render tool calls)."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    rendered = parser.render([{"name": c["function"]["name"],
                               "arguments": parse_arguments(c["function"]["arguments"])}
                              for c in calls])
    text = ((message.get("content") or "") + "\n" + rendered).strip()
    return {k: v for k, v in message.items() if k != "tool_calls"} | {"content": text}


def parse_arguments(value: Any) -> Any:
    """Arguments given as a JSON string -> the object (templates and renderers want that)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _past_call(call: dict[str, Any]) -> dict[str, Any]:
    function = dict(call["function"], arguments=parse_arguments(call["function"]["arguments"]))
    return dict(call, function=function)
