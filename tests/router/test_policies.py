"""Each policy's choice on hand-built worker states (no HTTP)."""
from __future__ import annotations

from typing import Any

import pytest

from sgl.runtime.router.config import RouterArgs
from sgl.runtime.router.policies import POLICIES, make_policy
from sgl.runtime.router.request_text import request_text
from sgl.runtime.router.worker import Worker

SYSTEM_A = "You are a pirate. Answer every question in pirate speech, briefly. " * 3
SYSTEM_B = "You are a lawyer. Answer every question with a legal disclaimer first. " * 3


def _workers(*loads: int) -> list[Worker]:
    return [Worker(f"http://w{i}", is_healthy=True, load=load) for i, load in enumerate(loads)]


def _policy(name: str, **kw: Any):
    return make_policy(RouterArgs(load_balance_method=name, **kw))


def _route(policy: Any, workers: list[Worker], text: str) -> Worker:
    """Select and count the request as routed (as the proxy does), not in flight."""
    worker = policy.select(workers, text)
    worker.num_requests += 1
    return worker


def test_registry_holds_the_three_policies() -> None:
    assert set(POLICIES) == {"round_robin", "shortest_queue", "cache_aware"}
    with pytest.raises(ValueError, match="load_balance_method"):
        RouterArgs(load_balance_method="random")


def test_round_robin_alternates_regardless_of_load() -> None:
    policy, workers = _policy("round_robin"), _workers(5, 0, 0)
    assert [_route(policy, workers, "x").url for _ in range(6)] == [
        "http://w0", "http://w1", "http://w2"] * 2


def test_shortest_queue_picks_fewest_in_flight_then_spreads_ties() -> None:
    policy = _policy("shortest_queue")
    workers = _workers(3, 1, 2)
    assert policy.select(workers, "") is workers[1]
    idle = _workers(0, 0)
    assert [_route(policy, idle, "").url for _ in range(4)] == ["http://w0", "http://w1"] * 2


def test_cache_aware_keeps_a_shared_prefix_on_one_worker_and_spreads_new_ones() -> None:
    policy, workers = _policy("cache_aware"), _workers(0, 0)
    first_a = _route(policy, workers, SYSTEM_A + "Q: where is the gold?")
    first_b = _route(policy, workers, SYSTEM_B + "Q: can I park here?")
    assert first_a is not first_b  # a new prefix goes where the tree is smaller
    for q in ("what ship?", "how old are you?", "why?"):
        assert _route(policy, workers, SYSTEM_A + "Q: " + q) is first_a
        assert _route(policy, workers, SYSTEM_B + "Q: " + q) is first_b


def test_cache_aware_sticks_even_when_the_holder_is_busier_within_thresholds() -> None:
    policy, workers = _policy("cache_aware"), _workers(0, 0)
    holder = _route(policy, workers, SYSTEM_A + "Q1")
    holder.load = 20  # unbalanced by 20 <= --balance-abs-threshold 32: still cache first
    assert policy.select(workers, SYSTEM_A + "Q2") is holder


def test_cache_aware_sends_a_new_prefix_to_the_smallest_tree() -> None:
    policy, workers = _policy("cache_aware", cache_threshold=0.9), _workers(0, 0)
    holder = _route(policy, workers, SYSTEM_A)
    other = next(w for w in workers if w is not holder)
    other.load = 5  # busier (within the balance thresholds), but its tree is empty
    # matches len(SYSTEM_A) of a twice-as-long text: 0.5 <= 0.9, a new prefix
    assert policy.select(workers, SYSTEM_A + SYSTEM_B) is other
    policy.reset()  # equal (empty) trees: the least busy
    assert policy.select(workers, SYSTEM_B) is holder


def test_cache_aware_falls_back_to_shortest_queue_when_unbalanced() -> None:
    policy = _policy("cache_aware", balance_abs_threshold=4, balance_rel_threshold=1.5)
    workers = _workers(0, 0)
    holder = _route(policy, workers, SYSTEM_A + "Q1")
    other = next(w for w in workers if w is not holder)
    holder.num_waiting, other.num_waiting = 5, 2  # diff 3 <= 4: balanced
    assert policy.select(workers, SYSTEM_A + "Q2") is holder
    holder.num_waiting, other.num_waiting = 7, 2  # diff 5 > 4 and 7 > 2 * 1.5: unbalanced
    assert policy.select(workers, SYSTEM_A + "Q3") is other
    holder.num_waiting, other.num_waiting = 7, 5  # diff 2: balanced again; prefix on both now
    assert policy.select(workers, SYSTEM_A + "Q4") is other  # the less loaded holder
    assert policy.view()["decisions"] == {"cache": 2, "new_prefix": 1, "imbalanced": 1}


def test_cache_aware_does_not_split_a_prefix_over_requests_already_decoding() -> None:
    """Balance counts waiting requests (queued or prefilling), not all in flight: a holder
    busy decoding keeps its prefix's requests; one with a backlog of prefills does not."""
    policy = _policy("cache_aware")  # SGLang's thresholds: abs 32, rel 1.0001
    workers = _workers(0, 0)
    holder = _route(policy, workers, SYSTEM_A + "Q1")
    other = next(w for w in workers if w is not holder)
    holder.load, holder.num_waiting = 50, 2  # 48 of its 50 are streaming tokens back
    assert policy.select(workers, SYSTEM_A + "Q2") is holder
    holder.num_waiting = 40
    assert policy.select(workers, SYSTEM_A + "Q3") is other


def test_cache_aware_ignores_workers_out_of_rotation_and_removed() -> None:
    policy, workers = _policy("cache_aware"), _workers(0, 0, 0)
    holder = _route(policy, workers, SYSTEM_A + "Q1")
    rest = [w for w in workers if w is not holder]
    assert policy.select(rest, SYSTEM_A + "Q2") in rest
    policy.remove_worker(holder.url)
    assert policy.tree.size(holder.url) == 0


def test_cache_aware_eviction_forgets_old_prefixes() -> None:
    policy = _policy("cache_aware", max_tree_size=len(SYSTEM_B) + 10)
    workers = _workers(0, 0)
    holder = _route(policy, workers, SYSTEM_A + "Q1")
    holder.num_requests = 0  # a fresh prefix should come here again once A is evicted
    assert _route(policy, [holder], SYSTEM_B + "Q1") is holder
    policy.maintain()
    assert policy.tree.prefix_match(SYSTEM_A, {holder.url})[0] < len(SYSTEM_A) * 0.5
    assert policy.tree.prefix_match(SYSTEM_B, {holder.url})[0] == len(SYSTEM_B)


@pytest.mark.parametrize("path,body,text", [
    ("/generate", {"text": "hello"}, "hello"),
    ("/generate", {"text": ["first", "second"]}, "first"),
    ("/generate", {"input_ids": [1, 22, 333]}, "1 22 333"),
    ("/v1/completions", {"prompt": "p"}, "p"),
    ("/v1/chat/completions", {"messages": [
        {"role": "system", "content": "sys. "},
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]}]},
     "sys. hi"),
    ("/v1/chat/completions", {"messages": "bad"}, ""),
    ("/generate", ["not", "a dict"], ""),
])
def test_request_text(path: str, body: Any, text: str) -> None:
    assert request_text(path, body) == text
