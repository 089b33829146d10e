"""RuntimeEndpoint and OpenAI backends against a fake HTTP server: what goes on the wire, how
answers, streams and errors come back."""
from __future__ import annotations

import pytest

import sgl
from sgl.lang.backends.openai import _openai_sampling
from sgl.lang.ir import SglSamplingParams
from tests.lang.fake_http import FakeServer

MODEL_INFO = {"model_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "is_generation": True}


def native_answer(path, body):
    if path == "/get_model_info":
        return MODEL_INFO
    if path == "/get_server_info":
        return {"version": "test", "max_total_tokens": 1000}
    if path == "/flush_cache":
        return {"ok": True}
    if path != "/generate":
        raise KeyError(path)
    if body["sampling_params"].get("top_p", 1) > 1:
        raise ValueError("sampling_params.top_p must be in (0, 1]")
    text = body.get("text")
    if isinstance(text, list):  # select scoring batch
        return [{"text": "", "meta_info": {"prompt_tokens": 4, "output_token_logprobs": [],
                                           "input_token_logprobs": [[-1.0, 1, "x"], [-0.1 * len(t), 2, t[-3:]]]}}
                for t in text]
    if body.get("stream"):
        return [{"text": "ab"[:i], "meta_info": {"completion_tokens": i}} for i in (1, 2)] + \
               [{"text": "abc", "meta_info": {"completion_tokens": 3}}]
    return {"text": " out", "meta_info": {"prompt_tokens": 3, "completion_tokens": 1}}


@pytest.fixture
def server():
    srv = FakeServer(native_answer, api_key="k")
    yield srv
    srv.close()


def test_runtime_endpoint_wire_format(server):
    backend = sgl.RuntimeEndpoint(server.url, api_key="k")
    assert backend.get_chat_template().name == "smollm2"

    @sgl.function
    def prog(s):
        s += "Hi" + sgl.gen("a", max_tokens=5, stop="\n", return_logprob=True, logprob_start_len=0)

    state = prog.run(backend=backend, temperature=0.0)
    assert state["a"] == " out" and state.get_meta_info("a")["completion_tokens"] == 1
    (body,) = server.bodies("/generate")
    assert body["text"] == "Hi" and body["return_logprob"] is True and body["logprob_start_len"] == 0
    assert body["sampling_params"]["max_new_tokens"] == 5
    assert body["sampling_params"]["stop"] == ["\n", "<|im_end|>"]
    assert all(h.get("Authorization") == "Bearer k" for _, _, _, h in server.requests)
    assert sgl.get_server_info(backend)["version"] == "test"
    assert sgl.flush_cache(backend) is True


def test_runtime_endpoint_stream_turns_cumulative_text_into_deltas(server):
    backend = sgl.RuntimeEndpoint(server.url, api_key="k")

    @sgl.function
    def prog(s):
        s += "Hi" + sgl.gen("a")

    state = prog.run(backend=backend, stream=True)
    assert "".join(state.text_iter("a")) == "abc"  # pieces may coalesce when the reader lags
    assert server.bodies("/generate")[0]["stream"] is True
    chunks = list(backend._send_stream({"text": "Hi", "sampling_params": {}, "stream": True}))
    assert [c[0] for c in chunks] == ["a", "b", "c"] and chunks[-1][1]["completion_tokens"] == 3


def test_runtime_endpoint_select_uses_cached_prefix_then_one_batch(server):
    backend = sgl.RuntimeEndpoint(server.url, api_key="k")

    @sgl.function
    def prog(s):
        s += "Pick:" + sgl.select("c", choices=[" abc", " xyz!"])

    assert prog.run(backend=backend)["c"] == " abc"  # shorter prompt, higher mock logprob
    prefix, batch = server.bodies("/generate")
    assert prefix == {"text": "Pick:", "sampling_params": {"max_new_tokens": 0}}
    assert batch["text"] == ["Pick: abc", "Pick: xyz!"] and batch["logprob_start_len"] == 1  # 3 prompt tokens - 2


def test_runtime_endpoint_errors_carry_server_message(server):
    with pytest.raises(RuntimeError, match="401.*invalid api key"):
        sgl.RuntimeEndpoint(server.url, api_key="wrong")
    backend = sgl.RuntimeEndpoint(server.url, api_key="k")

    @sgl.function
    def prog(s):
        s += "Hi" + sgl.gen("a", top_p=2.0)

    with pytest.raises(sgl.ProgramError, match="top_p must be in"):
        prog.run(backend=backend)


def test_server_gone_mid_program_fails_fast(server):
    backend = sgl.RuntimeEndpoint(server.url, api_key="k")
    server.close()

    @sgl.function
    def prog(s):
        s += "Hi" + sgl.gen("a")

    with pytest.raises(sgl.ProgramError, match="cannot reach the server"):
        prog.run(backend=backend)


def openai_answer(path, body):
    if path == "/v1/completions":
        if body.get("echo"):
            rows = [{"index": i, "text": p, "logprobs": {"tokens": ["Q", ":", p[2:]],
                                                        "token_logprobs": [None, -1.0, -0.2 * len(p)]}}
                    for i, p in enumerate(body["prompt"])]
            return {"choices": rows}
        n = body.get("n") or 1
        return {"id": "c1", "choices": [{"index": i, "text": f" done{i}", "finish_reason": "stop"} for i in range(n)],
                "usage": {"prompt_tokens": 2, "completion_tokens": 1}}
    if path == "/v1/chat/completions":
        if body.get("stream"):
            return [{"id": "s", "choices": [{"delta": {"content": p}}]} for p in ("Hel", "lo")]
        content = "yes" if "regex" in body else "Hello there"
        return {"id": "c2", "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                         "finish_reason": "stop"}], "usage": {"prompt_tokens": 9}}
    raise KeyError(path)


@pytest.fixture
def oai_server():
    srv = FakeServer(openai_answer)
    yield srv
    srv.close()


def test_openai_completion_model(oai_server):
    backend = sgl.OpenAI("my-model", base_url=oai_server.url + "/v1", is_chat_model=False)

    @sgl.function
    def prog(s):
        s += "Q:" + sgl.gen("a", max_tokens=4, stop=["\n"], top_k=5) + sgl.gen("many", n=2)
        s += sgl.select("c", choices=[" yes", " nope"])

    state = prog.run(backend=backend, temperature=0.0)
    assert state["a"] == " done0" and state["many"] == [" done0", " done1"]
    assert state["c"] == " yes"
    first = oai_server.bodies("/v1/completions")[0]
    assert first["prompt"] == "Q:" and first["max_tokens"] == 4 and first["top_k"] == 5
    assert first["stop"] == ["\n"] and first["model"] == "my-model"


def test_openai_chat_model_messages_stream_and_select(oai_server):
    backend = sgl.OpenAI("chat-model", base_url=oai_server.url + "/v1")
    assert backend.is_chat_model

    @sgl.function
    def chat(s):
        s += sgl.system("Be nice.")
        s += sgl.user("Hi")
        s += sgl.assistant(sgl.gen("r", max_tokens=8))
        s += sgl.user("Happy?")
        s += sgl.assistant(sgl.select("ok", choices=["yes", "no"]))

    state = chat.run(backend=backend)
    assert state["r"] == "Hello there" and state["ok"] == "yes"
    bodies = oai_server.bodies("/v1/chat/completions")
    assert bodies[0]["messages"] == [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi"}]
    assert bodies[1]["regex"] == "(yes|no)"
    streamed = chat.run(backend=backend, stream=True)
    assert "".join(streamed.text_iter("r")) == "Hello"


def test_openai_chat_gen_outside_assistant_is_a_clear_error(oai_server):
    backend = sgl.OpenAI("chat-model", base_url=oai_server.url + "/v1")

    @sgl.function
    def prog(s):
        s += "Plain text " + sgl.gen("a")

    with pytest.raises(sgl.ProgramError, match="right after the assistant role"):
        prog.run(backend=backend)


def test_openai_official_api_limits():
    with pytest.raises(NotImplementedError, match="regex"):
        _openai_sampling(SglSamplingParams(regex="[0-9]+"), is_official=True)
    body = _openai_sampling(SglSamplingParams(json_schema='{"type": "object"}', max_new_tokens=3), True)
    assert body["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert "top_k" not in body and "regex" not in body
    backend = sgl.OpenAI("gpt-4o-mini", api_key="x")
    with pytest.raises(NotImplementedError, match="chat model"):
        backend.select(None, ["a", "b"], 0.0, sgl.token_length_normalized)
    with pytest.raises(NotImplementedError, match="unconditional"):
        backend.select(None, ["a"], 0.0, sgl.unconditional_likelihood_normalized)
