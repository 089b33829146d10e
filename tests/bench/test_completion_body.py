"""The independent-calls baseline's requests: a program's /generate payloads as OpenAI
/v1/completions bodies (validated by the server's own request model)."""
from __future__ import annotations

import pytest

from sgl.bench_programs.recorder import Call
from sgl.bench_programs.systems import completion_body
from sgl.runtime.server.protocol import CompletionRequest

DEFAULTS = {"skip_special_tokens": True, "spaces_between_special_tokens": True}


def test_gen_payload_keeps_its_sampling_and_constraint():
    payload = {"text": "Doc: x\nJSON:", "sampling_params": {
        **DEFAULTS, "max_new_tokens": 96, "temperature": 0, "stop": ["\n"], "ignore_eos": True,
        "json_schema": '{"type": "object"}'}}
    req = CompletionRequest(**completion_body(payload))
    assert (req.prompt, req.max_tokens, req.temperature, req.stop) == ("Doc: x\nJSON:", 96, 0, ["\n"])
    assert req.ignore_eos and req.json_schema == '{"type": "object"}' and req.logprobs is None
    regex = {"text": "Date:", "sampling_params": {**DEFAULTS, "max_new_tokens": 16, "regex": "[0-9]{4}"}}
    assert CompletionRequest(**completion_body(regex)).regex == "[0-9]{4}"


def test_select_scoring_becomes_an_echo_of_every_prompt_logprob():
    payload = {"text": ["Q: a yes", "Q: a no"], "return_logprob": True, "logprob_start_len": 3,
               "return_text_in_logprobs": True, "sampling_params": {"max_new_tokens": 0, "temperature": 0}}
    req = CompletionRequest(**completion_body(payload))
    assert req.prompt == ["Q: a yes", "Q: a no"] and req.max_tokens == 0
    assert req.echo and req.logprobs == 0


def test_a_parameter_without_a_completions_field_is_refused_by_name():
    with pytest.raises(ValueError, match="frequency_bias"):
        completion_body({"text": "x", "sampling_params": {"frequency_bias": 1.0}})


def test_cache_fill_requests_are_recognised():
    fill = Call(0, {"text": "x", "sampling_params": {"max_new_tokens": 0}}, [], 0.0, 1.0)
    scoring = Call(0, {"text": ["x a"], "sampling_params": {"max_new_tokens": 0}, "return_logprob": True},
                   [], 0.0, 1.0)
    assert fill.is_cache_fill and not scoring.is_cache_fill
