"""Signals and process health (issue #23 item 7), on real `sgl serve` processes on loopback:
SIGTERM is honoured promptly at every stage of start-up; with requests in flight it drains, then
refuses with JSON errors; a hung scheduler (SIGSTOP) shows in /health and fails its requests."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import pytest
import requests

from sgl.runtime.server.launch import ipc_dir_prefix
from sgl.runtime.server.runtime import _alive, _descendants, free_port
from sgl.runtime.server.shutdown import DRAIN_S
from tests.server.conftest import sse_events, start_tiny

PROMPTLY_S = 8.0  # before: a loading scheduler ignored SIGTERM and was killed after 10 s


_LAUNCHED_AT: dict[int, float] = {}  # server pid -> when it was started (time.time())


def _launch(log_path: str, *args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(log_path, "wb")
    launched = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "sgl.launch_server", "--port", str(port),
                             "--log-level", "info", *args], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    _LAUNCHED_AT[proc.pid] = launched
    return proc, f"http://127.0.0.1:{port}"


def _wait_for_log(proc: subprocess.Popen, log_path: str, marker: bytes, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while marker not in open(log_path, "rb").read():
        assert proc.poll() is None and time.monotonic() < deadline, open(log_path, "rb").read()[-3000:]
        time.sleep(0.02)


def _assert_stops_promptly(proc: subprocess.Popen, children: list[int], timeout_s: float) -> float:
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the server ignored SIGTERM for {timeout_s} s")
    while any(_alive(p) for p in children) and time.monotonic() - start < timeout_s:
        time.sleep(0.05)
    took = time.monotonic() - start
    assert rc == 0 and not [p for p in children if _alive(p)], (rc, took)
    assert not _ipc_dirs_of(proc)
    return took


def _ipc_dirs_of(proc: subprocess.Popen) -> list[str]:
    """The server's socket folders left behind. Pids wrap (at 32768 here), so a folder of that
    name from before this server started belongs to an earlier server that was killed."""
    pattern = os.path.join(tempfile.gettempdir(), ipc_dir_prefix(proc.pid) + "*")
    return [d for d in glob.glob(pattern) if os.stat(d).st_mtime >= _LAUNCHED_AT[proc.pid] - 1]


@pytest.mark.parametrize("marker,tiny", [
    (b"Loading weights", False),  # the scheduler is reading the bundled model's weights
    (b"serving ", True),          # children ready; uvicorn not yet started
    (b"Application startup complete", True),  # warm-up request in flight
], ids=["model-load", "before-uvicorn", "warm-up"])
def test_sigterm_at_every_start_up_stage(marker, tiny, tiny_model_dir, tmp_path):
    log = str(tmp_path / "server.log")
    extra = ["--model-path", tiny_model_dir, "--load-format", "dummy", "--skip-tokenizer-init"] if tiny else []
    proc, url = _launch(log, *extra)
    _wait_for_log(proc, log, marker)
    children = _descendants(proc.pid)
    _assert_stops_promptly(proc, children, PROMPTLY_S)
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/health", timeout=5)
    assert b"The server is fired up" not in open(log, "rb").read() or tiny


@pytest.fixture
def slow_tiny(tiny_model_dir, tmp_path):
    """One request runs at a time, so requests queue behind long generations."""
    runtime = start_tiny(tiny_model_dir, tmp_path, max_running_requests=1, watchdog_timeout=2)
    yield runtime
    runtime.shutdown()


LONG = {"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 1800, "ignore_eos": True}}


def _post(url: str, body: dict, results: list, stream: bool = False) -> None:
    try:
        res = requests.post(url + "/generate", json=dict(body, stream=stream), stream=stream, timeout=120)
        ctype = res.headers.get("content-type", "")
        # A stream that fails before its first event is answered like a request that does not
        # stream (its error status and JSON body); one that fails later ends with an error event.
        results.append((res.status_code, ctype,
                        sse_events(res) if "text/event-stream" in ctype else res.text))
    except requests.RequestException as e:  # the test fails on these below
        results.append((None, "", repr(e)))


def _in_threads(*calls: Any) -> list[threading.Thread]:
    threads = [threading.Thread(target=fn, args=args) for fn, *args in calls]
    for t in threads:
        t.start()
    return threads


def test_sigterm_with_requests_in_flight_drains_then_refuses_with_json(slow_tiny):
    results: list = []
    threads = _in_threads(*[(_post, slow_tiny.url, LONG, results, i % 2 == 0) for i in range(4)])
    deadline = time.monotonic() + 60
    while slow_tiny.get_server_info()["num_queue_reqs"] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    children = _descendants(slow_tiny.pid)
    took = _assert_stops_promptly(slow_tiny.process, children, DRAIN_S + 10)
    for t in threads:
        t.join(30)
    assert len(results) == 4 and took >= DRAIN_S - 1  # the running one was given its drain time
    num_refused = 0
    for status, ctype, body in results:
        assert status is not None, body  # no reset connection
        assert "application/json" in ctype or "text/event-stream" in ctype, (status, ctype, body)
        if isinstance(body, list):  # a stream: ends with an error event or its finish, then [DONE]
            assert body[-1] == "[DONE]"
            last = body[-2]
            if "error" in last:
                assert last["error"]["code"] == 503 and "shutting down" in last["error"]["message"]
                num_refused += 1
            else:
                assert last["meta_info"]["finish_reason"]["type"] == "length"
        elif status == 503:
            err = json.loads(body)["error"]
            assert "shutting down" in err["message"] and err["code"] == "server_shutting_down"
            num_refused += 1
        else:
            assert status == 200 and len(json.loads(body)["output_ids"]) == 1800
    assert num_refused >= 2  # the queued ones could not finish within the drain
    log = open(slow_tiny.log_file, "rb").read()
    assert b"Traceback" not in log and b"Internal Server Error" not in log


def test_watchdog_sees_a_stopped_scheduler_and_fails_its_requests(slow_tiny):
    url = slow_tiny.url
    assert requests.get(url + "/health", timeout=10).status_code == 200
    pid = slow_tiny.get_server_info()["internal_states"][0]["pid"]
    results: list = []
    os.kill(pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        threads = _in_threads((_post, url, LONG, results), (_post, url, LONG, results, True))
        for t in threads:
            t.join(20)
        assert time.monotonic() - start < 10  # the watchdog's 2 s, not forever
        health = requests.get(url + "/health", timeout=10)
        assert health.status_code == 503 and "has not stepped" in health.json()["error"]["message"]
        assert requests.head(url + "/health", timeout=10).status_code == 503
        refused = requests.post(url + "/generate", json=LONG, timeout=10)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "scheduler_stalled"
    finally:
        os.kill(pid, signal.SIGCONT)
    assert len(results) == 2
    for status, ctype, body in results:  # nothing was streamed: both get the 503 and its body
        assert status == 503 and "application/json" in ctype, (status, ctype, body)
        err = json.loads(body)["error"]
        assert "has not stepped" in err["message"] and err["code"] == "scheduler_stalled"
    deadline = time.monotonic() + 20  # it steps again: healthy again, and serves
    while requests.get(url + "/health", timeout=10).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    body = {"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 3}}
    assert len(requests.post(url + "/generate", json=body, timeout=60).json()["output_ids"]) == 3
