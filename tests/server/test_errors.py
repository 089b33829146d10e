"""Bad requests: every one is a 400 in OpenAI's error shape naming the field, and the server
keeps answering correctly afterwards."""
from __future__ import annotations

import pytest
import requests

from tests.server.conftest import generate

MODEL = "<model>"  # replaced by the served model name
LONG = list(range(100, 9100))  # 9000 tokens: past the 8192-token context
DEEP_SCHEMA = '{"type": "object", "properties": {"a": ' * 150 + '{"type": "string"}' + "}}" * 150

# (route, body, expected param, a word the message must contain)
CASES = [
    ("/generate", b'{"text": "hi", ', "body", "JSON"),
    ("/generate", b"", "body", "empty"),
    ("/generate", [1, 2, 3], "body", "object"),
    ("/generate", {"sampling_params": {}}, "text", "input_ids"),
    ("/generate", {"text": 123}, "text", "text"),
    ("/generate", {"text": "hi", "input_ids": [1]}, "text", "exactly one"),
    ("/generate", {"text": "hi", "sampling_params": {"temperature": -1}},
     "sampling_params.temperature", "temperature"),
    ("/generate", {"text": "hi", "sampling_params": {"temperature": "hot"}},
     "sampling_params.temperature", "number"),
    ("/generate", {"text": "hi", "sampling_params": {"max_new_tokens": -3}},
     "sampling_params.max_new_tokens", ">= 0"),
    ("/generate", {"text": "hi", "sampling_params": {"top_p": 0}},
     "sampling_params.top_p", "top_p"),
    ("/generate", {"text": "hi", "sampling_params": {"bogus": 1}}, None, "bogus"),
    ("/generate", {"text": "hi", "sampling_params": "fast"}, "sampling_params", "dict"),
    ("/generate", {"text": ["a", "b"], "sampling_params": [{}]}, "sampling_params", "entries"),
    ("/generate", {"input_ids": [10**7]}, "input_ids", "vocabulary"),
    ("/generate", {"input_ids": LONG}, "input_ids", "context length"),
    ("/generate", {"text": "hi", "stream": "yes"}, "stream", "bool"),
    ("/generate", {"text": "hi", "return_logprob": True, "top_logprobs_num": -1},
     "top_logprobs_num", "top_logprobs_num"),
    ("/generate", {"text": "hi", "temperature": 0}, None, "temperature"),
    ("/generate", {"text": "hi", "return_logprob": True, "logprob_start_len": 0,
                   "top_logprobs_num": 50000}, "top_logprobs_num", "20"),
    ("/generate", {"text": "hi", "return_logprob": True, "logprob_start_len": 999},
     "logprob_start_len", "logprob_start_len"),
    ("/generate", {"text": "hi", "return_logprob": True, "logprob_start_len": -5},
     "logprob_start_len", "logprob_start_len"),
    ("/generate", {"text": "hi", "sampling_params": {"logit_bias": {"5": 1e308}}},
     "sampling_params.logit_bias", "100"),
    ("/generate", b'{"text": "\\ud800x"}', "text", "surrogate"),
    ("/generate", b'{"text": "hi", "sampling_params": {"stop": ["a", "\\udfff"]}}',
     "sampling_params.stop[1]", "surrogate"),
    ("/generate", b"[" * 100_000 + b"]" * 100_000, "body", "deep"),
    ("/generate", {"text": "hi", "sampling_params": {"json_schema": DEEP_SCHEMA}},
     "sampling_params.json_schema", "nested"),
    ("/generate", {"text": "hi", "sampling_params": {"regex": "(" * 5000 + "a" + ")" * 5000}},
     "sampling_params.regex", "nested"),
    ("/generate", {"text": ["a", "b"], "rid": ["same", "same"]}, "rid", "distinct"),
    ("/generate", {"text": ["a", "b"], "rid": ["x", "x-0"], "sampling_params": [
        {"n": 2, "max_new_tokens": 1}, {"max_new_tokens": 1}]}, "rid", "distinct"),
    ("/v1/completions", {"model": "gpt-nope", "prompt": "hi"}, "model", "gpt-nope"),
    ("/v1/completions", {"model": MODEL}, "prompt", "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": -5},
     "max_tokens", "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "n": 0}, "n", "n:"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "logprobs": 50}, "logprobs", "logprobs"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "temperature": "warm"},
     "temperature", "number"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "frequency_penalty": 3},
     "frequency_penalty", "frequency_penalty"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "logit_bias": {"abc": 1}},
     "logit_bias", "token ids"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "stop": [""]}, "stop", "empty"),
    ("/v1/completions", {"model": MODEL, "prompt": LONG}, "prompt", "context length"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "stream_options": {"include_usage": "y"}},
     "stream_options.include_usage", "bool"),
    ("/v1/chat/completions", {"model": MODEL, "messages": []}, "messages", "at least 1"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]},
     "messages.0.role", "role"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages", "image_url"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                              "top_logprobs": 2}, "top_logprobs", "logprobs"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                              "top_p": 1.5}, "top_p", "top_p"),
    ("/v1/chat/completions", b'{"model": "default", "messages": [{"role": "user", '
     b'"content": "\\ud800"}]}', "messages[0].content", "surrogate"),
    ("/abort_request", {"rid": 5}, "rid", "rid"),
]


def _post(url: str, route: str, body, model_name: str) -> requests.Response:
    if isinstance(body, bytes):
        return requests.post(url + route, data=body, timeout=60,
                             headers={"Content-Type": "application/json"})
    if isinstance(body, dict) and body.get("model") == MODEL:
        body = dict(body, model=model_name)
    return requests.post(url + route, json=body, timeout=60)


@pytest.fixture(scope="module")
def reference(server):
    return generate(server.url, {"text": "The moon is", "sampling_params": {"temperature": 0,
                                                                            "max_new_tokens": 6}})


@pytest.mark.parametrize("route,body,param,word", CASES,
                         ids=[f"{i:02d}{c[0]}" for i, c in enumerate(CASES)])
def test_bad_request_is_400_naming_the_field(server, model_name, reference, route, body, param,
                                             word):
    res = _post(server.url, route, body, model_name)
    assert res.status_code == 400, res.text
    err = res.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param, err
    assert word.lower() in err["message"].lower(), err


def test_table_is_large_enough():
    assert len(CASES) >= 15


def test_server_still_correct_after_bad_requests(server, model_name, reference):
    for route, body, _, _ in CASES:
        _post(server.url, route, body, model_name)
    again = generate(server.url, {"text": "The moon is", "sampling_params": {"temperature": 0,
                                                                             "max_new_tokens": 6}})
    assert again["text"] == reference["text"] and again["output_ids"] == reference["output_ids"]
    assert requests.get(server.url + "/health", timeout=10).status_code == 200


def test_unknown_route_and_method(server):
    res = requests.get(server.url + "/no/such/route", timeout=10)
    assert res.status_code == 404 and res.json()["error"]["code"] == 404
    res = requests.get(server.url + "/generate", timeout=10)
    assert res.status_code == 405 and "error" in res.json()
