"""Many streaming clients at once, and clients that vanish mid-stream."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.server.conftest import generate, server_state, sse_events, wait_idle

PROMPTS = ["The first planet is", "Water boils at", "A haiku about rain:", "def add(a, b):",
           "The opposite of hot is", "Once upon a time", "Paris is the capital of",
           "Three primary colors are"]
PARAMS = {"temperature": 0, "max_new_tokens": 8}


def stream_text(url: str, prompt: str) -> tuple[str, list[int]]:
    with requests.post(url + "/generate", json={"text": prompt, "sampling_params": PARAMS,
                                                "stream": True}, stream=True, timeout=600) as res:
        assert res.status_code == 200, res.text
        events = sse_events(res)
    assert events[-1] == "[DONE]"
    return events[-2]["text"], events[-2]["output_ids"]


def test_64_concurrent_streams_match_their_solo_runs(server):
    solo = {p: generate(server.url, {"text": p, "sampling_params": PARAMS}) for p in PROMPTS}
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(64)]
    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(lambda p: stream_text(server.url, p), prompts))
    for prompt, (text, ids) in zip(prompts, results):
        assert ids == solo[prompt]["output_ids"], prompt
        assert text == solo[prompt]["text"], prompt
    wait_idle(server.url)


def test_disconnect_mid_stream_frees_kv(server):
    wait_idle(server.url)
    body = {"text": "Tell me a very long story about dragons.", "stream": True,
            "sampling_params": {"max_new_tokens": 4000, "ignore_eos": True}}
    res = requests.post(server.url + "/generate", json=body, stream=True, timeout=300)
    lines = res.iter_lines()
    seen = 0
    for line in lines:
        if line.startswith(b"data:"):
            seen += 1
            last = json.loads(line[5:])
            if seen == 3:
                break
    assert last["meta_info"]["finish_reason"] is None
    busy = server_state(server.url)
    assert busy["num_running_reqs"] == 1
    assert busy["available_kv_tokens"] < busy["max_total_tokens"]  # the request holds KV
    res.close()  # the client goes away
    wait_idle(server.url, timeout_s=60)  # 4000 tokens would take minutes: it was aborted


def test_disconnect_during_openai_stream_frees_kv(server, model_name):
    wait_idle(server.url)
    body = {"model": model_name, "prompt": "A long list of numbers:", "max_tokens": 4000,
            "ignore_eos": True, "stream": True}
    res = requests.post(server.url + "/v1/completions", json=body, stream=True, timeout=300)
    data_lines = (line for line in res.iter_lines() if line.startswith(b"data:"))
    for _ in range(3):  # past the prefill step: the request sits in the running batch
        assert json.loads(next(data_lines)[5:])["choices"][0]["finish_reason"] is None
    assert server_state(server.url)["num_running_reqs"] == 1
    res.close()
    wait_idle(server.url, timeout_s=60)
