"""What one request may cost a server, and what it may not do to others (issue #23): a body
limit, a per-request timeout, rids checked before anything runs, a request larger than the KV
pool, the API key from a file, HEAD /health, 405 with Allow, request bodies in /openapi.json."""
from __future__ import annotations

import threading
import time

import pytest
import requests

from tests.server.conftest import generate, server_state, sse_events, start_tiny, wait_idle

KEY = "sk-from-a-file"
AUTH = {"Authorization": f"Bearer {KEY}"}
BODY_LIMIT = 16384
LONG_RUN = {"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 1900, "ignore_eos": True}}


@pytest.fixture(scope="module")
def limited(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("limited")
    key_file = folder / "key"
    key_file.write_text(KEY + "\n")
    runtime = start_tiny(tiny_model_dir, folder, api_key_file=str(key_file),
                         max_request_body_bytes=BODY_LIMIT, request_timeout=1.5,
                         max_running_requests=1, max_queued_requests=1)
    yield runtime
    runtime.shutdown()


@pytest.fixture(scope="module")
def plain(tiny_model_dir, tmp_path_factory):
    runtime = start_tiny(tiny_model_dir, tmp_path_factory.mktemp("plain"), max_total_tokens=256)
    yield runtime
    runtime.shutdown()


def _post(url: str, body: dict, **kw) -> requests.Response:
    return requests.post(url + "/generate", json=body, headers=AUTH, timeout=120, **kw)


def test_api_key_from_a_file_is_not_on_the_command_line(limited):
    with open(f"/proc/{limited.pid}/cmdline", "rb") as f:
        assert KEY.encode() not in f.read()
    body = {"input_ids": [5, 6], "sampling_params": {"max_new_tokens": 2}}
    assert requests.post(limited.url + "/generate", json=body, timeout=60).status_code == 401
    assert len(_post(limited.url, body).json()["output_ids"]) == 2


def test_body_over_the_limit_is_413(limited):
    body = {"input_ids": [5] * (BODY_LIMIT // 2), "sampling_params": {"max_new_tokens": 1}}
    res = _post(limited.url, body)
    assert res.status_code == 413 and res.json()["error"]["param"] == "body", res.text
    chunks = (b'{"input_ids": [' + b"5, " * 1000 for _ in range(10))  # no Content-Length
    res = requests.post(limited.url + "/generate", data=chunks, headers=AUTH, timeout=60)
    assert res.status_code == 413, res.text
    body = {"input_ids": [5] * 100, "sampling_params": {"max_new_tokens": 1}}
    assert _post(limited.url, body).status_code == 200


def test_request_past_the_timeout_is_aborted(limited):
    t0 = time.monotonic()
    res = _post(limited.url, LONG_RUN)
    assert res.status_code == 504 and "request-timeout" in res.json()["error"]["message"]
    assert time.monotonic() - t0 < 10
    events = sse_events(_post(limited.url, dict(LONG_RUN, stream=True), stream=True))
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == 504
    wait_idle(limited.url, headers=AUTH)


def test_full_queue_sheds_load_with_503_and_retry_after(limited):
    threads = [threading.Thread(target=_post, args=(limited.url, LONG_RUN)) for _ in range(2)]
    for i, t in enumerate(threads):
        t.start()
        key = "num_running_reqs" if i == 0 else "num_queue_reqs"
        while server_state(limited.url, headers=AUTH)[key] == 0:
            time.sleep(0.02)
    res = _post(limited.url, {"input_ids": [5, 6], "sampling_params": {"max_new_tokens": 2}})
    assert res.status_code == 503 and res.headers["retry-after"] == "1", res.text
    assert res.json()["error"]["code"] == "server_busy"
    for t in threads:  # both end at the 1.5 s timeout
        t.join(30)
    wait_idle(limited.url, headers=AUTH)
    assert _post(limited.url, {"input_ids": [5], "sampling_params": {"max_new_tokens": 1}}).ok


def test_taken_rid_refuses_the_batch_before_sending_any(plain):
    out: dict = {}
    busy = threading.Thread(target=lambda: out.update(res=requests.post(
        plain.url + "/generate", json=dict(LONG_RUN, rid="busy"), timeout=120)))
    busy.start()
    while server_state(plain.url)["num_running_reqs"] == 0:
        time.sleep(0.05)
    batch = {"input_ids": [[5, 6], [7, 8]], "rid": ["fresh", "busy"],
             "sampling_params": {"max_new_tokens": 2}}
    bad = requests.post(plain.url + "/generate", json=batch, timeout=60)
    assert bad.status_code == 400 and "busy" in bad.json()["error"]["message"], bad.text
    assert server_state(plain.url)["num_running_reqs"] + server_state(plain.url)["num_queue_reqs"] <= 1
    requests.post(plain.url + "/abort_request", json={"rid": "busy"}, timeout=60)
    busy.join(60)
    wait_idle(plain.url)
    again = generate(plain.url, {"input_ids": [5, 6], "rid": "fresh",
                                 "sampling_params": {"max_new_tokens": 2}})
    assert again["meta_info"]["id"] == "fresh"


def test_request_larger_than_the_pool_does_not_wedge(plain):
    """200 prompt tokens + 100 new ones in a 256-token pool (the context holds 2,048): it
    ends with `length` where the pool ends, others keep running, and the pool comes back."""
    big = {"input_ids": [5] * 200, "sampling_params": {"max_new_tokens": 100, "ignore_eos": True}}
    small = {"input_ids": [7, 8, 9], "sampling_params": {"max_new_tokens": 3}}
    out: dict = {}
    worker = threading.Thread(target=lambda: out.update(res=requests.post(plain.url + "/generate", json=big, timeout=120)))
    worker.start()
    assert len(generate(plain.url, small)["output_ids"]) == 3
    worker.join(60)
    res = out["res"]
    assert res.status_code == 200, res.text
    meta = res.json()["meta_info"]
    assert meta["finish_reason"]["type"] == "length" and 0 < meta["completion_tokens"] < 256 - 200
    wait_idle(plain.url)
    assert requests.get(plain.url + "/health_generate", timeout=60).ok


def test_head_health_405_allow_and_openapi_bodies(limited):
    assert requests.head(limited.url + "/health", timeout=10).status_code == 200
    res = requests.get(limited.url + "/generate", headers=AUTH, timeout=10)
    assert res.status_code == 405 and res.headers["allow"] == "POST"
    doc = requests.get(limited.url + "/openapi.json", headers=AUTH, timeout=10).json()
    for route in ("/generate", "/v1/completions", "/v1/chat/completions"):
        body = doc["paths"][route]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"], route
