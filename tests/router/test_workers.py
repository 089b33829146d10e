"""Workers coming and going: /add_worker, /remove_worker, health checks, killed workers whose
requests are resent, and the routes the router answers itself."""
from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.router.conftest import free_port, wait_until


def test_add_and_remove_workers_at_runtime(fake_workers, start_router) -> None:
    w0, w1 = fake_workers(2)
    router = start_router(worker_urls=[w0.url], load_balance_method="round_robin")
    assert {router.post("/generate", {"text": "a"}).json()["worker"] for _ in range(3)} == {w0.url}
    res = requests.post(router.url + "/add_worker", params={"url": w1.url}, timeout=30)
    assert res.status_code == 200, res.text
    assert router.get("/list_workers").json()["urls"] == [w0.url, w1.url]
    served = [router.post("/generate", {"text": "b"}).json()["worker"] for _ in range(4)]
    assert sorted(served) == sorted([w0.url, w1.url] * 2)
    assert requests.post(router.url + "/remove_worker", params={"url": w0.url}).status_code == 200
    assert router.get("/list_workers").json()["urls"] == [w1.url]
    assert {router.post("/generate", {"text": "c"}).json()["worker"] for _ in range(3)} == {w1.url}


def test_worker_management_errors(fake_workers, start_router) -> None:
    (w0,) = fake_workers(1)
    router = start_router(worker_urls=[w0.url], worker_startup_timeout_secs=0.5)
    add = lambda url: requests.post(router.url + "/add_worker", params={"url": url}, timeout=30)
    assert add(w0.url).status_code == 400  # already there
    dead = f"http://127.0.0.1:{free_port()}"
    res = add(dead)
    assert res.status_code == 400 and "/health" in res.json()["error"]["message"]
    assert dead not in router.get("/list_workers").json()["urls"]
    assert requests.post(router.url + "/remove_worker", params={"url": dead}).status_code == 404
    assert requests.post(router.url + "/add_worker").status_code == 400


def test_failing_health_checks_take_a_worker_out_and_back(fake_workers, start_router) -> None:
    w0, w1 = fake_workers(2)
    router = start_router(worker_urls=[w0.url, w1.url], load_balance_method="round_robin",
                          health_check_interval_secs=0.1, health_failure_threshold=2,
                          health_success_threshold=2)
    w0.is_healthy = False
    wait_until(lambda: not router.router.pool.get(w0.url).is_healthy, 10, "w0 out")
    assert {router.post("/generate", {"text": "x"}).json()["worker"] for _ in range(4)} == {w1.url}
    assert router.get("/get_server_info").json()["workers"][0]["healthy"] is False
    w0.is_healthy = True
    wait_until(lambda: router.router.pool.get(w0.url).is_healthy, 10, "w0 back")
    served = {router.post("/generate", {"text": "y"}).json()["worker"] for _ in range(4)}
    assert served == {w0.url, w1.url}


@pytest.mark.parametrize("client_kind", ["auto", "requests"])
def test_killed_worker_loses_no_request(worker_processes, start_router, client_kind) -> None:
    (url0, proc0), (url1, _) = worker_processes(2)
    router = start_router(worker_urls=[url0, url1], load_balance_method="round_robin",
                          client_kind=client_kind, health_check_interval_secs=60)
    n = 24
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(router.post, "/generate", {"text": f"q{i}", "delay": 3.0})
                   for i in range(n)]
        wait_until(lambda: sum(w.load for w in router.router.pool.all()) == n, 10, "in flight")
        proc0.send_signal(signal.SIGKILL)  # half the requests are on it
        results = [f.result() for f in futures]
    assert [r.status_code for r in results] == [200] * n
    assert {r.json()["worker"] for r in results} == {url1}
    assert len(requests.get(url1 + "/records").json()) == n  # 12 own + 12 resent
    info = router.get("/get_server_info").json()
    assert info["counters"]["retries_total"] == n // 2
    assert info["workers"][0]["healthy"] is False and info["workers"][0]["num_failures"] == n // 2
    assert all(w["load"] == 0 for w in info["workers"])


@pytest.mark.parametrize("client_kind", ["auto", "requests"])
def test_killed_worker_before_the_first_chunk_of_a_stream(fake_workers, start_router,
                                                          client_kind) -> None:
    w0, w1 = fake_workers(2)
    router = start_router(worker_urls=[w0.url, w1.url], load_balance_method="round_robin",
                          client_kind=client_kind)
    body = {"text": "s", "stream": True, "delay": 3.0, "num_chunks": 3}
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(router.post, "/generate", body) for _ in range(4)]
        wait_until(lambda: len(w0.texts()) == 2 and len(w1.texts()) == 2, 10, "arrivals")
        w0.kill()
        results = [f.result() for f in futures]
    for res in results:
        assert res.status_code == 200 and res.headers["x-sgl-worker"] == w1.url
        assert res.text.count("data: ") == 4 and res.text.endswith("data: [DONE]\n\n")


@pytest.mark.parametrize("client_kind", ["auto", "requests"])
def test_stream_passes_through_with_either_client(fake_workers, start_router,
                                                  client_kind) -> None:
    (w0,) = fake_workers(1)
    router = start_router(worker_urls=[w0.url], client_kind=client_kind)
    body = {"text": "s", "stream": True, "num_chunks": 3, "chunk_delay": 1.0}
    t0 = time.monotonic()
    with requests.post(router.url + "/generate", json=body, stream=True, timeout=30) as res:
        first_at = None
        for line in res.iter_lines():
            first_at = first_at or time.monotonic() - t0
    assert first_at < 1.0 < time.monotonic() - t0  # the first chunk is not held back


def test_worker_dying_mid_stream_ends_the_stream_with_an_error_event(fake_workers,
                                                                     start_router) -> None:
    (w0,) = fake_workers(1)
    router = start_router(worker_urls=[w0.url])
    body = {"text": "s", "stream": True, "num_chunks": 5, "chunk_delay": 0.5}
    with requests.post(router.url + "/generate", json=body, stream=True, timeout=30) as res:
        lines = res.iter_lines()
        assert b"chunk 0" in next(lines)
        w0.kill()
        rest = [line for line in lines if line]
    assert len(rest) == 1 and b'"error"' in rest[0]
    assert router.router.pool.all()[0].load == 0


def test_unavailable_status_is_resent_elsewhere(fake_workers, start_router) -> None:
    w0, w1 = fake_workers(2)
    router = start_router(worker_urls=[w0.url, w1.url], load_balance_method="round_robin")
    w0.generate_status = 503
    results = [router.post("/generate", {"text": f"q{i}"}) for i in range(4)]
    assert {(r.status_code, r.json()["worker"]) for r in results} == {(200, w1.url)}
    assert router.router.pool.get(w0.url).is_healthy  # a 503 is not a dead worker
    w1.generate_status = 503
    res = router.post("/generate", {"text": "both down"})
    assert res.status_code == 503 and res.json() == {"error": "unavailable"}  # passed through


def test_no_healthy_worker_is_a_503(start_router) -> None:
    router = start_router(worker_urls=[f"http://127.0.0.1:{free_port()}"],
                          worker_startup_timeout_secs=0.2)
    assert router.get("/health").status_code == 503
    res = router.post("/generate", {"text": "hi"})
    assert res.status_code == 503 and "no healthy worker" in res.json()["error"]["message"]


def test_router_routes(fake_workers, start_router) -> None:
    w0, w1 = fake_workers(2)
    router = start_router(worker_urls=[w0.url, w1.url], load_balance_method="cache_aware")
    assert router.get("/health").status_code == 200
    assert router.get("/v1/models").json()["data"][0]["id"] == "fake-model"
    router.post("/generate", {"text": "remember me " * 10})
    info = router.get("/get_server_info").json()
    assert info["policy"]["name"] == "cache_aware" and sum(info["policy"]["tree_sizes"].values())
    assert [w["url"] for w in info["workers"]] == [w0.url, w1.url]
    assert router.post("/flush_cache").status_code == 200
    assert (w0.num_flushes, w1.num_flushes) == (1, 1)
    assert router.get("/get_server_info").json()["policy"]["tree_sizes"] == {}
    text = router.get("/metrics").text
    assert f'sgl_router_worker_requests_total{{worker="{w0.url}"}}' in text
    assert "sgl_router_requests_total 2" in text  # /v1/models and /generate


def test_authorization_header_reaches_the_worker(fake_workers, start_router) -> None:
    (w0,) = fake_workers(1)
    router = start_router(worker_urls=[w0.url])
    router.post("/generate", {"text": "x"}, headers={"Authorization": "Bearer k"})
    assert w0.records[0]["auth"] == "Bearer k"


def test_client_giving_up_cancels_the_request_on_the_worker(fake_workers, start_router) -> None:
    (w0,) = fake_workers(1)
    router = start_router(worker_urls=[w0.url])
    with pytest.raises(requests.Timeout):
        router.post("/generate", {"text": "slow", "delay": 5.0}, timeout=0.5)
    # released long before the worker would have answered
    wait_until(lambda: router.router.pool.all()[0].load == 0, 2.0, "load released")
    assert router.post("/generate", {"text": "next"}).status_code == 200
