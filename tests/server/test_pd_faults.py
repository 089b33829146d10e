"""Faults of prefill-decode disaggregation with real servers (tiny random-weight model, gloo):
a decode that waits too long for its KV, a prefill server that dies while the decode holds
pages for its request, a decode server that dies while the prefill serves it. Each fails only
that request, with an error naming the cause; both pools go back to idle; the survivors keep
serving. (Deaths in the middle of the bytes and transfers that run out of time are tested on
the links themselves: tests/runtime/test_kv_transfer.py.)"""
from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
import requests

from sgl.runtime.server.runtime import Runtime, _descendants, free_port
from tests.router.conftest import RouterThread
from tests.server.conftest import generate, server_state, start_tiny, wait_idle

PROMPT = {"input_ids": list(range(5, 45)), "sampling_params": {"max_new_tokens": 4, "temperature": 0}}


class Servers:
    def __init__(self, model_dir: str, logs: Any) -> None:
        self.ports = {"p1": free_port(), "p2": free_port()}
        flags = {"p1": dict(disaggregation_mode="prefill", disaggregation_bootstrap_port=self.ports["p1"]),
                 "p2": dict(disaggregation_mode="prefill", disaggregation_bootstrap_port=self.ports["p2"]),
                 "d1": dict(disaggregation_mode="decode"),
                 "d2": dict(disaggregation_mode="decode", disaggregation_waiting_timeout=6.0)}
        self.made: dict[str, Runtime] = {}

        def start(name: str) -> None:
            os.makedirs(logs / name, exist_ok=True)
            self.made[name] = start_tiny(model_dir, logs / name, **flags[name])
        threads = [threading.Thread(target=start, args=(name,)) for name in flags]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(self.made) == 4, f"a server did not start; see {logs}"

    def router(self, prefill: str, decode: str) -> RouterThread:
        return RouterThread(pd_disaggregation=True, decode=[self.made[decode].url],
                            prefill=[(self.made[prefill].url, self.ports[prefill])],
                            health_check_interval_secs=0.5)

    def signal(self, name: str, sig: int) -> None:
        """To the server's processes: its HTTP process and every child."""
        pid = self.made[name].pid
        for p in [pid, *_descendants(pid)]:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass

    def kill(self, name: str) -> None:
        self.signal(name, signal.SIGKILL)
        self.made.pop(name).shutdown()


@pytest.fixture(scope="module")
def servers(tiny_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    s = Servers(tiny_model_dir, tmp_path_factory.mktemp("pd-faults"))
    try:
        yield s
    finally:
        for runtime in s.made.values():
            runtime.shutdown()


def post_later(router: RouterThread, body: dict[str, Any]) -> Future:
    pool = ThreadPoolExecutor(1)
    future = pool.submit(requests.post, router.url + "/generate", json=body, timeout=300)
    pool.shutdown(wait=False)
    return future


def wait_pages_held(url: str, timeout_s: float = 60.0) -> None:
    """Until the server holds KV pages for a request (a decode: pages for the prompt's KV)."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = server_state(url)
        if state["available_kv_tokens"] < state["max_total_tokens"]:
            return
        assert time.monotonic() < deadline, f"no pages held: {state}"
        time.sleep(0.05)


def failure_message(res: requests.Response) -> str:
    """The error a failed request reached its caller with: an error status, or (today's
    /generate) an abort finish reason."""
    if res.status_code != 200:
        return res.json()["error"]["message"]
    reason = res.json()["meta_info"]["finish_reason"]
    assert reason["type"] == "abort", f"the request did not fail: {res.text}"
    return reason["message"]


def test_decode_times_out_waiting_then_both_serve(servers: Servers) -> None:
    router = servers.router("p2", "d2")
    try:
        want = generate(router.url, PROMPT)  # also pairs d2 with p2
        servers.signal("p2", signal.SIGSTOP)  # the prefill hangs
        try:
            pending = post_later(router, PROMPT)
            wait_pages_held(servers.made["d2"].url)
            t0 = time.monotonic()
            message = failure_message(pending.result(timeout=120))
            assert "timed out" in message and str(servers.ports["p2"]) in message, message
            assert time.monotonic() - t0 < 30
        finally:
            servers.signal("p2", signal.SIGCONT)
        for name in ("p2", "d2"):
            wait_idle(servers.made[name].url)
        assert generate(router.url, PROMPT)["output_ids"] == want["output_ids"]
    finally:
        router.stop()


def kill_mid_request(servers: Servers, prefill: str, decode: str, victim: str,
                     survivor_pair: tuple[str, str]) -> None:
    """Hold the prefill (SIGSTOP) once a request is under way and the decode holds its pages,
    kill `victim`, and check: the request fails naming it, the other server of the pair frees
    everything, and it serves again with `survivor_pair`."""
    router = servers.router(prefill, decode)
    try:
        want = generate(router.url, PROMPT)  # also pairs the two servers
        servers.signal(prefill, signal.SIGSTOP)
        pending = post_later(router, PROMPT)
        wait_pages_held(servers.made[decode].url)
        victim_url = servers.made[victim].url
        servers.kill(victim)
        if victim != prefill:
            servers.signal(prefill, signal.SIGCONT)
        res = pending.result(timeout=120)
        assert victim_url in failure_message(res) and res.status_code == 502
        wait_idle(servers.made[decode if victim == prefill else prefill].url)
    finally:
        router.stop()
    router = servers.router(*survivor_pair)
    try:
        assert generate(router.url, PROMPT)["output_ids"] == want["output_ids"]
    finally:
        router.stop()


def test_a_prefill_server_dying_fails_its_request_and_frees_the_decode(servers: Servers) -> None:
    kill_mid_request(servers, "p1", "d1", victim="p1", survivor_pair=("p2", "d1"))


def test_a_decode_server_dying_fails_its_request_and_frees_the_prefill(servers: Servers) -> None:
    kill_mid_request(servers, "p2", "d2", victim="d2", survivor_pair=("p2", "d1"))
