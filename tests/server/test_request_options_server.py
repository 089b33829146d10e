"""return_hidden_states and priority through `sgl serve` on loopback (a tiny random Llama, real
weights): /generate's meta_info.hidden_states against transformers, streamed and not, the 400
naming the flag on a server started without it; under --max-queued-requests a higher-priority
arrival takes a queued lower one's place (503 for it), and a lower one is refused."""
from __future__ import annotations

import os
import threading
import time

import pytest
import requests
import torch

from sgl.runtime.server import Runtime
from tests.runtime.test_hidden_states import flatten, reference, tiny_llama
from tests.server.conftest import generate, server_state, sse_events, wait_idle

PROMPT = [5, 17, 99, 3, 42, 8, 61]
GREEDY = {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    model = tiny_llama(folder)
    runtime = Runtime(model_path=str(folder), skip_tokenizer_init=True, enable_return_hidden_states=True,
                      enable_priority_scheduling=True, max_running_requests=1, max_queued_requests=1,
                      chunked_prefill_size=4, max_total_tokens=8192,
                      log_file=os.path.join(str(folder), "server.log"))
    yield runtime, model
    runtime.shutdown()


def test_generate_returns_hidden_states_matching_transformers(tiny):
    runtime, model = tiny
    body = {"input_ids": PROMPT, "sampling_params": GREEDY, "return_hidden_states": True}
    out = generate(runtime.url, body)
    hidden = out["meta_info"]["hidden_states"]
    assert len(hidden) == GREEDY["max_new_tokens"] and len(hidden[0]) == len(PROMPT)
    torch.testing.assert_close(flatten(hidden), reference(model, PROMPT, out["output_ids"]),
                               rtol=1e-4, atol=1e-4)
    events = sse_events(requests.post(runtime.url + "/generate", json=dict(body, stream=True),
                                      stream=True, timeout=120))
    assert events[-1] == "[DONE]"
    sizes = [len(e["meta_info"]["hidden_states"]) for e in events[:-1]]
    assert sizes == sorted(sizes) and sizes[-1] == GREEDY["max_new_tokens"]
    assert events[-2]["meta_info"]["hidden_states"] == hidden
    last = generate(runtime.url, dict(body, return_hidden_states="last"))
    torch.testing.assert_close(torch.tensor(last["meta_info"]["hidden_states"]),
                               reference(model, PROMPT, out["output_ids"])[-1], rtol=1e-4, atol=1e-4)
    wait_idle(runtime.url)


def test_hidden_states_refused_without_the_flag(server):
    res = requests.post(server.url + "/generate", timeout=60, json={
        "text": "Hi", "return_hidden_states": True, "sampling_params": {"max_new_tokens": 1}})
    assert res.status_code == 400, res.text
    err = res.json()["error"]
    assert err["param"] == "return_hidden_states" and "--enable-return-hidden-states" in err["message"]


def _post_into(url: str, body: dict, into: dict, key: str) -> threading.Thread:
    def run() -> None:
        into[key] = requests.post(url + "/generate", json=body, timeout=300)
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _until(check, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_full_queue_gives_way_to_higher_priority(tiny):
    url, res = tiny[0].url, {}
    long_run = {"input_ids": [1, 2, 3], "rid": "long", "priority": 0,
                "sampling_params": {"max_new_tokens": 4000, "ignore_eos": True}}
    threads = [_post_into(url, long_run, res, "long")]
    _until(lambda: server_state(url)["num_running_reqs"] == 1)
    threads.append(_post_into(url, {"input_ids": [4, 5], "priority": 0, "sampling_params": GREEDY},
                              res, "queued_low"))
    _until(lambda: server_state(url)["num_queue_reqs"] == 1)
    # 5 is above the queued request's 0 (it takes its place) but not by more than the
    # preemption threshold (10): the long request keeps running
    threads.append(_post_into(url, {"input_ids": [6, 7], "priority": 5, "sampling_params": GREEDY},
                              res, "high"))
    threads[1].join(timeout=60)
    assert res["queued_low"].status_code == 503, res["queued_low"].text
    assert "higher priority" in res["queued_low"].json()["error"]["message"]
    refused = requests.post(url + "/generate", timeout=60, json={
        "input_ids": [8], "priority": 5, "sampling_params": GREEDY})
    assert refused.status_code == 503 and "busy" in refused.json()["error"]["message"]
    assert "high" not in res  # still waiting behind the long request
    requests.post(url + "/abort_request", json={"rid": "long"}, timeout=60)
    for t in threads:
        t.join(timeout=120)
    assert res["high"].status_code == 200 and len(res["high"].json()["output_ids"]) == 4
    wait_idle(url)
