"""Frontend pieces SGLang programs rely on: gen(stop_regex=) on the wire, separate_reasoning,
JSON-safe gen_string, and text_async_iter never handing out an empty chunk."""
from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import sgl
from sgl.lang.ir import REGEX_STR, SglSamplingParams
from tests.lang.fake_backend import FakeBackend


def test_stop_regex_reaches_generate_params():
    backend = FakeBackend(reply=lambda p, sp: "x")

    @sgl.function
    def prog(s):
        s += "Q" + sgl.gen("a", stop_regex=r"\d+", max_tokens=3)

    prog.run(backend=backend)
    params = backend.calls[0][2]
    assert params.to_srt_kwargs()["stop_regex"] == [r"\d+"]
    with pytest.raises(re.error):
        sgl.gen("b", stop_regex="(unclosed")


@pytest.mark.parametrize("stream", [False, True])
def test_separate_reasoning(stream):
    backend = FakeBackend(reply=lambda p, sp: "<think>\nweigh it\n</think>\n\nYes")

    @sgl.function
    def prog(s):
        s += sgl.user("Is it?")
        s += sgl.assistant(sgl.separate_reasoning(sgl.gen("answer"), model_type="qwen3"))

    state = prog.run(backend=backend, stream=stream)
    assert state["answer"] == "Yes"
    assert state["answer_reasoning_content"] == "weigh it"
    assert state.messages()[-1] == {"role": "assistant", "content": "Yes"}
    with pytest.raises(ValueError, match="model_type"):
        sgl.separate_reasoning(sgl.gen("x"), model_type="nope")


@given(st.text(max_size=20))
def test_gen_string_regex_accepts_exactly_json_strings(content):
    literal = json.dumps(content)  # escapes control characters, quotes and backslashes
    assert re.fullmatch(REGEX_STR, literal)
    assert re.fullmatch(REGEX_STR, '"' + content + '"') is None or json.loads('"' + content + '"') == content


def test_gen_string_regex_refuses_raw_control_characters():
    for bad in ('"a\tb"', '"a\nb"', '"a\\"', '"a\\x"', '"\x00"'):
        assert re.fullmatch(REGEX_STR, bad) is None
    assert SglSamplingParams(dtype=str).to_srt_kwargs()["regex"] == REGEX_STR


class _GappyBackend(FakeBackend):
    """Streams with empty deltas between the real ones (what a server sends for a token that
    adds no text yet: a held-back stop-string prefix, half a UTF-8 character)."""

    def generate_stream(self, s: Any, sampling_params: SglSamplingParams) -> Iterator[tuple[str, dict]]:
        pieces = [""] if sampling_params.max_new_tokens == 0 else ["", "Hel", "", "", "lo", ""]
        for i, piece in enumerate(pieces):
            yield piece, {"completion_tokens": i + 1, "output_token_logprobs": [[-1.0, i, piece]]}


@pytest.mark.parametrize("stream", [True, False])
def test_text_async_iter_never_yields_empty_text(stream):
    @sgl.function
    def prog(s):
        s += "X" + sgl.gen("v", return_logprob=True) + sgl.gen("empty", max_tokens=0)

    backend = _GappyBackend() if stream else FakeBackend(
        reply=lambda p, sp: "" if sp.max_new_tokens == 0 else "Hello")

    async def collect(name: str) -> list:
        state = prog.run(backend=backend, stream=stream)
        return [item async for item in state.text_async_iter(name, return_meta_data=True)]

    items = asyncio.run(collect("v"))
    assert "".join(t for t, _ in items) == "Hello" and all(t for t, _ in items)
    assert asyncio.run(collect("empty")) == []
