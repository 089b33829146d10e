"""Priority scheduling on the fake runner: admission by priority (FCFS within one, either
direction), requests without a priority last, preemption of running requests only past the
threshold (for a request slot or for KV room), and every output still the reference's."""
from __future__ import annotations

from sgl.runtime.config import ServerArgs
from sgl.runtime.io_struct import TokenizedGenerateReq
from sgl.runtime.sampling.params import SamplingParams
from sgl.runtime.scheduler.scheduler import Scheduler
from tests.runtime.fake_runner import FakeRunner, reference_generate


def make(runner_kw: dict | None = None, **args) -> Scheduler:
    runner = FakeRunner(**(runner_kw or {"max_running_requests": 1}))
    server_args = ServerArgs(random_seed=1, enable_priority_scheduling=True, **args)
    return Scheduler(server_args, runner, tokenizer=None, eos_token_ids=[])


def submit(s: Scheduler, rid: str, priority, max_new: int = 4, prompt=None) -> list[int]:
    prompt = prompt or [len(rid), 3, 5, hash(rid) % 90]
    s.add_request(TokenizedGenerateReq(rid, prompt, SamplingParams(max_new_tokens=max_new, temperature=0),
                                       priority=priority))
    return prompt


class Trace:
    """Steps a scheduler, recording the order in which requests produced their first token."""

    def __init__(self, s: Scheduler) -> None:
        self.s, self.firsts, self.finished, self.ids = s, [], [], {}

    def step(self) -> None:
        for out in self.s.step():
            if out.new_token_ids and out.rid not in self.ids:
                self.firsts.append(out.rid)
            self.ids.setdefault(out.rid, []).extend(out.new_token_ids)
            if out.finished_reason is not None:
                self.finished.append(out.rid)

    def run(self, prompts: dict[str, tuple[list[int], int]]) -> list[str]:
        """Run to the end; every output must be the reference's."""
        while self.s.has_work:
            self.step()
        for rid, (prompt, max_new) in prompts.items():
            assert self.ids[rid] == reference_generate(prompt, max_new), rid
        self.s.check_pool_invariant()
        return self.firsts


def test_higher_priority_first_fcfs_within_and_unset_last():
    s = make()
    t = Trace(s)
    reqs = {"running": (submit(s, "running", 0), 4)}
    t.step()  # "running" is admitted alone (one request slot)
    for rid, prio in [("b1", 1), ("none", None), ("c5", 5), ("d5", 5), ("e1", 1), ("f-3", -3)]:
        reqs[rid] = (submit(s, rid, prio), 4)
    assert t.run(reqs) == ["running", "c5", "d5", "b1", "e1", "f-3", "none"]
    assert s.stats.num_preempted == 0  # no gap above the threshold (10)


def test_low_values_first_flips_the_order():
    s = make(schedule_low_priority_values_first=True)
    t = Trace(s)
    reqs = {"running": (submit(s, "running", 0), 4)}
    t.step()
    for rid, prio in [("p9", 9), ("none", None), ("p2", 2), ("p5", 5)]:
        reqs[rid] = (submit(s, rid, prio), 4)
    assert t.run(reqs) == ["running", "p2", "p5", "p9", "none"]


def test_disabled_means_fcfs_whatever_the_priority():
    s = Scheduler(ServerArgs(random_seed=1), FakeRunner(max_running_requests=1), None, [])
    t = Trace(s)
    reqs = {"a": (submit(s, "a", 0), 4)}
    t.step()
    reqs.update({"b": (submit(s, "b", 1), 4), "c": (submit(s, "c", 100), 4)})
    assert t.run(reqs) == ["a", "b", "c"]


def test_preemption_for_a_slot_needs_more_than_the_threshold():
    s = make(priority_scheduling_preemption_threshold=10)
    t = Trace(s)
    reqs = {"low": (submit(s, "low", 0, max_new=40), 40)}
    for _ in range(3):
        t.step()
    reqs["p10"] = (submit(s, "p10", 10), 4)  # a gap of 10: not more than the threshold
    t.step()
    assert [r.rid for r in s.running] == ["low"]
    reqs["p11"] = (submit(s, "p11", 11), 4)  # 11: preempts "low"
    t.step()
    assert [r.rid for r in s.running] == ["p11"] and s.stats.num_preempted == 1
    assert t.run(reqs) == ["low", "p11", "p10"] and s.stats.num_preempted == 1
    assert t.finished == ["p11", "p10", "low"]  # the preempted request waits with its own priority


def test_preemption_frees_kv_room_for_a_long_prompt():
    s = make({"max_running_requests": 8, "max_total_tokens": 128, "chunked_prefill_size": 128})
    reqs = {f"low{i}": (submit(s, f"low{i}", 0, max_new=30, prompt=[i + 1] * 20), 30) for i in range(3)}
    t = Trace(s)
    for _ in range(4):
        t.step()
    assert len(s.running) == 3
    high = list(range(40, 100))  # 60 tokens: fits only once low requests leave
    reqs["high"] = (submit(s, "high", 50, max_new=4, prompt=high), 4)
    t.step()
    assert any(r.rid == "high" for r in s.running) and 1 <= s.stats.num_preempted < 3
    t.run(reqs)


def test_disable_priority_preemption():
    s = make(disable_priority_preemption=True)
    t = Trace(s)
    reqs = {"low": (submit(s, "low", 0, max_new=12), 12)}
    t.step()
    reqs["high"] = (submit(s, "high", 1000), 4)
    assert t.run(reqs) == ["low", "high"] and s.stats.num_preempted == 0
