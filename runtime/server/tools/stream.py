"""Tool calls in a streamed chat completion, per choice. Text is streamed as content until a
call may begin (a marker appears, or the tail could be the start of one: it is held back until
known). From there the output is buffered: each call is sent as one complete tool-call delta
(id, name and the whole arguments string) once it can no longer change -- as soon as its block
closes for the tagged formats, at the end for llama3 -- and whatever is left over (a malformed
block, text after the calls) is sent as content at the end."""
from __future__ import annotations

from typing import Any, Optional

from sgl.runtime.server.tools.parsers import ToolCall, ToolCallParser


class ToolStream:
    def __init__(self, parser: ToolCallParser) -> None:
        self.parser = parser
        self.sent = 0            # characters of the output consumed (sent or in calls)
        self.in_calls = False
        self.num_calls = 0

    def update(self, text: str, finished: bool) -> tuple[str, list[ToolCall]]:
        """(content delta, new complete calls) for the cumulative output `text`."""
        content = ""
        if not self.in_calls:
            start = self.parser.first_marker(text)
            if start >= self.sent:
                content, self.sent, self.in_calls = text[self.sent:start], start, True
            else:
                end = len(text) if finished else len(text) - self.parser.holdback(text)
                content, self.sent = text[self.sent:max(end, self.sent)], max(end, self.sent)
        if not self.in_calls or not (finished or self.parser.streams_early):
            return content, []
        result = self.parser.parse(text[self.sent:])
        calls = result.calls[self.num_calls:]
        self.num_calls += len(calls)
        if finished:
            content += result.content
        return content, calls

    def call_deltas(self, calls: list[ToolCall]) -> Optional[list[dict[str, Any]]]:
        first = self.num_calls - len(calls)
        return [c.to_openai(first + i) for i, c in enumerate(calls)] or None
