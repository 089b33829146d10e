"""Chooses what runs this step, in tokens: every running request catches up on its missing
tokens (one for a decoding request, a chunk for a prompt), then waiting requests are admitted
while the token budget, the request limit and the KV reserve allow. Retracts requests when
running ones cannot get KV. A waiting request that shares an uncached prefix with a prompt this
step computes is held back until that prompt is in the radix tree, so the prefix is computed
once (SGLang's in-batch prefix check)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from sgl.runtime.scheduler.kv_manager import KVManager
from sgl.runtime.scheduler.prefix_trie import PrefixTrie
from sgl.runtime.scheduler.priority import PriorityOrder
from sgl.runtime.scheduler.req import Req, ReqState

# A waiting request is held back when it shares a prefix of at least this many tokens with a
# prompt in flight, and the radix tree does not hold all of it yet (SGLang's threshold is 32 too).
# Shorter common prefixes (a chat template's first tokens) are cheaper to compute twice than to
# wait a step for.
IN_BATCH_PREFIX_MIN_SHARED = 32


@dataclass
class StepPlan:
    reqs: list[Req] = field(default_factory=list)
    num_new: list[int] = field(default_factory=list)        # tokens each request runs this step
    slots: list[torch.Tensor] = field(default_factory=list)  # their KV slots
    retracted: list[Req] = field(default_factory=list)
    preempted: list[Req] = field(default_factory=list)  # retracted for a higher-priority admission
    num_admitted: int = 0
    num_cached: int = 0          # prefix tokens reused by admissions
    num_prompt_tokens: int = 0   # tokens computed as prompt work (admissions and later chunks)

    def add(self, req: Req, n: int, slots: torch.Tensor, admitted: bool = False) -> None:
        """req runs n tokens in `slots` (call before the step: reads req.num_computed)."""
        start = req.num_computed
        self.num_prompt_tokens += n if admitted else max(min(start + n, req.prompt_len) - start, 0)
        self.reqs.append(req)
        self.num_new.append(n)
        self.slots.append(slots)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new)


class NewTokenRatio:
    """Expected share of each running request's remaining max_new_tokens that it will really
    use; admission reserves KV for that much. Starts at 0.7 (x conservativeness), decays by
    0.001 per decode step that got its KV without retracting, down to 0.1 (SGLang's scheme:
    (init - min) over 600 steps), and jumps to 1.0 after a retraction."""

    def __init__(self, conservativeness: float) -> None:
        self.init = min(0.7 * conservativeness, 1.0)
        self.floor = min(0.1 * conservativeness, 1.0)
        self.value = self.init

    def decay(self) -> None:
        self.value = max(self.value - 0.001, self.floor)

    def bump(self) -> None:
        self.value = 1.0


@dataclass
class StepCaps:
    """Temporary limits on a step's size after a step failed (recovery.py): at most `num_reqs`
    requests running and `num_tokens` prompt tokens per step; None: no limit."""
    num_reqs: Optional[int] = None
    num_tokens: Optional[int] = None

    @property
    def active(self) -> bool:
        return self.num_reqs is not None or self.num_tokens is not None


class Planner:
    def __init__(self, kv: KVManager, chunk_size: int, max_running: int, ratio: NewTokenRatio,
                 mixed: bool = False, priority: Optional[PriorityOrder] = None) -> None:
        self.kv, self.chunk_size, self.max_running, self.ratio = kv, chunk_size, max_running, ratio
        self.mixed, self.priority = mixed, priority
        self.caps = StepCaps()

    @property
    def token_budget(self) -> int:
        """Prompt tokens one step may compute."""
        cap = self.caps.num_tokens
        return self.chunk_size if cap is None else min(cap, self.chunk_size)

    @property
    def running_limit(self) -> int:
        cap = self.caps.num_reqs
        return self.max_running if cap is None else min(cap, self.max_running)

    def plan(self, running: list[Req], waiting: list[Req]) -> StepPlan:
        """`waiting` must already be in policy order. Mutates both lists: admitted requests move
        to running, retracted ones to the front of waiting."""
        plan = StepPlan()
        if not self.mixed and self._plan_prompts(running, waiting, plan):
            return plan
        budget = self._schedule_running(running, waiting, plan)
        if not plan.retracted and plan.reqs:
            self.ratio.decay()  # decoding got its KV: admission may reserve a little less
        if self.mixed:
            self._admit(running, waiting, plan, budget)
        return plan

    def _plan_prompts(self, running: list[Req], waiting: list[Req], plan: StepPlan) -> bool:
        """Unless mixing (--enable-mixed-chunk), a step with prompt work runs prompts only: the
        next chunk of running prompts, then admissions. The decoding requests sit it out, and the
        next step decodes them alone (under a CUDA graph), as SGLang schedules by default. False
        when there is no prompt work, or no KV for it (the full planner then retracts). Output
        tokens to catch up on after a jump-forward count as such work too: the decoding requests
        keep their CUDA graph while the jumpers catch up alone (on an H100, structured output's
        jump-forward gained 3.49x this way, 2.73x with the catch-up inside the decode step)."""
        prompts = [r for r in running if r.seq_len - r.num_computed > 1]
        if not prompts and not waiting:
            return False
        wants, budget = self._wants(prompts, self.token_budget)
        if wants and not self._add_all(wants, plan):
            return False
        self._admit(running, waiting, plan, budget)
        return bool(plan.reqs)

    def _schedule_running(self, running: list[Req], waiting: list[Req], plan: StepPlan) -> int:
        wants, budget = self._wants(running, self.token_budget)
        if self._add_all(wants, plan):  # the common case: one allocation for the whole batch
            return budget
        budget = self.token_budget  # short of KV: one request at a time, retracting as needed
        for req in list(running):
            if req not in running:  # retracted while making room for an earlier one
                continue
            got, budget = self._wants([req], budget)
            if not got:
                continue
            n = got[0][1]
            part = self._alloc_or_retract(n, req, running, waiting, plan)
            if part is not None:
                plan.add(req, n, part)
        return budget

    def _add_all(self, wants: list[tuple[Req, int]], plan: StepPlan) -> bool:
        """Give every (request, tokens) in `wants` its slots from one allocation; False (nothing
        added) if the pool is short."""
        slots = self.kv.alloc(sum(n for _, n in wants))
        if slots is None:
            return False
        for (req, n), part in zip(wants, torch.split(slots, [n for _, n in wants])):
            plan.add(req, n, part)
        return True

    @staticmethod
    def _wants(reqs: list[Req], budget: int) -> tuple[list[tuple[Req, int]], int]:
        """Tokens each request runs this step: 1 when decoding (plus its draft's tokens when
        speculating), a budgeted chunk of a prompt."""
        out = []
        for req in reqs:
            n = req.seq_len - req.num_computed
            if n == 1 and req.draft is not None:
                n += len(req.draft)
            elif n > 1:
                n = min(n, budget)
                if n <= 0:
                    continue
                budget -= n
            out.append((req, n))
        return out, budget

    def _alloc_or_retract(self, n: int, req: Req, running: list[Req], waiting: list[Req],
                          plan: StepPlan):
        while True:
            slots = self.kv.alloc(n)
            if slots is not None:
                return slots
            victim = self._pick_victim(running, req, plan)
            if victim is None:
                return None
            self.retract(victim, running, waiting, plan)
            if victim is req:
                return None

    def _pick_victim(self, running: list[Req], current: Req, plan: StepPlan):
        # Retract the request admitted last among those not yet given work this step, so the
        # oldest requests keep their progress; the current request is the last resort.
        scheduled = {id(r) for r in plan.reqs}
        candidates = [r for r in running if id(r) not in scheduled and r is not current]
        if candidates:
            return max(candidates, key=lambda r: r.arrival)
        if len(running) > 1 or plan.reqs:
            return current
        return None

    def retract(self, req: Req, running: list[Req], waiting: list[Req],
                plan: Optional[StepPlan] = None, preempted: bool = False) -> None:
        self.kv.release(req)
        running.remove(req)
        req.draft = None
        req.state = ReqState.WAITING
        waiting.insert(0, req)
        if plan is not None:
            (plan.preempted if preempted else plan.retracted).append(req)
        if not req.input_logprobs_sent:  # its prompt rows are recomputed on readmission
            req.input_logprobs, req.input_top_logprobs = [], []
        if not preempted:  # short of KV: admission reserves more from now on
            self.ratio.bump()

    def _admit(self, running: list[Req], waiting: list[Req], plan: StepPlan, budget: int) -> None:
        if not waiting:
            return
        reserve = sum(self._reserve(r) for r in running)
        computing = self._prompts_in_flight(running)
        for req in list(waiting):
            if budget <= 0:
                break
            if len(running) >= self.running_limit:
                freed = self._preempt(req, running, waiting, plan, num_tokens=0)
                if freed is None:
                    break
                reserve -= freed
            prefix, node = self.kv.match(req)
            if computing is not None and self._shares_uncached(req, int(prefix.numel()), computing):
                continue  # admitted once the shared prefix is in the tree (next step)
            n, need, room = self._cost(req, prefix, node, budget)
            if need + reserve > room and (running or plan.reqs):
                freed = self._preempt(req, running, waiting, plan, need + reserve - room)
                if freed is None:
                    break
                reserve -= freed
                prefix, node = self.kv.match(req)  # the victims' KV is in the tree now
                n, need, room = self._cost(req, prefix, node, budget)
                if need + reserve > room and (running or plan.reqs):
                    break
            if not self.kv.admit(req, prefix, node):
                break
            slots = self.kv.alloc(n)
            if slots is None:  # should not happen after the room check; undo and stop
                self.kv.release(req)
                break
            waiting.remove(req)
            running.append(req)
            req.state = ReqState.RUNNING
            if req.num_admissions == 0:
                req.cached_tokens = int(prefix.numel())
            req.num_admissions += 1
            plan.add(req, n, slots, admitted=True)
            plan.num_admitted += 1
            plan.num_cached += int(prefix.numel())
            budget -= n
            reserve += self._reserve(req, after_prefix=int(prefix.numel()) + n)
            if computing is not None:
                computing.insert(req.all_ids)

    def _cost(self, req: Req, prefix: torch.Tensor, node, budget: int) -> tuple[int, int, int]:
        """(tokens req runs now, KV it needs counting its reserve, KV room there is for it)."""
        n = min(req.seq_len - int(prefix.numel()), budget)
        need = n + self._reserve(req, after_prefix=int(prefix.numel()) + n)
        # The matched prefix is evictable until we lock it, so it does not count as free room.
        room = self.kv.available() - (self._evictable_in(prefix, node))
        return n, need, room

    def _preempt(self, req: Req, running: list[Req], waiting: list[Req], plan: StepPlan,
                 num_tokens: int) -> Optional[int]:
        """Priority preemption (scheduler/priority.py): retract the running requests req may
        preempt, as few as give it a request slot (when all are taken) and `num_tokens` of KV;
        returns the KV reserve they held, or None (nothing preempted) when they cannot."""
        if self.priority is None:
            return None
        busy = {id(r) for r in plan.reqs}  # already given work (and slots) this step
        victims = self.priority.choose_victims(
            req, [r for r in running if id(r) not in busy], len(running) + 1 - self.running_limit,
            num_tokens, lambda r: r.num_computed + self._reserve(r))
        if not victims:
            return None
        freed = sum(self._reserve(v) for v in victims)
        for victim in victims:
            self.retract(victim, running, waiting, plan, preempted=True)
        return freed

    def _prompts_in_flight(self, running: list[Req]) -> Optional[PrefixTrie]:
        """The sequences of running requests whose prompt work is not done (not all in the radix
        tree yet); None when there is no tree to share through."""
        if self.kv.tree.disable:
            return None
        trie = PrefixTrie()
        for req in running:
            if req.seq_len - req.num_computed > 1:
                trie.insert(req.all_ids)
        return trie

    @staticmethod
    def _shares_uncached(req: Req, num_cached: int, computing: PrefixTrie) -> bool:
        """Whether req would compute part of a long prefix that a prompt in flight computes too."""
        reusable = req.all_ids[:req.max_prefix_len()]
        if len(reusable) < IN_BATCH_PREFIX_MIN_SHARED or len(reusable) == num_cached:
            return False
        shared = computing.match_len(reusable)
        return shared >= IN_BATCH_PREFIX_MIN_SHARED and shared > num_cached

    def _reserve(self, req: Req, after_prefix: int | None = None) -> int:
        computed = req.num_computed if after_prefix is None else after_prefix
        prompt_left = max(req.seq_len - computed, 0)
        return prompt_left + math.ceil(req.remaining_new_tokens() * self.ratio.value)

    def _evictable_in(self, prefix: torch.Tensor, node) -> int:
        if node is None or not prefix.numel():
            return 0
        return int(prefix.numel()) if node.lock_ref == 0 else 0
