"""sgl.Anthropic (the real `anthropic` SDK) against a loopback server speaking the Messages API
wire format, and sgl.LiteLLM (the real `litellm`) against a loopback OpenAI-style server: the
request each program sends, the text and metadata each gets back, streamed and not, and the
constraints each refuses. Skipped only where the SDK is not installed."""
from __future__ import annotations

from typing import Any

import pytest

import sgl
from tests.lang.fake_http import FakeServer, NamedEvents

REPLY = "Paris, of course."


def _usage_message(body: dict) -> dict:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
            "content": [{"type": "text", "text": REPLY}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": {"input_tokens": 11, "output_tokens": 4}}


def _anthropic_answer(path: str, body: dict | None) -> Any:
    if path != "/v1/messages":
        raise KeyError(path)
    if not body.get("stream"):
        return _usage_message(body)
    start = dict(_usage_message(body), content=[], stop_reason=None)
    events = [("message_start", {"type": "message_start", "message": start}),
              ("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}})]
    for piece in ("Paris,", " of", " course."):
        events.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "text_delta", "text": piece}}))
    events += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
               ("message_delta", {"type": "message_delta", "delta": {
                   "stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 4}}),
               ("message_stop", {"type": "message_stop"})]
    return NamedEvents(events)


@pytest.fixture
def anthropic_server():
    pytest.importorskip("anthropic")
    server = FakeServer(_anthropic_answer)
    yield server
    server.close()


@sgl.function
def capital(s):
    s += sgl.system("Answer briefly.")
    s += sgl.user("What is the capital of France?")
    s += sgl.assistant("The capital is" + sgl.gen("answer", max_tokens=20, stop=["\n"],
                                                 temperature=0.5))


def test_anthropic_messages_wire_format(anthropic_server):
    backend = sgl.Anthropic("claude-test", api_key="k-123", base_url=anthropic_server.url)
    state = capital.run(backend=backend)
    assert state["answer"] == REPLY
    meta = state.get_meta_info("answer")
    assert meta["prompt_tokens"] == 11 and meta["finish_reason"] == "end_turn"
    (body,) = anthropic_server.bodies("/v1/messages")
    assert body["system"] == "Answer briefly." and body["max_tokens"] == 20
    assert body["messages"] == [{"role": "user", "content": "What is the capital of France?"},
                                {"role": "assistant", "content": "The capital is"}]
    assert body["stop_sequences"] == ["\n"] and body["temperature"] == 0.5
    headers = {k.lower(): v for k, v in anthropic_server.requests[0][3].items()}
    # the key travels as x-api-key or (newer SDKs) a bearer token
    assert "k-123" in headers.get("x-api-key", headers.get("authorization", ""))
    assert "anthropic-version" in headers


def test_anthropic_stream(anthropic_server):
    backend = sgl.Anthropic("claude-test", api_key="k", base_url=anthropic_server.url)
    state = capital.run(backend=backend, stream=True)
    assert "".join(state.text_iter("answer")) == REPLY
    assert state.get_meta_info("answer")["completion_tokens"] == 4
    assert anthropic_server.bodies("/v1/messages")[0]["stream"] is True


def test_anthropic_refuses_what_it_cannot_enforce(anthropic_server):
    backend = sgl.Anthropic("claude-test", api_key="k", base_url=anthropic_server.url)

    @sgl.function
    def constrained(s):
        s += sgl.user("Pick a number")
        s += sgl.assistant(sgl.gen("n", regex=r"[0-9]+"))

    with pytest.raises(sgl.ProgramError, match="regex"):
        constrained.run(backend=backend).sync()
    assert anthropic_server.bodies("/v1/messages") == []


def _openai_answer(path: str, body: dict | None) -> Any:
    if path != "/v1/chat/completions":
        raise KeyError(path)
    if body.get("stream"):
        return [{"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": piece},
                              "finish_reason": None if piece != " course." else "stop"}]}
                for piece in ("Paris,", " of", " course.")]
    return {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}


@pytest.fixture
def litellm_server(monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of litellm's price list
    pytest.importorskip("litellm")
    server = FakeServer(_openai_answer)
    yield server
    server.close()


def test_litellm_openai_compatible(litellm_server):
    backend = sgl.LiteLLM("openai/tiny", api_key="k", base_url=litellm_server.url + "/v1")
    state = capital.run(backend=backend)
    assert state["answer"] == REPLY
    assert state.get_meta_info("answer")["completion_tokens"] == 4
    streamed = capital.run(backend=backend, stream=True)
    assert "".join(streamed.text_iter("answer")) == REPLY
    plain, stream = litellm_server.bodies("/v1/chat/completions")
    assert plain["model"] == "tiny" and plain["max_tokens"] == 20 and plain["stop"] == ["\n"]
    assert plain["messages"][-1] == {"role": "assistant", "content": "The capital is"}
    assert stream["stream"] is True


def test_litellm_sends_constraints_to_a_self_hosted_server(litellm_server):
    backend = sgl.LiteLLM("openai/tiny", api_key="k", base_url=litellm_server.url + "/v1")

    @sgl.function
    def constrained(s):
        s += sgl.user("Give a number")
        s += sgl.assistant(sgl.gen("n", regex=r"[0-9]+", stop_regex=r"\.", max_tokens=4)
                           + sgl.gen("j", json_schema={"type": "object"}, max_tokens=8))

    constrained.run(backend=backend).sync()
    first, second = litellm_server.bodies("/v1/chat/completions")
    assert first["regex"] == "[0-9]+" and first["stop_regex"] == r"\."
    assert second["response_format"]["json_schema"]["schema"] == {"type": "object"}
