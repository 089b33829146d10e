"""return_hidden_states in the scheduler, on the fake runner (whose "hidden state" at a position
is a function of the sequence read back through the request->token table): every position's row
arrives once and in order, whatever the cache, chunking, retraction or overlap did."""
from __future__ import annotations

import pytest

from sgl.runtime.io_struct import TokenizedGenerateReq
from sgl.runtime.sampling.params import SamplingParams
from tests.runtime.fake_runner import fake_hidden, reference_generate
from tests.runtime.test_scheduler import make, prompts


def submit(s, rid: str, prompt: list[int], max_new: int, mode=True) -> None:
    params = SamplingParams(max_new_tokens=max_new, temperature=0)
    s.add_request(TokenizedGenerateReq(rid, prompt, params, return_hidden_states=mode))


def run(s) -> dict[str, dict]:
    res: dict[str, dict] = {}
    while s.has_work:
        for out in s.step():
            r = res.setdefault(out.rid, {"ids": [], "rows": [], "num_outputs": 0})
            r["ids"] += out.new_token_ids
            r["rows"] += out.hidden_states.tolist() if out.hidden_states is not None else []
            r["num_outputs"] += 1
    s.check_pool_invariant()
    s.tree.check_integrity()
    return res


def expected_rows(prompt: list[int], output: list[int]) -> list[list[float]]:
    """Positions [0, seq_len - 1): the prompt's, then each output token fed back but the last."""
    seq = prompt + output
    return [fake_hidden(seq[:p + 1]) for p in range(len(seq) - 1)]


@pytest.mark.parametrize("runner_kw,overlap,max_new", [
    ({}, False, 10), ({}, True, 10), ({"chunked_prefill_size": 5}, False, 10),
    ({"max_total_tokens": 120, "chunked_prefill_size": 32}, False, 30),  # retraction
    ({"max_total_tokens": 120, "chunked_prefill_size": 32}, True, 30),
], ids=["plain", "overlap", "chunked", "retracting", "retracting-overlap"])
def test_every_position_once_in_order(runner_kw, overlap, max_new):
    s, _ = make(overlap=overlap, **runner_kw)
    ps = prompts(10, seed=5, shared=10)
    for i, p in enumerate(ps):
        submit(s, f"h{i}", p, max_new + i % 4)
    res = run(s)
    for i, p in enumerate(ps):
        out = reference_generate(p, max_new + i % 4)
        assert res[f"h{i}"]["ids"] == out
        assert res[f"h{i}"]["rows"] == expected_rows(p, out), f"h{i}"
    if "max_total_tokens" in runner_kw:
        assert s.stats.num_retracted > 0, "the pool was meant to force retraction"
    if overlap:
        assert s.stats.num_overlapped > 0


def test_cached_prefix_is_recomputed_for_its_hidden_states():
    s, runner = make()
    prompt = list(range(1, 41))
    submit(s, "warm", prompt, 4, mode=False)
    run(s)
    steps_before = runner.num_steps
    submit(s, "again", prompt, 4)
    submit(s, "last", prompt + [7], 4, mode="last")
    res = run(s)
    out = reference_generate(prompt, 4)
    assert res["again"]["rows"] == expected_rows(prompt, out)
    # "last" needs no recomputation: the cache served the prompt, the newest position is the answer
    last_out = reference_generate(prompt + [7], 4)
    assert res["last"]["rows"][-1] == fake_hidden(prompt + [7] + last_out[:-1])
    assert runner.num_steps > steps_before


def test_requests_not_asking_return_nothing_and_share_the_batch():
    s, _ = make()
    ps = prompts(6, seed=5)
    for i, p in enumerate(ps):
        submit(s, f"r{i}", p, 6, mode=bool(i % 2))
    res = run(s)
    for i, p in enumerate(ps):
        rows = res[f"r{i}"]["rows"]
        assert rows == (expected_rows(p, reference_generate(p, 6)) if i % 2 else [])
