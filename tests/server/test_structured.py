"""Structured output through the OpenAI routes (response_format) and the native route's
grammar errors, on the live server with the bundled model. Sampling at temperature 1 with
seeds: the outputs are valid because of the grammar, not because the model is greedy."""
from __future__ import annotations

import json
import time

import jsonschema
import openai
import pytest
import requests

PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 12},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "role": {"type": "string", "enum": ["admin", "user", "guest"]}},
    "required": ["name", "age", "role"], "additionalProperties": False}
ASK = [{"role": "user", "content": "Describe a person as JSON."}]
JSON_SCHEMA_FORMAT = {"type": "json_schema",
                      "json_schema": {"name": "person", "schema": PERSON, "strict": True}}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def _chat(client, model_name, **kw):
    return client.chat.completions.create(model=model_name, messages=ASK, temperature=1,
                                          max_tokens=kw.pop("max_tokens", 48), **kw)


@pytest.mark.parametrize("seed", [1, 2])
def test_chat_json_schema_output_validates(client, model_name, seed):
    res = _chat(client, model_name, seed=seed, response_format=JSON_SCHEMA_FORMAT)
    choice = res.choices[0]
    assert choice.finish_reason == "stop", choice
    jsonschema.validate(json.loads(choice.message.content), PERSON)


def test_chat_json_object_output_is_an_object(client, model_name):
    res = _chat(client, model_name, seed=2, max_tokens=48,
                response_format={"type": "json_object"})
    assert res.choices[0].finish_reason == "stop", res.choices[0]
    assert isinstance(json.loads(res.choices[0].message.content), dict)


def test_text_format_is_unconstrained(client, model_name):
    kw = {"seed": 1, "max_tokens": 6}
    assert (_chat(client, model_name, response_format={"type": "text"}, **kw).choices[0]
            .message.content == _chat(client, model_name, **kw).choices[0].message.content)


def test_completion_takes_response_format(client, model_name):
    res = client.completions.create(model=model_name, prompt="A person as JSON:", temperature=1,
                                    seed=4, max_tokens=48,
                                    extra_body={"response_format": JSON_SCHEMA_FORMAT})
    assert res.choices[0].finish_reason == "stop", res.choices[0]
    jsonschema.validate(json.loads(res.choices[0].text), PERSON)


def test_stream_equals_non_stream_under_a_schema(client, model_name):
    kw = {"seed": 5, "response_format": JSON_SCHEMA_FORMAT}
    full = _chat(client, model_name, **kw).choices[0].message.content
    chunks = [c for c in _chat(client, model_name, stream=True, **kw) if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == full
    jsonschema.validate(json.loads(full), PERSON)


BAD_FORMATS = [
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"minimum": "zero"}}}}},
    {"type": "json_schema"},
    {"type": "yaml"},
]


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize("response_format", BAD_FORMATS, ids=[f"bad{i}" for i in range(4)])
def test_invalid_response_format_is_400_naming_it(server, model_name, route, response_format):
    body = {"model": model_name, "max_tokens": 4, "response_format": response_format,
            **({"messages": ASK} if "chat" in route else {"prompt": "x"})}
    start = time.perf_counter()
    res = requests.post(server.url + route, json=body, timeout=60)
    assert time.perf_counter() - start < 5.0  # compiling nothing; CI cores are shared
    assert res.status_code == 400, res.text
    assert res.json()["error"]["param"].startswith("response_format"), res.json()


def test_native_invalid_regex_is_400_in_under_a_second(server):
    body = {"text": "x", "sampling_params": {"regex": "(unclosed[", "max_new_tokens": 4}}
    start = time.perf_counter()
    res = requests.post(server.url + "/generate", json=body, timeout=60)
    assert time.perf_counter() - start < 3.0  # a hung compile would take minutes
    assert res.status_code == 400
    err = res.json()["error"]
    assert err["param"] == "sampling_params.regex" and "regex" in err["message"], err


def test_server_answers_after_bad_formats(client, model_name):
    res = _chat(client, model_name, seed=1, max_tokens=3)
    assert res.choices[0].message.content and res.usage.completion_tokens <= 3
