"""SGLang's native routes on a live server with the bundled model."""
from __future__ import annotations

import re
import threading
import time

import requests

from tests.server.conftest import generate, server_state, sse_events, wait_idle

GREEDY = {"temperature": 0, "max_new_tokens": 8}


def test_health_and_model_info(server):
    assert requests.get(server.url + "/health", timeout=10).status_code == 200
    assert requests.get(server.url + "/health_generate", timeout=60).status_code == 200
    info = requests.get(server.url + "/get_model_info", timeout=10).json()
    assert info["is_generation"] is True
    assert info["model_path"].endswith(".gguf") and info["tokenizer_path"] == info["model_path"]


def test_generate_single(server):
    out = generate(server.url, {"text": "The capital of France is",
                                "sampling_params": dict(GREEDY, ignore_eos=True)})
    meta = out["meta_info"]
    assert out["text"] and len(out["output_ids"]) == 8
    assert meta["completion_tokens"] == 8 and meta["prompt_tokens"] > 0
    assert meta["finish_reason"] == {"type": "length", "length": 8}


def test_generate_batch_with_per_prompt_params(server):
    two, five = (dict(GREEDY, max_new_tokens=n, ignore_eos=True) for n in (2, 5))
    out = generate(server.url, {"text": ["One, two,", "Red, green,"],
                                "sampling_params": [two, five]})
    assert isinstance(out, list) and len(out) == 2
    assert [len(o["output_ids"]) for o in out] == [2, 5]
    alone = generate(server.url, {"text": "Red, green,", "sampling_params": five})
    assert out[1]["text"] == alone["text"]


def test_generate_from_input_ids_matches_text(server):
    by_text = generate(server.url, {"text": "Hello there", "sampling_params": GREEDY,
                                    "return_logprob": True, "logprob_start_len": 0})
    ids = [t for _, t, _ in by_text["meta_info"]["input_token_logprobs"]]
    by_ids = generate(server.url, {"input_ids": ids, "sampling_params": GREEDY})
    assert by_ids["output_ids"] == by_text["output_ids"] and by_ids["text"] == by_text["text"]


def test_stream_equals_non_stream(server):
    body = {"text": "Write a haiku about the sea.",
            "sampling_params": dict(GREEDY, max_new_tokens=12)}
    plain = generate(server.url, body)
    res = requests.post(server.url + "/generate", json=dict(body, stream=True), stream=True,
                        timeout=300)
    assert res.headers["content-type"].startswith("text/event-stream")
    events = sse_events(res)
    assert events[-1] == "[DONE]" and len(events) >= 3
    chunks = events[:-1]
    for before, after in zip(chunks, chunks[1:]):  # cumulative text and ids
        assert after["text"].startswith(before["text"])
        assert after["output_ids"][:len(before["output_ids"])] == before["output_ids"]
    assert chunks[-1]["text"] == plain["text"] and chunks[-1]["output_ids"] == plain["output_ids"]
    assert chunks[-1]["meta_info"]["finish_reason"] is not None


def test_batch_stream_carries_index(server):
    body = {"text": ["Alpha", "Beta"], "sampling_params": dict(GREEDY, max_new_tokens=3),
            "stream": True}
    res = requests.post(server.url + "/generate", json=body, stream=True, timeout=300)
    events = sse_events(res)
    assert {e["index"] for e in events[:-1]} == {0, 1}


def test_logprobs_in_native_shape(server):
    out = generate(server.url, {"text": "1, 2, 3,",
                                "sampling_params": dict(GREEDY, max_new_tokens=3),
                                "return_logprob": True, "top_logprobs_num": 2,
                                "return_text_in_logprobs": True})
    meta = out["meta_info"]
    assert [t for _, t, _ in meta["output_token_logprobs"]] == out["output_ids"]
    assert all(lp <= 0 for lp, _, _ in meta["output_token_logprobs"])
    assert all(len(top) == 2 for top in meta["output_top_logprobs"])
    assert "".join(text for _, _, text in meta["output_token_logprobs"]) == out["text"]


def test_repeated_prefix_is_cached_and_flush_drops_it(server):
    prefix = "You are a helpful assistant. " * 8
    generate(server.url, {"text": prefix + "Question one?", "sampling_params": GREEDY})
    second = generate(server.url, {"text": prefix + "Question two?", "sampling_params": GREEDY})
    assert second["meta_info"]["cached_tokens"] > 40
    assert requests.post(server.url + "/flush_cache", timeout=60).status_code == 200
    third = generate(server.url, {"text": prefix + "Question two?", "sampling_params": GREEDY})
    assert third["meta_info"]["cached_tokens"] == 0
    assert third["text"] == second["text"]


def test_abort_request_by_rid(server):
    rid = "abort-me-please"
    body = {"text": "Count forever:", "rid": rid, "stream": True,
            "sampling_params": {"max_new_tokens": 4000, "ignore_eos": True}}
    res = requests.post(server.url + "/generate", json=body, stream=True, timeout=300)
    lines = res.iter_lines()
    next(line for line in lines if line.startswith(b"data:"))  # it is running
    res = requests.post(server.url + "/abort_request", json={"rid": rid}, timeout=30)
    assert res.status_code == 200
    rest = sse_events(lines)
    assert rest[-1] == "[DONE]"
    assert rest[-2]["meta_info"]["finish_reason"]["type"] == "abort"
    assert rest[-2]["meta_info"]["completion_tokens"] < 4000


def test_server_info_reports_kv_state(server):
    state = server_state(server.url)
    assert state["max_total_tokens"] == 8192 and state["context_length"] > 0
    assert 0 < state["available_kv_tokens"] <= state["max_total_tokens"]
    assert state["internal_states"][0]["num_running_reqs"] == state["num_running_reqs"]
    assert state["api_key"] is None and "version" in state


def test_metrics_prometheus_text(server):
    generate(server.url, {"text": "metrics please", "sampling_params": GREEDY})
    text = requests.get(server.url + "/metrics", timeout=30).text
    assert "# TYPE sglang:time_to_first_token_seconds histogram" in text
    for name in ("sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage",
                 "sglang:cache_hit_rate", "sglang:gen_throughput"):
        assert re.search(rf"^{name}{{model_name=\".*\"}} [0-9.e+-]+$", text, re.MULTILINE), name
    for hist in ("time_to_first_token", "inter_token_latency", "e2e_request_latency"):
        count = re.search(rf"^sglang:{hist}_seconds_count{{.*}} (\d+)$", text, re.MULTILINE)
        assert count and int(count.group(1)) > 0, hist
    e2e = "sglang:e2e_request_latency_seconds"
    inf = re.search(rf'^{e2e}_bucket{{.*le="\+Inf"}} (\d+)$', text, re.MULTILINE)
    total = re.search(rf"^{e2e}_count{{.*}} (\d+)$", text, re.MULTILINE)
    assert inf.group(1) == total.group(1)


def test_logs_like_sglang(server):
    generate(server.url, {"text": "log me", "sampling_params": GREEDY})
    deadline = time.time() + 10
    while time.time() < deadline:
        log = server.log_path.read_text()
        if "Finish: rid=" in log:
            break
        time.sleep(0.2)
    assert re.search(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d TP0\] Prefill batch, #new-seq: \d+", log)
    assert "Receive: rid=" in log and "Finish: rid=" in log


def test_non_streamed_request_of_a_vanished_client_is_aborted(server):
    body = {"text": "Tell a long story:",
            "sampling_params": {"max_new_tokens": 4000, "ignore_eos": True}}
    try:
        requests.post(server.url + "/generate", json=body, timeout=2)
    except requests.Timeout:
        pass
    wait_idle(server.url)


def test_concurrent_requests_share_the_server(server):
    # Two clients at once: both finish, neither sees the other's text.
    outs = {}

    def run(key, prompt):
        outs[key] = generate(server.url, {"text": prompt, "sampling_params": GREEDY})["text"]

    prompts = ["Cats are", "Dogs are"]
    threads = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate(prompts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outs[0] == generate(server.url, {"text": "Cats are", "sampling_params": GREEDY})["text"]
    assert outs[1] == generate(server.url, {"text": "Dogs are", "sampling_params": GREEDY})["text"]
