"""Splitting a reasoning model's output into its reasoning and its answer (SGLang's
`--reasoning-parser` names). Both formats wrap the reasoning in `<think>...</think>`:

- `qwen3`: the output is reasoning only if it opens with `<think>`, or if the prompt already
  opened the block (a chat template that ends the prompt with `<think>`); with
  `enable_thinking=False` Qwen3's template closes an empty block in the prompt, and the whole
  output is the answer.
- `deepseek-r1`: the output is reasoning from its first token until `</think>` (R1 starts
  thinking without writing the tag; R1-0528 writes it, and it is dropped).

Whitespace around the tags is dropped: the reasoning is the text between them without leading
or trailing whitespace, the answer starts at the first non-whitespace character after `</think>`.
The streaming parser holds back a tail that could still become a tag (or the whitespace before
one), so the streamed pieces concatenate to exactly what `parse_non_stream` returns.

Pure Python: the language frontend (`sgl.separate_reasoning`) imports it too."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class ThinkFormat:
    start: str
    end: str
    starts_in_reasoning: bool  # the output is reasoning before any tag


FORMATS = {"qwen3": ThinkFormat("<think>", "</think>", False),
           "deepseek-r1": ThinkFormat("<think>", "</think>", True)}
PARSER_NAMES = tuple(FORMATS)


def prompt_opens_reasoning(prompt: str, name: str) -> bool:
    """Whether `prompt` ends inside an open think block (the template began the reasoning)."""
    fmt = FORMATS[name]
    return prompt.rfind(fmt.start) > prompt.rfind(fmt.end)


class ReasoningParser:
    """One output's parser. `in_reasoning`: the output starts inside the reasoning (default:
    the format's rule); the chat route sets it when the prompt opened the block."""

    def __init__(self, name: str, in_reasoning: Optional[bool] = None) -> None:
        if name not in FORMATS:
            raise ValueError(f"reasoning_parser must be one of {list(PARSER_NAMES)}, got {name!r}")
        self.fmt = FORMATS[name]
        forced = self.fmt.starts_in_reasoning if in_reasoning is None else in_reasoning
        # mode: "undecided" (may still open with the start tag), "reasoning", "answer"
        self.mode = "undecided" if not forced else "reasoning"
        self.may_skip_start = True  # a start tag at the very beginning is dropped in any mode
        self.buffer = ""
        self.reasoning_started = False
        self.answer_started = False

    def parse_non_stream(self, text: str) -> tuple[str, str]:
        """(reasoning, answer) of a whole output."""
        reasoning, answer = self.parse_stream_chunk(text)
        more_reasoning, more_answer = self.finish()
        return reasoning + more_reasoning, answer + more_answer

    def parse_stream_chunk(self, delta: str) -> tuple[str, str]:
        """The new (reasoning, answer) text that `delta` makes certain."""
        self.buffer += delta
        reasoning, answer = "", ""
        while True:
            piece_r, piece_a, progressed = self._step()
            reasoning, answer = reasoning + piece_r, answer + piece_a
            if not progressed:
                return reasoning, answer

    def finish(self) -> tuple[str, str]:
        """The end of the output: whatever was held back."""
        rest, self.buffer = self.buffer, ""
        if self.mode == "reasoning":
            return self._reasoning(rest.rstrip()), ""
        return "", self._answer(rest)

    # -- one step of the state machine; returns (reasoning, answer, progressed) --------------
    def _step(self) -> tuple[str, str, bool]:
        if self.mode == "answer":
            out, self.buffer = self.buffer, ""
            return "", self._answer(out), False
        head = self.buffer.lstrip()
        if self.may_skip_start and head:
            if head.startswith(self.fmt.start):
                self.buffer, self.mode, self.may_skip_start = head[len(self.fmt.start):], "reasoning", False
                return "", "", True
            if self.fmt.start.startswith(head):
                return "", "", False  # could still be the start tag
            self.may_skip_start = False
        if not head:
            return "", "", False
        if self.mode == "undecided":
            self.mode = "answer"
            return "", "", True
        return self._step_reasoning()

    def _step_reasoning(self) -> tuple[str, str, bool]:
        at = self.buffer.find(self.fmt.end)
        if at >= 0:
            reasoning = self._reasoning(self.buffer[:at].rstrip())
            self.buffer, self.mode = self.buffer[at + len(self.fmt.end):], "answer"
            return reasoning, "", True
        keep = _held_tail(self.buffer, self.fmt.end)
        out, self.buffer = self.buffer[:len(self.buffer) - keep], self.buffer[len(self.buffer) - keep:]
        return self._reasoning(out), "", False

    def _reasoning(self, text: str) -> str:
        if not self.reasoning_started:
            text = text.lstrip()
            self.reasoning_started = bool(text)
        return text

    def _answer(self, text: str) -> str:
        if not self.answer_started:
            text = text.lstrip()
            self.answer_started = bool(text)
        return text


def _held_tail(text: str, tag: str) -> int:
    """Length of the tail of `text` that must wait: a prefix of `tag` at the very end, and the
    whitespace before it (dropped if the tag follows)."""
    keep = next((k for k in range(min(len(tag) - 1, len(text)), 0, -1) if text.endswith(tag[:k])), 0)
    body = text[:len(text) - keep]
    return keep + len(body) - len(body.rstrip())
