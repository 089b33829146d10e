"""Result dicts of the front end (SGLang's shape: cumulative text, meta_info) -> OpenAI response
bodies and stream chunks. A view holds one request's formatting state: what each choice has
already streamed."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from sgl.runtime.reasoning_parser import ReasoningParser
from sgl.runtime.server.tools import ToolCallParser, ToolStream

Result = dict[str, Any]


@dataclass
class _Cursor:
    """How much of one choice has been streamed."""
    text: int = 0          # characters of text
    tokens: int = 0        # logprob entries
    offset: int = 0        # text_offset of the next logprob entry (completions)
    started: bool = False
    finished: bool = False
    tools: Optional[ToolStream] = None  # tool-call parsing state (chat with tools)
    thinking: Optional[ReasoningParser] = None  # reasoning split state (--reasoning-parser)
    raw: int = 0                   # characters of the raw text fed to `thinking`
    answer: str = ""               # the answer text so far (the raw text less the reasoning)
    held_reasoning: str = ""       # stream_reasoning=false: reasoning not yet sent


@dataclass(frozen=True)
class Reasoning:
    """How a chat request splits reasoning from the answer."""
    parser: str
    in_reasoning: Optional[bool]   # the prompt opened the think block (None: the format's rule)
    stream: bool = True            # stream reasoning_content as it comes, else in one piece

    def new_parser(self) -> ReasoningParser:
        return ReasoningParser(self.parser, self.in_reasoning)


def finish_reason(r: Result) -> tuple[Optional[str], Any]:
    fr = r["meta_info"]["finish_reason"]
    if fr is None:
        return None, None
    return {"stop": "stop", "length": "length"}.get(fr["type"], fr["type"]), fr.get("matched")


def usage(results: list[Result], n: int) -> dict[str, Any]:
    """The prompt counts once per prompt, not once per choice (OpenAI's rule)."""
    firsts = results[::n]
    prompt = sum(r["meta_info"]["prompt_tokens"] for r in firsts)
    completion = sum(r["meta_info"]["completion_tokens"] for r in results)
    cached = sum(r["meta_info"]["cached_tokens"] for r in firsts)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion, "prompt_tokens_details": {"cached_tokens": cached}}


class _View:
    object_name = ""

    def __init__(self, req: Any, rid: str, model: str) -> None:
        self.req, self.id, self.model = req, rid, model
        self.created = int(time.time())
        self.cursors: dict[int, _Cursor] = {}

    def _envelope(self, choices: list[dict[str, Any]], suffix: str = "") -> dict[str, Any]:
        return {"id": self.id, "object": self.object_name + suffix, "created": self.created,
                "model": self.model, "choices": choices}

    def usage_chunk(self, results: list[Result]) -> dict[str, Any]:
        return dict(self._envelope([], self._chunk_suffix), usage=usage(results, self.req.n))

    _chunk_suffix = ""

    def _text_delta(self, r: Result, cur: _Cursor) -> str:
        text = r["text"]
        delta = text[cur.text:] if len(text) > cur.text else ""
        cur.text = max(cur.text, len(text))
        return delta


class CompletionView(_View):
    object_name = "text_completion"

    def __init__(self, req: Any, rid: str, model: str, echoes: Optional[list[str]]) -> None:
        super().__init__(req, rid, model)
        self.echoes = echoes

    def response(self, results: list[Result]) -> dict[str, Any]:
        choices = []
        for i, r in enumerate(results):
            reason, matched = finish_reason(r)
            cur = _Cursor()
            choices.append({"index": i, "text": self._echo(i) + r["text"],
                            "logprobs": self._logprobs(r, cur), "finish_reason": reason,
                            "matched_stop": matched})
        return dict(self._envelope(choices), usage=usage(results, self.req.n))

    def chunks(self, results: list[Result]) -> Iterator[dict[str, Any]]:
        for i, r in enumerate(results):
            cur = self.cursors.setdefault(i, _Cursor())
            if cur.finished:
                continue
            text = ("" if cur.started else self._echo(i)) + self._text_delta(r, cur)
            logprobs = self._logprobs(r, cur)
            reason, matched = finish_reason(r)
            if not text and reason is None and not (logprobs and logprobs["tokens"]):
                continue
            cur.started, cur.finished = True, reason is not None
            yield self._envelope([{"index": i, "text": text, "logprobs": logprobs,
                                   "finish_reason": reason, "matched_stop": matched}])

    def _echo(self, i: int) -> str:
        return self.echoes[i // self.req.n] if self.echoes else ""

    def _logprobs(self, r: Result, cur: _Cursor) -> Optional[dict[str, Any]]:
        """OpenAI's legacy logprobs object for the entries not yet sent."""
        if self.req.logprobs is None:
            return None
        meta = r["meta_info"]
        entries, tops = meta["output_token_logprobs"], meta["output_top_logprobs"]
        if self.req.echo:
            entries = meta["input_token_logprobs"] + entries
            tops = meta["input_top_logprobs"] + tops
        entries, tops = entries[cur.tokens:], tops[cur.tokens:]
        cur.tokens += len(entries)
        out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                               "text_offset": []}
        for (lp, _, tok), top in zip(entries, tops):
            tok = tok or ""
            out["tokens"].append(tok)
            out["token_logprobs"].append(lp)
            out["top_logprobs"].append({t or "": v for v, _, t in top} if top else None)
            out["text_offset"].append(cur.offset)
            cur.offset += len(tok)
        return out


class ChatView(_View):
    """Chat bodies. With a tool parser, the output is read for calls: they become
    `message.tool_calls` (content: the text outside them, or None) and finish_reason
    "tool_calls"; streamed, each call is one complete tool-call delta (see tools/stream.py)."""
    object_name = "chat.completion"
    _chunk_suffix = ".chunk"

    def __init__(self, req: Any, rid: str, model: str,
                 parser: Optional[ToolCallParser] = None,
                 reasoning: Optional[Reasoning] = None) -> None:
        super().__init__(req, rid, model)
        self.parser, self.reasoning = parser, reasoning

    def response(self, results: list[Result]) -> dict[str, Any]:
        choices = []
        for i, r in enumerate(results):
            reason, matched = finish_reason(r)
            thought, text = None, r["text"]
            if self.reasoning is not None:
                thought, text = self.reasoning.new_parser().parse_non_stream(text)
            message: dict[str, Any] = {"role": "assistant", "content": text}
            parsed = self.parser.parse(text) if self.parser is not None else None
            if parsed is not None and parsed.calls:
                message = {"role": "assistant", "content": parsed.content or None,
                           "tool_calls": [c.to_openai() for c in parsed.calls]}
                reason = _calls_reason(reason)
            if self.reasoning is not None:
                message["reasoning_content"] = thought or None
            choices.append({"index": i, "message": message,
                            "logprobs": self._logprobs(r, _Cursor()), "finish_reason": reason,
                            "matched_stop": matched})
        return dict(self._envelope(choices), usage=usage(results, self.req.n))

    def chunks(self, results: list[Result]) -> Iterator[dict[str, Any]]:
        for i, r in enumerate(results):
            cur = self.cursors.setdefault(i, _Cursor())
            if cur.finished:
                continue
            if not cur.started:
                cur.started = True
                if self.parser is not None:
                    cur.tools = ToolStream(self.parser)
                if self.reasoning is not None:
                    cur.thinking = self.reasoning.new_parser()
                yield self._chunk(i, {"role": "assistant", "content": ""}, None, None, None)
            reason, matched = finish_reason(r)
            thought = self._split_reasoning(r, cur, reason is not None)
            if cur.thinking is not None:
                r = dict(r, text=cur.answer)
            delta = self._delta(r, cur, reason is not None)
            if thought:
                delta = {"reasoning_content": thought, **delta}
            logprobs = self._logprobs(r, cur)
            if not delta and reason is None and not (logprobs and logprobs["content"]):
                continue
            cur.finished = reason is not None
            if cur.tools is not None and cur.tools.num_calls:
                reason = _calls_reason(reason)
            yield self._chunk(i, delta, logprobs, reason, matched)

    def _split_reasoning(self, r: Result, cur: _Cursor, finished: bool) -> str:
        """Feed the new raw text to the choice's reasoning parser: the reasoning to send now
        (the answer part goes to `cur.answer`)."""
        if cur.thinking is None:
            return ""
        new, cur.raw = r["text"][cur.raw:], max(cur.raw, len(r["text"]))
        thought, answer = cur.thinking.parse_stream_chunk(new)
        if finished:
            more_thought, more_answer = cur.thinking.finish()
            thought, answer = thought + more_thought, answer + more_answer
        cur.answer += answer
        if self.reasoning.stream:
            return thought
        cur.held_reasoning += thought
        if finished or cur.thinking.mode == "answer":  # the reasoning is complete: all at once
            thought, cur.held_reasoning = cur.held_reasoning, ""
            return thought
        return ""

    def _delta(self, r: Result, cur: _Cursor, finished: bool) -> dict[str, Any]:
        if cur.tools is None:
            text = self._text_delta(r, cur)
            return {"content": text} if text else {}
        text, calls = cur.tools.update(r["text"], finished)
        delta: dict[str, Any] = {"content": text} if text else {}
        if calls:
            delta["tool_calls"] = cur.tools.call_deltas(calls)
        return delta

    def _chunk(self, i: int, delta: dict[str, Any], logprobs: Any, reason: Optional[str],
               matched: Any) -> dict[str, Any]:
        return self._envelope([{"index": i, "delta": delta, "logprobs": logprobs,
                                "finish_reason": reason, "matched_stop": matched}], ".chunk")

    def _logprobs(self, r: Result, cur: _Cursor) -> Optional[dict[str, Any]]:
        if not self.req.logprobs:
            return None
        meta = r["meta_info"]
        entries = meta["output_token_logprobs"][cur.tokens:]
        tops = meta["output_top_logprobs"][cur.tokens:]
        cur.tokens += len(entries)
        return {"content": [_chat_token(lp, tok, top) for (lp, _, tok), top in zip(entries, tops)]}


def _calls_reason(reason: Optional[str]) -> Optional[str]:
    """finish_reason of a choice that made calls: "tool_calls", unless it was cut short."""
    return "tool_calls" if reason == "stop" else reason


def _chat_token(lp: float, tok: Optional[str], top: Optional[list]) -> dict[str, Any]:
    tok = tok or ""
    return {"token": tok, "logprob": lp, "bytes": list(tok.encode("utf-8")),
            "top_logprobs": [_top_entry(v, t or "") for v, _, t in (top or [])]}


def _top_entry(lp: float, tok: str) -> dict[str, Any]:
    return {"token": tok, "logprob": lp, "bytes": list(tok.encode("utf-8"))}
