"""API keys, and shutdown: no process outlives the server (tiny dummy-weight servers)."""
from __future__ import annotations

import glob
import os
import signal
import tempfile
import time

import pytest
import requests

from sgl.runtime.config import ServerArgs
from sgl.runtime.server.launch import ipc_dir_prefix
from sgl.runtime.server.runtime import _alive, _descendants, free_port, to_cli_args
from tests.server.conftest import sse_events, start_tiny

KEY = "sk-test-123"
IDS_BODY = {"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 2}}
PROTECTED = [("GET", "/health_generate", None), ("GET", "/get_model_info", None),
             ("GET", "/get_server_info", None), ("POST", "/flush_cache", None),
             ("POST", "/generate", IDS_BODY), ("POST", "/abort_request", {"rid": "x"}),
             ("GET", "/v1/models", None),
             ("POST", "/v1/completions", {"model": "default", "prompt": [1, 2]}),
             ("POST", "/v1/chat/completions", {"model": "default", "messages": []})]


@pytest.fixture(scope="module")
def keyed(tiny_model_dir, tmp_path_factory):
    runtime = start_tiny(tiny_model_dir, tmp_path_factory.mktemp("keyed"), api_key=KEY)
    yield runtime
    runtime.shutdown()


@pytest.mark.parametrize("method,route,body", PROTECTED, ids=[r for _, r, _ in PROTECTED])
@pytest.mark.parametrize("auth", [None, "Bearer wrong", KEY, f"Basic {KEY}"])
def test_routes_need_the_api_key(keyed, method, route, body, auth):
    headers = {"Authorization": auth} if auth else {}
    res = requests.request(method, keyed.url + route, json=body, headers=headers, timeout=60)
    assert res.status_code == 401, res.text
    err = res.json()["error"]
    assert err["type"] == "authentication_error" and "API key" in err["message"]


def test_right_key_opens_every_route_and_health_needs_none(keyed):
    assert requests.get(keyed.url + "/health", timeout=10).status_code == 200
    auth = {"Authorization": f"Bearer {KEY}"}
    res = requests.post(keyed.url + "/generate", json=IDS_BODY, headers=auth, timeout=60)
    assert res.status_code == 200 and len(res.json()["output_ids"]) == 2
    info = requests.get(keyed.url + "/get_server_info", headers=auth, timeout=60).json()
    assert info["api_key"] == "<hidden>"


def test_sigterm_stops_every_process(keyed):
    children = _descendants(keyed.pid)
    assert len(children) >= 2  # scheduler and detokenizer (and multiprocessing's helpers)
    keyed.process.send_signal(signal.SIGTERM)
    assert keyed.process.wait(30) == 0
    _assert_all_gone(children, 15)


def test_children_follow_a_killed_server(tiny_model_dir, tmp_path):
    started = time.time()
    runtime = start_tiny(tiny_model_dir, tmp_path)
    children = _descendants(runtime.pid)
    assert children
    os.kill(runtime.pid, signal.SIGKILL)  # no chance to clean up: children must notice alone
    runtime.process.wait(10)
    _assert_all_gone(children, 15)
    leftovers = os.path.join(tempfile.gettempdir(), ipc_dir_prefix(runtime.pid) + "*")
    # the detokenizer removed the socket folder on its way out (pids wrap: a folder of this
    # name from before the server started is an earlier killed server's)
    assert not [d for d in glob.glob(leftovers) if os.stat(d).st_mtime >= started - 1]
    runtime.shutdown()


def test_stream_interval_then_shutdown_leaves_no_child(tiny_model_dir, tmp_path):
    runtime = start_tiny(tiny_model_dir, tmp_path, stream_interval=4)
    body = {"input_ids": [3, 4], "stream": True,
            "sampling_params": {"max_new_tokens": 10, "ignore_eos": True}}
    res = requests.post(runtime.url + "/generate", json=body, stream=True, timeout=60)
    events = sse_events(res)[:-1]
    counts = [len(e["output_ids"]) for e in events]
    assert counts[0] >= 1 and counts[-1] == 10 and len(counts) <= 4
    assert all(b - a >= 4 for a, b in zip(counts, counts[1:-1]))  # only the finish comes sooner
    pids = [runtime.pid, *_descendants(runtime.pid)]
    runtime.shutdown()
    _assert_all_gone(pids, 5)
    runtime.shutdown()  # idempotent


def test_cli_args_round_trip():
    args = ServerArgs(port=1234, api_key="k", enable_metrics=True, cuda_graph_bs=[1, 2])
    assert to_cli_args(args) == ["--cuda-graph-bs", "1", "2", "--port", "1234", "--api-key", "k",
                                 "--enable-metrics"]


def _assert_all_gone(pids: list[int], timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)], "processes outlived the server"


def test_free_ports_are_never_handed_out_twice():
    """Servers started one after another (or from threads) before any binds: a port the kernel
    offers again after its probe socket closed would start two servers on one port (seen in CI:
    the second sim worker of test_cache_aware_sim failed to bind)."""
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)

