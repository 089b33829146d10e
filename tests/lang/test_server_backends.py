"""RuntimeEndpoint and OpenAI backends against a real `sgl serve` on the bundled model.
Skipped until the HTTP server (sgl.runtime.server.launch) exists."""
from __future__ import annotations

import pytest
import requests

import sgl

pytest.importorskip("sgl.runtime.server.launch", reason="the HTTP server has not landed yet")

GREEDY = {"temperature": 0.0}


@pytest.fixture(scope="module")
def runtime():
    rt = sgl.Runtime()  # `sgl serve` on the bundled model, on a free port
    yield rt
    rt.shutdown()


@pytest.fixture(scope="module")
def server_url(runtime):
    return runtime.url


def _generate(url: str, payload: dict) -> dict:
    res = requests.post(url + "/generate", json=payload, timeout=120)
    assert res.status_code == 200, res.text
    return res.json()


def test_runtime_endpoint_gen_select_fork_stream(server_url):
    backend = sgl.RuntimeEndpoint(server_url)

    @sgl.function
    def prog(s):
        s += "The capital of France is" + sgl.gen("city", max_tokens=4)
        s += ". Is that right? Answer:" + sgl.select("ok", choices=[" yes", " no"])
        forks = s.fork(2)
        forks += lambda i: f" Fact {i}:" + sgl.gen("fact", max_tokens=3)
        forks.join()

    state = prog.run(backend=backend, **GREEDY)
    direct = _generate(server_url, {"text": "The capital of France is",
                                    "sampling_params": {"max_new_tokens": 4, "temperature": 0}})
    assert state["city"] == direct["text"]
    assert state["ok"] in (" yes", " no") and len(state["fact"]) == 2
    means = state.get_meta_info("ok")["normalized_prompt_logprobs"]
    assert state["ok"] == [" yes", " no"][means.index(max(means))]
    streamed = prog.run(backend=backend, stream=True, **GREEDY)
    assert "".join(streamed.text_iter("city")) == state["city"]
    streamed.sync()  # the select and the forks run on after "city" has streamed
    assert streamed["fact"] == state["fact"]
    assert sgl.flush_cache(backend) is True  # refused while any request runs
    assert "model_path" in sgl.get_server_info(backend)


def test_runtime_endpoint_error_message(runtime):
    backend = runtime  # a Runtime is wrapped in a RuntimeEndpoint to its URL

    @sgl.function
    def prog(s):
        s += "Hi" + sgl.gen("a", top_p=5.0)

    with pytest.raises(sgl.ProgramError, match="top_p"):
        prog.run(backend=backend)


def _model_name(url: str) -> str:
    res = requests.get(url + "/v1/models", timeout=10)
    return res.json()["data"][0]["id"] if res.status_code == 200 else "default"


def test_openai_backend_completions_and_chat(server_url):
    name = _model_name(server_url)
    completion = sgl.OpenAI(name, base_url=server_url + "/v1", api_key="none", is_chat_model=False)
    native = sgl.RuntimeEndpoint(server_url)

    @sgl.function
    def complete(s):
        s += "The capital of France is" + sgl.gen("city", max_tokens=4)

    assert complete.run(backend=completion, **GREEDY)["city"] == complete.run(backend=native, **GREEDY)["city"]

    @sgl.function
    def pick(s):
        s += "The sky is" + sgl.select("color", choices=[" blue", " made of cheese"])

    assert pick.run(backend=completion)["color"] == pick.run(backend=native)["color"]

    chat = sgl.OpenAI(name, base_url=server_url + "/v1", api_key="none", is_chat_model=True)

    @sgl.function
    def talk(s):
        s += sgl.user("Say hello.")
        s += sgl.assistant(sgl.gen("reply", max_tokens=8))

    reply = talk.run(backend=chat, **GREEDY)["reply"]
    assert reply and reply == talk.run(backend=native, **GREEDY)["reply"]
    streamed = talk.run(backend=chat, stream=True, **GREEDY)
    assert "".join(streamed.text_iter("reply")) == reply


def test_openai_completion_speculative_execution_needs_fewer_requests(server_url):
    backend = sgl.OpenAI(_model_name(server_url), base_url=server_url + "/v1", api_key="none",
                         is_chat_model=False)
    routes: list[str] = []  # one per HTTP request the backend makes
    request = backend.http.request
    backend.http.request = lambda method, route, *a, **k: (routes.append(route), request(method, route, *a, **k))[1]

    def character(spec):
        @sgl.function(num_api_spec_tokens=spec)
        def prog(s):
            s += "Name: Steve Jobs.\nBirthday: February 24, 1955.\nJob: Apple CEO.\n\n"
            s += "Name: Bill Gates.\nBirthday: October 28, 1955.\nJob: Microsoft CEO.\n\n"
            s += "Name:" + sgl.gen("name", max_tokens=16, stop="\n")
            s += "\nBirthday:" + sgl.gen("birthday", max_tokens=16, stop="\n")
            s += "\nJob:" + sgl.gen("job", max_tokens=16, stop="\n") + "\n"
        return prog

    spec_state = character(64).run(backend=backend, **GREEDY)
    num_spec_requests = len(routes)
    plain_state = character(None).run(backend=backend, **GREEDY)
    assert len(routes) - num_spec_requests == 3 and num_spec_requests < 3
    assert spec_state["name"] == plain_state["name"]


def test_openai_backend_constraints_match_runtime_endpoint(server_url):
    """A constrained program switches from the native backend to the OpenAI one unchanged:
    json_schema goes as response_format, regex/dtype/stop_regex as sgl serve's extra fields,
    and the greedy results are the native backend's."""
    @sgl.function
    def prog(s):
        s += "Three digits: " + sgl.gen("digits", regex=r"[0-9]{3}", max_tokens=6)
        s += "\nAn integer: " + sgl.gen_int("n", max_tokens=6)
        s += "\nJSON: " + sgl.gen("obj", json_schema={"type": "object", "properties": {
            "a": {"type": "integer"}}, "required": ["a"]}, max_tokens=16)
        s += "\nCount: 1, 2, 3," + sgl.gen("counted", stop_regex=r"[0-9]", max_tokens=8)

    native = prog.run(backend=sgl.RuntimeEndpoint(server_url), **GREEDY)
    oai = sgl.OpenAI("default", base_url=server_url + "/v1", is_chat_model=False)
    state = prog.run(backend=oai, **GREEDY)
    for name in ("digits", "n", "obj", "counted"):
        assert state[name] == native[name], name
    assert state.get_meta_info("counted")["finish_reason"] == "stop"
