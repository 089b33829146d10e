"""Scheduler unit tests on a fake runner: CPU only, milliseconds each."""
from __future__ import annotations

import random

import pytest

from sgl.runtime.config import ServerArgs
from sgl.runtime.io_struct import TokenizedGenerateReq
from sgl.runtime.sampling.params import SamplingParams
from sgl.runtime.scheduler.scheduler import Scheduler
from tests.runtime.fake_runner import FakeRunner, fake_logprob, reference_generate


def make(policy: str = "fcfs", disable_radix_cache: bool = False, overlap: bool = False,
         **runner_kw) -> tuple[Scheduler, FakeRunner]:
    runner = FakeRunner(**runner_kw)
    args = ServerArgs(schedule_policy=policy, disable_radix_cache=disable_radix_cache, random_seed=1)
    sched = Scheduler(args, runner, tokenizer=None, eos_token_ids=[])
    sched.overlap = overlap  # on by default only on GPUs; the logic is the same here
    return sched, runner


def submit(s: Scheduler, rid: str, prompt: list[int], max_new: int, **kw) -> None:
    params = SamplingParams(max_new_tokens=max_new, temperature=0)
    s.add_request(TokenizedGenerateReq(rid, prompt, params, **kw))


def run_all(s: Scheduler, max_steps: int = 10_000) -> dict[str, dict]:
    results: dict[str, dict] = {}
    for _ in range(max_steps):
        if not s.has_work:
            break
        for out in s.step():
            r = results.setdefault(out.rid, {"ids": [], "out": None, "in_lp": None, "lp": []})
            r["ids"] += out.new_token_ids
            r["lp"] += out.output_logprobs
            r["out"] = out
            if out.input_logprobs is not None:
                r["in_lp"] = out.input_logprobs
    assert not s.has_work, "scheduler did not drain"
    s.check_pool_invariant()
    s.tree.check_integrity()
    return results


def prompts(n: int, seed: int = 0, shared: int = 20) -> list[list[int]]:
    rng = random.Random(seed)
    base = [rng.randrange(97) for _ in range(shared)]
    return [base[: rng.randrange(shared + 1)] + [rng.randrange(97) for _ in range(rng.randrange(1, 30))]
            for _ in range(n)]


def test_single_request_matches_reference():
    s, _ = make()
    submit(s, "a", [1, 2, 3], 10)
    res = run_all(s)
    assert res["a"]["ids"] == reference_generate([1, 2, 3], 10)
    assert res["a"]["out"].finished_reason == {"type": "length", "length": 10}


@pytest.mark.parametrize("policy", ["fcfs", "lpm", "dfs-weight", "random"])
@pytest.mark.parametrize("overlap", [False, True])
def test_concurrent_requests_equal_alone(policy, overlap):
    s, _ = make(policy, overlap=overlap)
    ps = prompts(40)
    for i, p in enumerate(ps):
        submit(s, str(i), p, 12 + i % 5)  # finishing at different steps
    res = run_all(s)
    for i, p in enumerate(ps):
        assert res[str(i)]["ids"] == reference_generate(p, 12 + i % 5)
    assert (s.stats.num_overlapped > 0) == overlap


def test_overlap_chains_steady_decode_and_stops_for_arrivals():
    s, runner = make(overlap=True)
    submit(s, "a", [1, 2, 3], 30)
    for _ in range(10):
        s.step()
    assert s.inflight is not None and s.stats.num_overlapped >= 8
    submit(s, "b", [4, 5, 6], 10)  # an arrival: the chain stops so that b is admitted
    res = run_all(s)
    assert res["b"]["ids"] == reference_generate([4, 5, 6], 10)
    assert res["b"]["out"].finished_reason == {"type": "length", "length": 10}


@pytest.mark.parametrize("mixed", [False, True])
def test_prompt_steps_run_prompts_only_unless_mixed(mixed):
    """Default (SGLang's): an arrival gets a step of its own while the decoding request waits;
    with enable_mixed_chunk the two share the step. Outputs are the same either way."""
    runner = FakeRunner(chunked_prefill_size=8)
    s = Scheduler(ServerArgs(random_seed=1, enable_mixed_chunk=mixed), runner, eos_token_ids=[])
    steps, plan = [], s.planner.plan

    def spy(running, waiting):
        p = plan(running, waiting)
        steps.append([(r.rid, n) for r, n in zip(p.reqs, p.num_new)])
        return p
    s.planner.plan = spy
    submit(s, "a", [1, 2, 3], 12)
    early = [t for _ in range(3) for out in s.step() for t in out.new_token_ids]
    submit(s, "b", list(range(20)), 5)  # a 20-token prompt: three chunks of at most 8
    res = run_all(s)
    assert early + res["a"]["ids"] == reference_generate([1, 2, 3], 12)
    assert res["b"]["ids"] == reference_generate(list(range(20)), 5)
    prompt_steps = [st for st in steps if ("b", 1) not in st and any(r == "b" for r, _ in st)]
    assert [n for st in prompt_steps for r, n in st if r == "b"] == [8, 8, 4]
    if mixed:
        assert all(("a", 1) in st for st in prompt_steps)
    else:
        assert all(len(st) == 1 for st in prompt_steps)
        assert len(steps) == 3 + 3 + 9  # a's 12 tokens and b's 3 chunks, none shared


def test_prefix_reuse_reports_cached_tokens():
    s, runner = make()
    submit(s, "first", list(range(30)), 4)
    run_all(s)
    submit(s, "second", list(range(30)) + [5, 6], 4)
    res = run_all(s)
    assert res["second"]["out"].cached_tokens == 30
    assert res["second"]["ids"] == reference_generate(list(range(30)) + [5, 6], 4)


def test_disabled_radix_cache_reuses_nothing():
    s, _ = make(disable_radix_cache=True)
    submit(s, "first", list(range(30)), 4)
    run_all(s)
    submit(s, "second", list(range(30)) + [5], 4)
    res = run_all(s)
    assert res["second"]["out"].cached_tokens == 0
    assert s.tree.total_size() == 0


def test_tiny_chunked_prefill():
    s, runner = make(chunked_prefill_size=4)
    ps = prompts(6, seed=3)
    for i, p in enumerate(ps):
        submit(s, str(i), p, 8)
    res = run_all(s)
    for i, p in enumerate(ps):
        assert res[str(i)]["ids"] == reference_generate(p, 8)
    assert max(runner.batch_sizes) >= 2


@pytest.mark.parametrize("overlap", [False, True])
def test_retraction_with_tiny_pool_keeps_outputs(overlap):
    s, _ = make(max_total_tokens=120, chunked_prefill_size=32, overlap=overlap)
    ps = prompts(10, seed=5, shared=10)
    for i, p in enumerate(ps):
        submit(s, str(i), p, 30)
    retracted = 0
    res: dict[str, list[int]] = {}
    while s.has_work:
        before = len(s.waiting)
        outs = s.step()
        retracted += max(len(s.waiting) - before, 0)
        for o in outs:
            res.setdefault(o.rid, []).extend(o.new_token_ids)
    assert retracted > 0, "the pool was meant to force retraction"
    s.check_pool_invariant()
    for i, p in enumerate(ps):
        assert res[str(i)] == reference_generate(p, 30)


def test_max_running_requests_is_respected():
    s, runner = make(max_running_requests=3)
    for i, p in enumerate(prompts(10)):
        submit(s, str(i), p, 5)
    run_all(s)
    assert max(runner.batch_sizes) <= 3


@pytest.mark.parametrize("overlap", [False, True])
def test_abort_frees_kv(overlap):
    s, _ = make(overlap=overlap)
    submit(s, "a", list(range(20)), 50)
    submit(s, "b", list(range(10)), 50)
    early = [t for _ in range(3) for o in s.step() if o.rid == "b" for t in o.new_token_ids]
    outs = s.abort("a")
    assert outs[0].finished_reason["type"] == "abort"
    held = s.allocator.size - s.allocator.available_size() - s.tree.evictable_size() - s.tree.protected_size()
    b = s.running[0]  # only b holds KV now (its prompt shared in the tree, locked); a's went back
    assert b.cache_protected_len == 10 and s.tree.protected_size() == 10
    assert held == b.num_computed - b.cache_protected_len
    res = run_all(s)  # checks free + evictable + locked == capacity once b is done
    assert early + res["b"]["ids"] == reference_generate(list(range(10)), 50)


@pytest.mark.parametrize("overlap", [False, True])
def test_stop_token_finishes(overlap):
    s, _ = make(overlap=overlap)
    ref = reference_generate([4, 5], 20)
    stop = ref[5]
    params = SamplingParams(max_new_tokens=20, temperature=0, stop_token_ids=[stop])
    s.add_request(TokenizedGenerateReq("a", [4, 5], params))
    res = run_all(s)
    assert res["a"]["ids"] == ref[: ref.index(stop) + 1]
    assert res["a"]["out"].finished_reason == {"type": "stop", "matched": stop}


def test_prefill_only_and_prompt_logprobs():
    s, _ = make(chunked_prefill_size=4)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    s.add_request(TokenizedGenerateReq("a", prompt, SamplingParams(max_new_tokens=0), return_logprob=True,
                                       logprob_start_len=0))
    res = run_all(s)
    assert res["a"]["ids"] == []
    expected = [None] + [fake_logprob(prompt[: q + 1], prompt[q + 1]) for q in range(len(prompt) - 1)]
    assert res["a"]["in_lp"] == expected


def test_prompt_logprobs_with_cached_prefix_are_recomputed():
    s, _ = make()
    prompt = list(range(12))
    submit(s, "warm", prompt, 1)
    run_all(s)
    s.add_request(TokenizedGenerateReq("a", prompt, SamplingParams(max_new_tokens=2, temperature=0),
                                       return_logprob=True, logprob_start_len=3))
    res = run_all(s)
    expected = [fake_logprob(prompt[:q], prompt[q]) for q in range(3, 12)]
    assert res["a"]["in_lp"] == expected
    assert len(res["a"]["lp"]) == 2


def test_new_token_ratio_jumps_on_retraction_and_decays_while_decoding():
    """Admission reserves ratio x remaining max_new_tokens per running request: 0.7 at start,
    1.0 right after a retraction, then 0.001 less per decode step that got its KV (SGLang's
    schedule), never below 0.1."""
    s, _ = make(max_total_tokens=120, chunked_prefill_size=32)
    assert s.ratio.value == pytest.approx(0.7)
    for i, p in enumerate(prompts(10, seed=5, shared=10)):
        submit(s, str(i), p, 30)
    values = []
    while s.has_work:
        s.step()
        values.append((s.stats.num_retracted, s.ratio.value))
    first = next(i for i, (n, _) in enumerate(values) if n > 0)
    assert values[first][1] == 1.0
    after = [v for n, v in values[first:] if n == values[-1][0]]  # since the last retraction
    assert after[-1] < 1.0 and all(b <= a for a, b in zip(after, after[1:]))
    s.ratio.value = 0.1005
    for _ in range(3):
        s.ratio.decay()
    assert s.ratio.value == pytest.approx(0.1)


def test_prompt_chunks_count_as_prompt_tokens_in_the_hit_rate():
    """A prompt longer than a chunk runs over several steps; its later chunks (no admission in
    their step) are prompt work too: the step log counts every prompt token once, so the hit
    rate of an uncached long prompt is 0 and the decode step count excludes chunk steps."""
    s, _ = make(chunked_prefill_size=8)
    submit(s, "a", list(range(40)), 3)
    run_all(s)
    assert s.stats.total_prompt_tokens == 40 and s.stats.total_cached_tokens == 0
    assert s.stats.num_decode_steps == 2  # 5 prompt steps (the last samples the first token), 2 decodes
    submit(s, "b", list(range(40)) + [1, 2], 2)
    run_all(s)
    cached = s.stats.total_cached_tokens
    assert cached == 40 and s.stats.total_prompt_tokens == 82
    assert s.stats.cache_hit_rate() == pytest.approx(40 / 82)



def test_jump_forward_catch_up_is_its_own_step_and_not_prompt_tokens():
    """Output tokens a request must catch up on after a jump-forward re-spelled them run in a
    step of their own (the decoding requests keep their CUDA graph; measured faster on an H100),
    and are not counted as prompt tokens (the cache hit rate's denominator)."""
    s, _ = make()
    submit(s, "a", list(range(10)), 20)
    submit(s, "b", list(range(20, 30)), 20)
    for _ in range(4):
        s.step()
    a, b = s.running
    assert a.num_computed == a.seq_len - 1 and b.num_computed == b.seq_len - 1  # both decoding
    a.replace_output(a.output_ids + [5, 6, 7], len(a.output_ids))  # what a jump-forward does
    plan = s.planner.plan(s.running, s.waiting)
    assert plan.reqs == [a] and plan.num_new == [4] and plan.num_prompt_tokens == 0
    s.kv.free(plan.slots[0])  # this plan never runs
