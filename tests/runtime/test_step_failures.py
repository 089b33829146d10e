"""A failed step never fails an unrelated request (issue #26), on the fake runner with faults
injected into chosen rows or steps: the others finish with the reference tokens, the failed
request ends with an error finish reason, and no KV leaks (run_all checks the pool)."""
from __future__ import annotations

import random

import pytest

from tests.runtime.fake_runner import Faults, reference_generate
from tests.runtime.test_scheduler import make, run_all, submit

BAD = 96  # a token id the healthy prompts never hold


def _prompts(n: int, seed: int, shared: int = 24) -> list[list[int]]:
    """Prompts sharing prefixes of a common stem, whose sequences (up to 100 new tokens) never
    hold BAD."""
    rng = random.Random(seed)
    stem = [rng.randrange(90) for _ in range(shared)]
    out: list[list[int]] = []
    while len(out) < n:
        p = stem[:rng.randrange(shared + 1)] + [rng.randrange(90) for _ in range(rng.randrange(2, 30))]
        if BAD not in reference_generate(p, 100):
            out.append(p)
    return out


def _check_healthy(res: dict, prompts: dict[str, list[int]], max_new: int) -> None:
    for rid, prompt in prompts.items():
        assert res[rid]["ids"] == reference_generate(prompt, max_new), rid
        assert res[rid]["out"].finished_reason["type"] == "length", rid


def _check_failed(res: dict, rid: str, words: str) -> None:
    reason = res[rid]["out"].finished_reason
    assert reason["type"] == "abort" and reason["status_code"] == 500, reason
    assert words in reason["message"], reason


@pytest.mark.parametrize("overlap", [False, True])
def test_poisoned_rows_fail_alone(overlap):
    """The runner reports rows it could not compute; their requests fail, the step's other
    requests keep its results, and the failed rows' KV (garbage) is never read or cached."""
    s, runner = make(overlap=overlap, faults=Faults(poison_token=BAD))
    healthy = {f"ok{i}": p for i, p in enumerate(_prompts(24, seed=1))}
    stem = healthy["ok0"][:10]
    for rid, prompt in healthy.items():
        submit(s, rid, prompt, 12)
    submit(s, "bad-prompt", stem + [BAD, 3, 4], 12)     # fails on its prompt step
    submit(s, "bad-later", stem + [5, 6], 40)           # fails once it samples BAD, if ever
    res = run_all(s)
    _check_healthy(res, healthy, 12)
    _check_failed(res, "bad-prompt", "injected row fault")
    later = reference_generate(stem + [5, 6], 40)
    if BAD in later:
        _check_failed(res, "bad-later", "injected row fault")
        assert res["bad-later"]["ids"] == later[:later.index(BAD)]
    assert s.recovery.num_failed_reqs >= 1 and s.recovery.num_failed_steps == 0


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("at_resolve", [False, True])
def test_out_of_memory_steps_are_retried_smaller(overlap, at_resolve):
    """Steps over the simulated memory (too many prompt tokens, too many decoding requests)
    are undone and rerun in parts: every request finishes with the reference tokens."""
    faults = Faults(oom_above_tokens=40, oom_above_reqs=6, at_resolve=at_resolve)
    s, _ = make(overlap=overlap, faults=faults, chunked_prefill_size=64)
    prompts = {str(i): p for i, p in enumerate(_prompts(20, seed=2))}
    for rid, prompt in prompts.items():
        submit(s, rid, prompt, 16)
    res = run_all(s)
    _check_healthy(res, prompts, 16)
    # one recovery undoes the failed step and any step chained behind it (overlap)
    assert 0 < s.recovery.num_failed_steps <= faults.num_raised
    assert s.recovery.num_failed_reqs == 0


def test_a_request_out_of_memory_even_alone_fails_clearly():
    faults = Faults(oom_token=BAD)
    s, _ = make(faults=faults)
    prompts = {str(i): p for i, p in enumerate(_prompts(10, seed=3))}
    for rid, prompt in prompts.items():
        submit(s, rid, prompt, 8)
    submit(s, "huge", [1, 2, 3] * 20 + [BAD], 8)
    res = run_all(s)
    _check_healthy(res, prompts, 8)
    _check_failed(res, "huge", "out of device memory even alone")
    # it was tried in smaller steps before failing
    assert faults.num_raised >= 2 and s.recovery.num_failed_reqs == 1


@pytest.mark.parametrize("overlap", [False, True])
def test_a_step_error_is_bisected_to_the_request_that_causes_it(overlap):
    """A request that breaks every step it is in (not memory) fails alone; the steps it shared
    are retried without it."""
    faults = Faults(crash_token=BAD)
    s, _ = make(overlap=overlap, faults=faults)
    prompts = {str(i): p for i, p in enumerate(_prompts(16, seed=4))}
    for rid, prompt in list(prompts.items())[:8]:
        submit(s, rid, prompt, 10)
    submit(s, "crasher", [7, 8, BAD, 9], 10)
    for rid, prompt in list(prompts.items())[8:]:
        submit(s, rid, prompt, 10)
    res = run_all(s)
    _check_healthy(res, prompts, 10)
    _check_failed(res, "crasher", "injected device error")
    assert s.recovery.num_failed_reqs == 1


def test_limits_relax_after_good_steps():
    faults = Faults(oom_above_reqs=4)
    s, _ = make(faults=faults, context_len=1024, max_total_tokens=4096)
    for i, p in enumerate(_prompts(8, seed=5)):
        submit(s, str(i), p, 30)
    run_all(s)
    assert faults.num_raised >= 1 and s.planner.caps.active
    faults.oom_above_reqs = None
    for i, p in enumerate(_prompts(8, seed=6)):
        submit(s, f"b{i}", p, 400)
    run_all(s)
    assert not s.planner.caps.active  # back to no limit once steps succeed


def test_a_prompt_larger_than_the_pool_fails_beside_a_request_that_finishes():
    """(A max_new_tokens past the pool is clipped at admission instead: issue #23.)"""
    s, _ = make(max_total_tokens=32)
    submit(s, "long", list(range(40)), 5)
    submit(s, "short", list(range(20, 25)), 5)
    res = run_all(s, max_steps=500)
    reason = res["long"]["out"].finished_reason
    assert reason["type"] == "abort" and reason["status_code"] == 400
    assert "more KV cache than the pool holds" in reason["message"]
    assert res["long"]["ids"] == []
    assert res["short"]["ids"] == reference_generate(list(range(20, 25)), 5)
