"""Policies end to end: requests through a live router reach the fake workers it should pick."""
from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.router.conftest import wait_until
from tests.router.test_policies import SYSTEM_A, SYSTEM_B

SYSTEM_C = "You are a chef. Every answer must mention a recipe and a cooking time. " * 3


def test_round_robin_alternates(fake_workers, start_router) -> None:
    w0, w1 = fake_workers(2)
    router = start_router(worker_urls=[w0.url, w1.url], load_balance_method="round_robin")
    served = [router.post("/generate", {"text": f"q{i}"}).json()["worker"] for i in range(6)]
    assert served == [w0.url, w1.url] * 3
    assert w0.texts() == ["q0", "q2", "q4"] and w1.texts() == ["q1", "q3", "q5"]


def test_shortest_queue_avoids_the_worker_with_slow_requests(fake_workers, start_router) -> None:
    w0, w1 = fake_workers(2)
    router = start_router(worker_urls=[w0.url, w1.url], load_balance_method="shortest_queue")
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(router.post, "/generate", {"text": "slow", "delay": 3.0})
        wait_until(lambda: len(w0.texts()) == 1, 10, "the slow request on w0")
        quick = [router.post("/generate", {"text": f"q{i}"}).json()["worker"] for i in range(4)]
        assert quick == [w1.url] * 4  # w0 has one in flight, w1 none
        assert slow.result().status_code == 200
    assert router.post("/generate", {"text": "after"}).json()["worker"] == w0.url  # idle again


def test_cache_aware_groups_shared_prefixes(fake_workers, start_router) -> None:
    w0, w1 = fake_workers(2)
    router = start_router(worker_urls=[w0.url, w1.url], load_balance_method="cache_aware")
    prompts = [s + f"Question {i}: what now?" for s in (SYSTEM_A, SYSTEM_B) for i in range(6)]
    random.Random(0).shuffle(prompts)
    for p in prompts:
        assert router.post("/generate", {"text": p}).status_code == 200
    for w in (w0, w1):  # each worker saw exactly one of the two system prompts
        assert len({t[:40] for t in w.texts()}) == 1, w.texts()
    assert len(w0.texts()) == len(w1.texts()) == 6


def test_cache_aware_routes_chat_and_completions_by_their_text(fake_workers, start_router) -> None:
    w0, w1 = fake_workers(2)
    router = start_router(worker_urls=[w0.url, w1.url])  # cache_aware is the default
    first = router.post("/v1/completions", {"prompt": SYSTEM_A + "hello", "model": "m"})
    holder = first.headers["x-sgl-worker"]
    chat = {"model": "m", "messages": [{"role": "system", "content": SYSTEM_A},
                                       {"role": "user", "content": "hello again"}]}
    for _ in range(3):
        assert router.post("/v1/chat/completions", chat).headers["x-sgl-worker"] == holder
    other = router.post("/v1/completions", {"prompt": SYSTEM_B, "model": "m"})
    assert other.headers["x-sgl-worker"] != holder


def test_cache_aware_falls_back_to_shortest_queue_when_unbalanced(fake_workers,
                                                                  start_router) -> None:
    w0, w1 = fake_workers(2)
    router = start_router(worker_urls=[w0.url, w1.url], balance_abs_threshold=1,
                          balance_rel_threshold=1.0)
    pool = ThreadPoolExecutor(8)
    # same prefix, slow: pinned to one worker until its queue is 2 longer than the other's
    futures = []
    for i in range(4):
        futures.append(pool.submit(router.post, "/generate",
                                   {"text": SYSTEM_C + f"Q{i}", "delay": 3.0}))
        wait_until(lambda n=i + 1: len(w0.texts()) + len(w1.texts()) == n, 10, "arrival")
    workers = [f.result().json()["worker"] for f in futures]
    holder = workers[0]
    assert workers[:2] == [holder, holder]  # loads 0/0, then 1/0: balanced enough
    assert workers[2] != holder  # loads 2/0: diff 2 > 1 and 2 > 0 -> shortest queue
    # loads 2/1: balanced; both hold the prefix now, the less loaded one wins
    assert workers[3] == workers[2]
    pool.shutdown()


def test_streaming_passes_through_chunk_by_chunk(fake_workers, start_router) -> None:
    (w0,) = fake_workers(1)
    router = start_router(worker_urls=[w0.url])
    body = {"text": "stream me", "stream": True, "num_chunks": 4, "chunk_delay": 0.4}
    t0 = time.monotonic()
    with requests.post(router.url + "/generate", json=body, stream=True, timeout=30) as res:
        assert res.headers["content-type"].startswith("text/event-stream")
        events = []
        for line in res.iter_lines():
            if line:
                events.append((time.monotonic() - t0, line.decode()))
    texts = [e[1] for e in events]
    assert texts[-1] == "data: [DONE]" and len(texts) == 5
    assert [t for t in texts[:-1]] == [t for t in texts[:-1] if '"chunk' in t]
    # the first event arrived long before the worker wrote the last one (1.2 s of delays)
    assert events[0][0] < 0.8 and events[-1][0] - events[0][0] > 1.0
    assert router.router.pool.all()[0].load == 0  # the stream's end released the worker


def test_client_disconnect_mid_stream_releases_the_worker(fake_workers, start_router) -> None:
    (w0,) = fake_workers(1)
    router = start_router(worker_urls=[w0.url], load_balance_method="shortest_queue")
    body = {"text": "long", "stream": True, "num_chunks": 50, "chunk_delay": 0.1}
    res = requests.post(router.url + "/generate", json=body, stream=True, timeout=30)
    lines = res.iter_lines()
    assert next(lines).startswith(b"data:")
    time.sleep(0.3)
    worker = router.router.pool.all()[0]
    assert worker.load == 1
    assert worker.num_waiting == 0  # answering: no longer waiting for its first token
    res.close()
    wait_until(lambda: router.router.pool.all()[0].load == 0, 10, "load released")


def test_concurrent_requests_all_complete_and_loads_return_to_zero(fake_workers,
                                                                   start_router) -> None:
    workers = fake_workers(3)
    router = start_router(worker_urls=[w.url for w in workers],
                          load_balance_method="shortest_queue")
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: router.post("/generate", {"text": f"q{i}",
                                                                    "delay": 0.05}), range(48)))
    assert all(r.status_code == 200 for r in results)
    counts = sorted(len(w.texts()) for w in workers)
    assert sum(counts) == 48 and counts[0] >= 8  # shared out, not all on one
    assert all(w.load == 0 and w.num_waiting == 0 for w in router.router.pool.all())


def test_a_request_waits_until_its_first_byte(fake_workers, start_router) -> None:
    (w0,) = fake_workers(1)
    router = start_router(worker_urls=[w0.url], load_balance_method="shortest_queue")
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(router.post, "/generate", {"text": "slow", "delay": 1.0,
                                                      "stream": True})
        wait_until(lambda: len(w0.texts()) == 1, 10, "the request on w0")
        worker = router.router.pool.all()[0]
        assert (worker.load, worker.num_waiting) == (1, 1)
        assert slow.result().status_code == 200
    assert (worker.load, worker.num_waiting) == (0, 0)
