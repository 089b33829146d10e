"""`sgl router --pd-disaggregation` against fake workers (tests/router/fake_worker.py): both
halves of a request, the bootstrap fields, whose answer comes back, and failures of either half.
The real servers are in tests/server/test_pd.py and test_pd_faults.py."""
from __future__ import annotations

import argparse
import threading
import time
from typing import Any

import pytest

from sgl.runtime.router.config import RouterArgs
from tests.router.conftest import RouterThread
from tests.router.fake_worker import FakeWorker
from tests.server.conftest import sse_events


@pytest.fixture
def pd(fake_workers: Any) -> Any:
    prefill, decode = fake_workers(2)
    router = RouterThread(pd_disaggregation=True, prefill=[(prefill.url, 9123)], decode=[decode.url])
    yield router, prefill, decode
    router.stop()


def body_of(worker: FakeWorker) -> dict[str, Any]:
    assert len(worker.records) == 1, worker.records
    return worker.records[0]["body"]


@pytest.mark.parametrize("path", ["/generate", "/v1/chat/completions"])
def test_both_halves_get_the_bootstrap_fields_and_the_decode_answers(pd: Any, path: str) -> None:
    router, prefill, decode = pd
    body = {"text": "hi", "model": "m", "messages": [{"role": "user", "content": "hi"}]}
    res = router.post(path, body)
    assert res.status_code == 200 and res.json()["worker"] == decode.url
    assert res.headers["x-sgl-worker"] == decode.url
    assert res.headers["x-sgl-prefill-worker"] == prefill.url
    to_prefill, to_decode = body_of(prefill), body_of(decode)
    assert to_prefill["bootstrap_host"] == to_decode["bootstrap_host"] == "127.0.0.1"
    assert to_prefill["bootstrap_port"] == to_decode["bootstrap_port"] == 9123
    assert to_prefill["bootstrap_room"] == to_decode["bootstrap_room"]
    assert to_prefill["stream"] is False  # the prefill's answer only says the KV left


def test_a_stream_comes_from_the_decode_and_rooms_differ(pd: Any) -> None:
    router, prefill, decode = pd
    res = router.post("/generate", {"text": "hi", "stream": True, "num_chunks": 4}, stream=True)
    events = sse_events(res)
    assert [e["text"] for e in events[:-1]] == [f"chunk {i}" for i in range(4)]
    assert body_of(decode)["stream"] is True and body_of(prefill)["stream"] is False
    router.post("/generate", {"text": "again"})
    assert prefill.records[0]["body"]["bootstrap_room"] != prefill.records[1]["body"]["bootstrap_room"]


def test_a_prefill_that_dies_ends_the_request_with_502_at_once(pd: Any) -> None:
    router, prefill, decode = pd
    threading.Timer(0.3, prefill.kill).start()
    t0 = time.monotonic()
    res = router.post("/generate", {"text": "hi", "delay": 5})
    assert res.status_code == 502 and prefill.url in res.json()["error"]["message"]
    assert time.monotonic() - t0 < 4  # not after the decode's 5 s
    assert router.get("/get_server_info").json()["counters"]["failed_total"] == 1


def test_a_decode_that_dies_ends_the_request_with_502(pd: Any) -> None:
    router, prefill, decode = pd
    threading.Timer(0.3, decode.kill).start()
    res = router.post("/generate", {"text": "hi", "delay": 2})
    assert res.status_code == 502 and decode.url in res.json()["error"]["message"]


def test_a_prefill_refusing_the_request_answers_for_it(pd: Any) -> None:
    router, prefill, decode = pd
    prefill.generate_status, decode.extra_delay_s = 400, 5.0
    t0 = time.monotonic()
    res = router.post("/generate", {"text": "hi"})
    assert res.status_code == 400 and time.monotonic() - t0 < 4  # the decode half is dropped


def test_no_healthy_prefill_is_503(fake_workers: Any) -> None:
    prefill, decode = fake_workers(2)
    prefill.is_healthy = False
    router = RouterThread(pd_disaggregation=True, prefill=[(prefill.url, 9000)], decode=[decode.url])
    try:
        res = router.post("/generate", {"text": "hi"})
        assert res.status_code == 503 and "prefill" in res.json()["error"]["message"]
        assert decode.records == []
    finally:
        router.stop()


def test_cli_flags_as_sglang_names_them() -> None:
    parser = argparse.ArgumentParser()
    RouterArgs.add_cli_args(parser)
    args = RouterArgs.from_cli_args(parser.parse_args([
        "--pd-disaggregation", "--prefill", "http://a:1", "9000", "--prefill", "b:2",
        "--decode", "c:3", "--decode", "http://d:4", "--prefill-policy", "round_robin"]))
    assert args.prefill == [("http://a:1", 9000), ("http://b:2", 8998)]
    assert args.decode == ["http://c:3", "http://d:4"] and args.prefill_policy == "round_robin"
    for bad, word in ((dict(pd_disaggregation=True, decode=["x:1"]), "--prefill"),
                      (dict(prefill=[("x:1", 1)], decode=["y:1"]), "--pd-disaggregation"),
                      (dict(pd_disaggregation=True, prefill=[("x:1", "port")], decode=["y:1"]), "port"),
                      (dict(pd_disaggregation=True, prefill=["x:1"], decode=["x:1"]), "twice")):
        with pytest.raises(ValueError, match=word):
            RouterArgs(**bad)
