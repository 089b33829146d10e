"""Tool-call formats: how a model writes function calls, parsed out of its text and spelled back
(for grammars, the fallback prompt and chat history). One class per family, a registry by the
`--tool-call-parser` names SGLang uses where it has one.

A format is described by the pieces its calls are written with:
`prefix + item(call) + (separator + item(call))* + suffix`, where
`item(call) = item_begin + '{"name": <name>, "<args_key>": ' + <arguments JSON> + '}' + item_end`.
The grammar for tool_choice="required" and the fallback prompt's example are built from these
pieces, so what the model is told, what it is forced to write and what is parsed agree.

Parsing is lenient where it costs nothing (a list or a single object in a block; "arguments" or
"parameters") and strict where a wrong guess would hurt: a block that is not valid JSON, or
names a function not in the request's tools, stays in the content as text.
"""
from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Optional

_ARG_KEYS = ("arguments", "parameters")


@dataclass
class ToolCall:
    name: str
    arguments: str  # a JSON object, as text (OpenAI's shape)
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = f"call_{uuid.uuid4().hex[:24]}"

    def to_openai(self, index: Optional[int] = None) -> dict[str, Any]:
        out = {"id": self.id, "type": "function",
               "function": {"name": self.name, "arguments": self.arguments}}
        return out if index is None else {"index": index, **out}


@dataclass
class ParseResult:
    content: str            # the text outside recognised calls
    calls: list[ToolCall]


class ToolCallParser:
    """Base of the formats. `markers` are strings whose appearance means a call may follow
    (used by streaming to hold text back)."""

    name = ""
    prefix, separator, suffix = "", "", ""
    item_begin, item_end = "", ""
    args_key = "arguments"
    markers: tuple[str, ...] = ()
    streams_early = True
    """Whether a call parsed from a prefix of the output stays a call whatever follows (so
    streaming may send it before the output ends)."""

    def __init__(self, tool_names: Iterable[str] = ()) -> None:
        self.tool_names = frozenset(tool_names)

    def parse(self, text: str) -> ParseResult:
        raise NotImplementedError

    def render(self, calls: list[dict[str, Any]]) -> str:
        """Calls ({"name", "arguments": dict}) in this format, as the grammar spells them."""
        items = [self.item_begin + self.call_head(c["name"]) + _compact(c["arguments"]) + "}"
                 + self.item_end for c in calls]
        return self.prefix + self.separator.join(items) + self.suffix

    def call_head(self, name: str) -> str:
        return '{"name": ' + json.dumps(name, ensure_ascii=False) + f', "{self.args_key}": '

    def first_marker(self, text: str) -> int:
        """Index where a call may start in text, or -1."""
        hits = [i for i in (text.find(m) for m in self.markers) if i >= 0]
        return min(hits) if hits else -1

    def holdback(self, text: str) -> int:
        """How many trailing characters of text could be the start of a marker (streaming
        holds them back until it knows)."""
        for k in range(min(len(text), max(map(len, self.markers), default=0)), 0, -1):
            if any(m.startswith(text[-k:]) and len(m) > k for m in self.markers):
                return k
        return 0

    def to_call(self, obj: Any) -> Optional[ToolCall]:
        """A decoded JSON object -> ToolCall, or None if it is not a call of a known tool."""
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return None
        if self.tool_names and obj["name"] not in self.tool_names:
            return None
        args = next((obj[k] for k in _ARG_KEYS if k in obj), {})
        if isinstance(args, str):  # some models write the arguments as a JSON string
            try:
                args = json.loads(args)
            except ValueError:
                return None
        if not isinstance(args, dict):
            return None
        return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


class TaggedParser(ToolCallParser):
    """Calls inside `<tool_call>...</tool_call>` blocks; a block holds one call object or a
    list of them."""

    begin_tag, end_tag = "<tool_call>", "</tool_call>"
    markers = (begin_tag,)

    def parse(self, text: str) -> ParseResult:
        pattern = re.escape(self.begin_tag) + r"(.*?)" + re.escape(self.end_tag)
        calls: list[ToolCall] = []
        kept: list[str] = []
        pos = 0
        for m in re.finditer(pattern, text, re.DOTALL):
            block = self._block_calls(m.group(1))
            if block is None:
                continue  # stays in the text
            kept.append(text[pos:m.start()])
            calls.extend(block)
            pos = m.end()
        if not calls:
            return ParseResult(text, [])
        kept.append(text[pos:])
        return ParseResult("".join(kept).strip(), calls)

    def _block_calls(self, body: str) -> Optional[list[ToolCall]]:
        try:
            obj = json.loads(body)
        except ValueError:
            return None
        objs = obj if isinstance(obj, list) else [obj]
        calls = [self.to_call(o) for o in objs]
        if not calls or any(c is None for c in calls):
            return None
        return calls  # type: ignore[return-value]


class SmolLM2Parser(TaggedParser):
    """SmolLM2's format (its model card's tool prompt): one block holding a JSON list,
    `<tool_call>[{"name": ..., "arguments": {...}}, ...]</tool_call>`."""

    name = "smollm2"
    prefix, separator, suffix = "<tool_call>[", ", ", "]</tool_call>"


class Qwen25Parser(TaggedParser):
    """Qwen 2.5 / Hermes: one block per call, `<tool_call>\\n{"name": ..., "arguments": ...}
    \\n</tool_call>`, blocks separated by a newline."""

    name = "qwen25"
    separator = "\n"
    item_begin, item_end = "<tool_call>\n", "\n</tool_call>"


class Llama3Parser(ToolCallParser):
    """Llama 3.1+ JSON tool calling: `{"name": ..., "parameters": {...}}`, optionally after
    `<|python_tag|>`, several calls separated by `;`. The calls must run to the end of the
    output; text before `<|python_tag|>` is content."""

    name = "llama3"
    separator = "; "
    args_key = "parameters"
    python_tag = "<|python_tag|>"
    markers = (python_tag,)
    streams_early = False  # `{...}; junk` is all text: a call is known only at the end

    def holdback(self, text: str) -> int:
        return len(text) if not text.strip() else super().holdback(text)

    def first_marker(self, text: str) -> int:
        i = super().first_marker(text)
        if i >= 0:
            return i
        stripped = text.lstrip()
        return len(text) - len(stripped) if stripped.startswith("{") else -1

    def parse(self, text: str) -> ParseResult:
        start = self.first_marker(text)
        if start < 0:
            return ParseResult(text, [])
        body = text[start:].removeprefix(self.python_tag)
        calls = self._calls(body)
        if calls is None:
            return ParseResult(text, [])
        return ParseResult(text[:start].strip(), calls)

    def _calls(self, body: str) -> Optional[list[ToolCall]]:
        decoder, calls, pos = json.JSONDecoder(), [], 0
        while True:
            pos = _skip(body, pos, " \t\r\n")
            if pos == len(body):
                return calls or None
            try:
                obj, pos = decoder.raw_decode(body, pos)
            except ValueError:
                return None
            call = self.to_call(obj)
            if call is None:
                return None
            calls.append(call)
            pos = _skip(body, pos, " \t\r\n")
            if pos < len(body) and body[pos] == ";":
                pos += 1
            elif pos < len(body):
                return None


PARSERS: dict[str, type[ToolCallParser]] = {
    "smollm2": SmolLM2Parser, "qwen25": Qwen25Parser, "llama3": Llama3Parser}
ALIASES = {"qwen": "qwen25", "hermes": "qwen25"}


def parser_class(name: str) -> type[ToolCallParser]:
    key = ALIASES.get(name, name)
    if key not in PARSERS:
        raise ValueError(f"unknown --tool-call-parser {name!r}; expected one of "
                         f"{sorted(PARSERS) + sorted(ALIASES)}")
    return PARSERS[key]


def default_parser_name(model_path: str, chat_template: Optional[str] = None) -> str:
    """Guess the format from the model's name (then its chat template); SmolLM2's otherwise."""
    name = model_path.lower()
    if "qwen" in name:
        return "qwen25"
    if re.search(r"llama[-_ ]?3", name):
        return "llama3"
    if chat_template and "<|python_tag|>" in chat_template:
        return "llama3"
    if chat_template and "<tool_call>" in chat_template:
        return "qwen25"
    return "smollm2"


def _compact(args: Any) -> str:
    return json.dumps(args, ensure_ascii=False)


def _skip(text: str, pos: int, chars: str) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos
