"""`--dp-size 2`: two scheduler replicas behind one front end. Greedy outputs do not depend on the
replica, requests are spread over both, an abort reaches the replica that holds the request,
control calls reach every replica, and shutdown leaves no process. The dispatcher's policies
are unit-tested without a server."""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch

from sgl.runtime.config import ServerArgs
from sgl.runtime.engine import Engine
from sgl.runtime.io_struct import AbortReq, TokenizedGenerateReq, TokenOutput
from sgl.runtime.sampling.params import SamplingParams
from sgl.runtime.server.data_parallel import (
    ReplicaDispatcher,
    merge_states,
    replica_args,
    replica_environment,
)
from sgl.runtime.server.runtime import Runtime, _alive, _descendants
from tests.server.conftest import generate, server_state, wait_idle

PROMPTS = ["The first planet is", "Water boils at", "A haiku about rain:", "def add(a, b):",
           "The opposite of hot is", "Once upon a time", "Paris is the capital of",
           "Three primary colors are"]
GREEDY = {"temperature": 0, "max_new_tokens": 8}
LONG = {"max_new_tokens": 4000, "ignore_eos": True}


@pytest.fixture(scope="module")
def dp2(tmp_path_factory):
    log = tmp_path_factory.mktemp("dp2") / "server.log"
    runtime = Runtime(dp_size=2, max_total_tokens=2048, enable_metrics=True, log_file=str(log),
                      log_level="info")
    yield runtime
    runtime.shutdown()


def replica_states(url: str) -> list[dict]:
    states = server_state(url)["internal_states"]
    assert [s["dp_rank"] for s in states] == [0, 1]
    return states


def received(url: str) -> list[int]:
    return [s["num_received_reqs"] for s in replica_states(url)]


def test_concurrent_greedy_outputs_match_one_replica_and_use_both(dp2, server):
    solo = generate(server.url, {"text": PROMPTS, "sampling_params": GREEDY})  # dp_size 1
    expected = dict(zip(PROMPTS, solo))
    before = received(dp2.url)
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        got = list(pool.map(lambda p: generate(dp2.url, {"text": p, "sampling_params": GREEDY}),
                            PROMPTS))
    for prompt, out in zip(PROMPTS, got):
        assert out["output_ids"] == expected[prompt]["output_ids"], prompt
        assert out["text"] == expected[prompt]["text"], prompt
    after = received(dp2.url)
    assert [a - b for a, b in zip(after, before)] == [4, 4]  # round_robin: each served half
    wait_idle(dp2.url)


def test_server_info_and_metrics_sum_the_replicas(dp2):
    info = wait_idle(dp2.url)
    states = info["internal_states"]
    assert info["dp_size"] == 2 and info["load_balance_method"] == "round_robin"
    assert [s["max_total_tokens"] for s in states] == [2048, 2048]
    for key in ("max_total_tokens", "available_kv_tokens", "num_received_reqs",
                "total_prompt_tokens", "total_generated_tokens"):
        assert info[key] == sum(s[key] for s in states), key
    metrics = requests.get(dp2.url + "/metrics", timeout=30).text
    assert 'sglang:max_total_num_tokens{model_name="' in metrics
    line = next(ln for ln in metrics.splitlines() if ln.startswith("sglang:max_total_num_tokens{"))
    assert float(line.rsplit(" ", 1)[1]) == 4096


def test_flush_cache_reaches_every_replica(dp2):
    wait_idle(dp2.url)
    with ThreadPoolExecutor(2) as pool:  # round_robin: one prompt cached on each replica
        list(pool.map(lambda p: generate(dp2.url, {"text": p, "sampling_params": GREEDY}),
                      PROMPTS[:2]))
    wait_idle(dp2.url)
    assert all(s["evictable_kv_tokens"] > 0 for s in replica_states(dp2.url))
    res = requests.post(dp2.url + "/flush_cache", timeout=30)
    assert res.status_code == 200, res.text
    assert [s["evictable_kv_tokens"] for s in replica_states(dp2.url)] == [0, 0]


def test_abort_and_disconnect_free_kv_on_the_replica_holding_the_request(dp2):
    wait_idle(dp2.url)
    first = _start_stream(dp2.url, "long-0")
    states = _wait(dp2.url, lambda ss: sum(s["num_running_reqs"] for s in ss) == 1)
    holder = next(i for i, s in enumerate(states) if s["num_running_reqs"])
    second = _start_stream(dp2.url, "long-1")  # round_robin: the other replica
    states = _wait(dp2.url, lambda ss: [s["num_running_reqs"] for s in ss] == [1, 1])
    assert all(s["available_kv_tokens"] < s["max_total_tokens"] for s in states)
    res = requests.post(dp2.url + "/abort_request", json={"rid": "long-1"}, timeout=30)
    assert res.status_code == 200
    assert _rest_of(second)[-1]["meta_info"]["finish_reason"]["type"] == "abort"
    states = _wait(dp2.url, lambda ss: ss[1 - holder]["locked_kv_tokens"] == 0)
    freed = states[1 - holder]
    assert freed["num_running_reqs"] == 0
    assert freed["available_kv_tokens"] == freed["max_total_tokens"]
    assert states[holder]["num_running_reqs"] == 1  # long-0 was not touched
    first.close()  # that client goes away: its replica frees the KV too
    wait_idle(dp2.url, timeout_s=60)  # 4000 tokens would take minutes: both were aborted


def test_shutdown_leaves_no_child_process(dp2):
    children = _descendants(dp2.pid)
    assert len(children) >= 3  # two schedulers and the detokenizer
    dp2.shutdown()
    deadline = time.time() + 15
    while any(_alive(p) for p in children) and time.time() < deadline:
        time.sleep(0.1)
    assert not [p for p in children if _alive(p)], "processes outlived the server"


def _start_stream(url: str, rid: str) -> requests.Response:
    body = {"text": "Tell me a very long story about dragons.", "stream": True, "rid": rid,
            "sampling_params": LONG}
    res = requests.post(url + "/generate", json=body, stream=True, timeout=300)
    assert res.status_code == 200, res.text
    return res


def _rest_of(res: requests.Response) -> list[dict]:
    events = [json.loads(line[5:]) for line in res.iter_lines() if line.startswith(b"data:")
              and line[5:].strip() != b"[DONE]"]
    res.close()
    return events


def _wait(url: str, ok, timeout_s: float = 60.0) -> list[dict]:
    deadline = time.time() + timeout_s
    while True:
        states = replica_states(url)
        if ok(states):
            return states
        assert time.time() < deadline, states
        time.sleep(0.1)


# -- the dispatcher alone --------------------------------------------------------------------

def _req(rid: str, ids: list[int]) -> TokenizedGenerateReq:
    return TokenizedGenerateReq(rid, ids, SamplingParams())


def _finished(rid: str) -> TokenOutput:
    return TokenOutput(rid, [], finished_reason={"type": "length", "length": 1})


def _dispatcher(method: str) -> tuple[ReplicaDispatcher, list[list]]:
    sent: list[list] = [[], [], []]
    return ReplicaDispatcher([box.append for box in sent], method), sent


def test_round_robin_places_in_turn_and_aborts_go_where_the_request_went():
    d, sent = _dispatcher("round_robin")
    for i in range(5):
        d.send(_req(f"r{i}", [i]))
    assert [[m.rid for m in box] for box in sent] == [["r0", "r3"], ["r1", "r4"], ["r2"]]
    d.send(AbortReq("r4"))
    assert sent[1][-1] == AbortReq("r4") and [len(box) for box in sent] == [2, 3, 1]
    d.on_outputs([_finished("r2")])
    d.send(AbortReq("r2"))  # finished already: nothing to abort anywhere
    d.send(AbortReq("never-sent"))
    assert [len(box) for box in sent] == [2, 3, 1]
    d.send(AbortReq(""))  # abort everything: every replica
    assert all(box[-1] == AbortReq("") for box in sent)


def test_shortest_queue_picks_the_replica_with_fewest_in_flight():
    d, sent = _dispatcher("shortest_queue")
    for i in range(3):
        d.send(_req(f"r{i}", [i]))
    assert d.num_in_flight == [1, 1, 1]
    d.on_outputs([_finished("r1"), TokenOutput("r0", [7])])  # r0 still runs
    d.send(_req("r3", [3]))
    assert sent[1][-1].rid == "r3" and d.num_in_flight == [1, 1, 1]
    d.on_outputs([_finished("r0"), _finished("r2")])
    d.send(_req("r4", [4]))
    d.send(_req("r5", [5]))
    assert {sent[0][-1].rid, sent[2][-1].rid} == {"r4", "r5"}
    assert d.num_dispatched == [2, 2, 2]


def test_pinned_prompts_keep_warm_up_and_copies_on_one_replica():
    d, sent = _dispatcher("round_robin")
    with d.pinned([[1, 2], [3]]):
        for rid, ids in [("warm-a", [1, 2]), ("warm-b", [3]), ("x-0", [1, 2]), ("x-1", [1, 2]),
                         ("y-0", [3]), ("other", [9])]:
            d.send(_req(rid, ids))
    where = {m.rid: i for i, box in enumerate(sent) for m in box}
    assert where["warm-a"] == where["x-0"] == where["x-1"] != where["warm-b"] == where["y-0"]
    assert where["other"] == 2  # unpinned prompts keep the round-robin turn
    d.send(_req("again-0", [1, 2]))  # the pin is gone after the block
    d.send(_req("again-1", [1, 2]))
    assert sent[0][-1].rid == "again-0" and sent[1][-1].rid == "again-1"


def test_merge_states_sums_counts_and_recomputes_ratios():
    a = {"dp_rank": 0, "num_running_reqs": 1, "max_total_tokens": 100, "token_usage": 0.5,
         "total_prompt_tokens": 10, "total_cached_tokens": 5, "cache_hit_rate": 0.5}
    b = dict(a, dp_rank=1, num_running_reqs=2, max_total_tokens=300, token_usage=0.1,
             total_prompt_tokens=30, total_cached_tokens=0, cache_hit_rate=0.0)
    merged = merge_states([a, b])
    assert "dp_rank" not in merged and merged["num_running_reqs"] == 3
    assert merged["max_total_tokens"] == 400
    assert merged["token_usage"] == pytest.approx((50 + 30) / 400)
    assert merged["cache_hit_rate"] == pytest.approx(5 / 40)
    assert merge_states([a]) == {k: v for k, v in a.items() if k != "dp_rank"}


def test_flags_are_validated_and_the_engine_points_to_the_server():
    with pytest.raises(ValueError, match="load_balance_method"):
        ServerArgs(load_balance_method="cache_aware")
    with pytest.raises(ValueError, match="dp_size"):
        ServerArgs(dp_size=0)
    with pytest.raises(ValueError, match="dp_size > 1 is for the server"):
        Engine(dp_size=2)


def test_each_replica_gets_its_own_gpus_or_share_of_cores(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    args = ServerArgs(dp_size=2, tp_size=2)
    with replica_environment(args, 1):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # only the children spawned inside see it
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7,8")
    with replica_environment(args, 1):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "6,7"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5,6,7,8"
    with pytest.raises(ValueError, match="needs 6 GPUs, 5 visible"):
        with replica_environment(ServerArgs(dp_size=3, tp_size=2), 0):
            pass
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with replica_environment(ServerArgs(dp_size=2, device="cpu"), 0):
        assert int(os.environ["OMP_NUM_THREADS"]) >= 1
    assert "OMP_NUM_THREADS" not in os.environ
    addr = replica_args(ServerArgs(dp_size=2, tp_size=2, dist_init_addr="10.0.0.1:5000"), 1)
    assert addr.dist_init_addr == "10.0.0.1:5001"
