"""A request the runtime gives up on is an error on every route and in every frontend backend
(issue #26), never a cut result: on a server whose KV pool (32 tokens) is smaller than a
request's prompt, that request fails with a 400 and an OpenAI-style body (a stream too: nothing
was streamed yet), and the requests beside it finish normally. (A request whose
prompt fits but whose max_new_tokens does not is clipped at admission, as in SGLang: issue #23.)"""
from __future__ import annotations

import threading

import pytest
import requests

import sgl
from sgl.runtime.server import Runtime
from tests.server.conftest import generate, sse_events, wait_idle

SHORT = {"max_new_tokens": 4, "temperature": 0}
# 25 tokens, twice: more than the 32-token pool holds
PROMPT = ("Here is a list of the numbers from one to one hundred, written out in words and "
          "separated by commas, starting now:") * 2


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("small") / "server.log"
    runtime = Runtime(log_file=str(log), max_total_tokens=32)
    yield runtime
    runtime.shutdown()


def _is_pool_error(body: dict) -> None:
    err = body["error"]
    assert "more KV cache than the pool holds" in err["message"], body
    assert err["type"] == "invalid_request_error" and err["code"] == 400


def test_native_request_fails_with_an_error_status(small):
    res = requests.post(small.url + "/generate", json={"text": PROMPT, "sampling_params": SHORT}, timeout=300)
    assert res.status_code == 400
    _is_pool_error(res.json())
    wait_idle(small.url)


def test_native_stream_failing_before_its_first_event_gets_an_error_status(small):
    body = {"text": PROMPT, "sampling_params": SHORT, "stream": True}
    res = requests.post(small.url + "/generate", json=body, stream=True, timeout=300)
    assert res.status_code == 400  # the headers go out with the first event: none was sent
    _is_pool_error(res.json())


def test_native_stream_failing_after_its_first_events_ends_with_an_error_event(small):
    """A batch: the short prompt streams (and finishes) first, then the long one fails."""
    body = {"text": ["Hello", PROMPT], "sampling_params": SHORT, "stream": True}
    with requests.post(small.url + "/generate", json=body, stream=True, timeout=300) as res:
        assert res.status_code == 200
        events = sse_events(res)
    assert events[-1] == "[DONE]"
    _is_pool_error(events[-2])
    assert any(e["index"] == 0 for e in events[:-2])  # the short one streamed first
    assert all(e["meta_info"]["finish_reason"] is None for e in events[:-2] if e["index"] == 1)
    wait_idle(small.url)


def test_openai_routes_fail_the_same_way(small):
    name = requests.get(small.url + "/v1/models", timeout=30).json()["data"][0]["id"]
    body = {"model": name, "prompt": PROMPT, "max_tokens": 4, "temperature": 0}
    res = requests.post(small.url + "/v1/completions", json=body, timeout=300)
    assert res.status_code == 400
    _is_pool_error(res.json())
    res = requests.post(small.url + "/v1/completions", json={**body, "stream": True}, timeout=300)
    assert res.status_code == 400
    _is_pool_error(res.json())


def test_the_request_beside_it_finishes(small):
    errors: list[int] = []
    thread = threading.Thread(target=lambda: errors.append(requests.post(
        small.url + "/generate", json={"text": PROMPT, "sampling_params": SHORT}, timeout=300).status_code))
    thread.start()
    out = generate(small.url, {"text": "Hello", "sampling_params": SHORT})
    thread.join()
    assert errors == [400]
    assert out["meta_info"]["finish_reason"]["type"] == "length"
    wait_idle(small.url)


@sgl.function
def count(s, prompt):
    s += prompt + sgl.gen("numbers", max_tokens=4)


@pytest.mark.parametrize("kind", ["native", "openai"])
def test_frontend_backends_record_the_error_on_the_program(small, kind):
    if kind == "native":
        backend = sgl.RuntimeEndpoint(small.url)
    else:
        name = requests.get(small.url + "/v1/models", timeout=30).json()["data"][0]["id"]
        backend = sgl.OpenAI(name, base_url=small.url + "/v1", api_key="none", is_chat_model=False)
    states = count.run_batch([{"prompt": PROMPT}, {"prompt": "Count:"}], backend=backend, temperature=0)
    assert "more KV cache than the pool holds" in str(states[0].error())
    assert states[1].error() is None and states[1]["numbers"]
    with pytest.raises(sgl.ProgramError, match="KV cache"):
        count.run(prompt=PROMPT, backend=backend, temperature=0)
