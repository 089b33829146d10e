"""The reasoning parsers: whole outputs split as documented, and any chunking of a stream gives
exactly the whole-output split (the streaming parser is checked against the one-shot one)."""
from __future__ import annotations

import random

import pytest

from sgl.runtime.reasoning_parser import ReasoningParser, prompt_opens_reasoning

CASES = [
    # (parser, starts in reasoning, output, reasoning, answer)
    ("qwen3", None, "<think>\nplan  it\n</think>\n\nThe answer", "plan  it", "The answer"),
    ("qwen3", None, "plain answer", "", "plain answer"),
    ("qwen3", None, "text <think>x</think>", "", "text <think>x</think>"),
    ("qwen3", True, "plan</think>answer", "plan", "answer"),
    ("qwen3", None, "<think>cut off by length  ", "cut off by length", ""),
    ("qwen3", None, "<think></think>\n\nhi", "", "hi"),
    ("deepseek-r1", None, "plan</think>answer", "plan", "answer"),
    ("deepseek-r1", None, "<think>plan</think> answer", "plan", "answer"),
    ("deepseek-r1", None, "never closed", "never closed", ""),
    ("deepseek-r1", False, "<think>a</think>b", "a", "b"),
]


@pytest.mark.parametrize("name,forced,text,reasoning,answer", CASES)
def test_whole_output(name, forced, text, reasoning, answer):
    assert ReasoningParser(name, forced).parse_non_stream(text) == (reasoning, answer)


@pytest.mark.parametrize("name,forced,text,reasoning,answer", CASES)
def test_any_chunking_streams_the_same_split(name, forced, text, reasoning, answer):
    rng = random.Random(0)
    for _ in range(100):
        parser, got_r, got_a, i = ReasoningParser(name, forced), "", "", 0
        while i < len(text):
            step = rng.randint(1, 5)
            r, a = parser.parse_stream_chunk(text[i:i + step])
            got_r, got_a, i = got_r + r, got_a + a, i + step
        r, a = parser.finish()
        assert (got_r + r, got_a + a) == (reasoning, answer)


def test_prompt_opens_reasoning_and_bad_name():
    assert prompt_opens_reasoning("<|im_start|>assistant\n<think>\n", "qwen3")
    assert not prompt_opens_reasoning("assistant\n<think>\n\n</think>\n\n", "qwen3")
    with pytest.raises(ValueError, match="reasoning_parser"):
        ReasoningParser("nope")
