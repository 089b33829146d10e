"""Overlap scheduling: while the device runs step k, the scheduler builds and launches step k+1
for the same requests, each one token further, before it has read step k's tokens back. Step
k+1's input ids name step k's sampled tokens on the device (`ForwardBatch.future_src`), so the
device never waits for the host between steady decode steps. With grammar-constrained requests
the forward of k+1 is queued first and its sampling once step k's tokens have advanced the
grammars: the mask is filled on the host while the device runs the forward.

Only plain decode steps chain: every running request samples, nothing waits for admission, and
no request needs its previous token on the host for the sampler's inputs (penalties, an active
min_new_tokens, speculation, prompt logprobs). The scheduler never chains while it speculates. A request that step k finishes, or whose tokens a
jump-forward rewrites, has already run in step k+1: that row is dropped (the KV it wrote belongs
to the request's sequence as it was, and is kept or freed with the rest of it)."""
from __future__ import annotations

from typing import Optional

import torch

from sgl.runtime.scheduler.batch import StepBook, build_step
from sgl.runtime.scheduler.contract import PendingStep, Runner, StepInputs
from sgl.runtime.scheduler.grammar import GrammarCoordinator
from sgl.runtime.scheduler.kv_manager import KVManager
from sgl.runtime.scheduler.output import is_stale
from sgl.runtime.scheduler.planner import StepPlan
from sgl.runtime.scheduler.req import Req, ReqState


class DeferredSampling:
    """A chained step whose forward is queued; `finish_launch` queues its sampling once the
    previous step's tokens have advanced the grammars."""

    def __init__(self, forward: object) -> None:
        self.forward = forward


InFlight = tuple[StepPlan, StepInputs, StepBook, "PendingStep | DeferredSampling"]


class OverlapChain:
    def __init__(self, runner: Runner, kv: KVManager, grammar: GrammarCoordinator) -> None:
        self.runner, self.kv, self.grammar = runner, kv, grammar
        self.table_width = runner.info.table_width

    def chainable(self, plan: StepPlan, step: StepInputs, book: StepBook, num_running: int,
                  has_waiting: bool) -> bool:
        """Whether the step after `plan` can be launched before `plan`'s tokens are read back."""
        if has_waiting or self.grammar.waiting:
            return False
        if step.lp_rows or book.prefill_done or book.verify:
            return False
        if len(book.sample_reqs) != len(plan.reqs) or len(plan.reqs) != num_running:
            return False
        return all(self._plain(req) for req in plan.reqs)

    def _plain(self, req: Req) -> bool:
        # seq_len == num_computed: the step in flight computes this request's last known token
        # and samples the next; anything else (a jump-forward to catch up) needs the host first.
        p = req.sampling_params
        return (req.state is ReqState.RUNNING and req.seq_len == req.num_computed
                and p.frequency_penalty == 0 and p.presence_penalty == 0 and p.repetition_penalty == 1
                and p.min_new_tokens <= len(req.output_ids) and req.seq_len + 2 < self.table_width)

    def chain(self, flight: InFlight, num_running: int, has_waiting: bool) -> Optional[InFlight]:
        """Launch the step after `flight` (still in flight), or None when it cannot be chained."""
        plan, step, book, _ = flight
        if not self.chainable(plan, step, book, num_running, has_waiting):
            return None
        reqs = list(book.sample_reqs)
        slots = self.kv.alloc(len(reqs))
        if slots is None:
            return None
        nxt = StepPlan()
        for req, slot in zip(reqs, torch.split(slots, 1)):
            nxt.add(req, 1, slot)
        nxt_step, nxt_book = build_step(nxt, self.kv, future={id(r): i for i, r in enumerate(reqs)})
        if any(r.grammar is not None for r in reqs):
            # The grammar mask needs the token in flight: queue the forward now, sample later.
            return nxt, nxt_step, nxt_book, DeferredSampling(self.runner.launch_forward(nxt_step))
        return nxt, nxt_step, nxt_book, self.runner.launch_batch(nxt_step)

    def finish_launch(self, flight: InFlight) -> tuple[StepPlan, StepInputs, StepBook, PendingStep]:
        plan, step, book, pending = flight
        if not isinstance(pending, DeferredSampling):
            return flight  # type: ignore[return-value]
        stale = {id(r) for r in book.sample_reqs if is_stale(r, book)}
        step.vocab_mask = self.grammar.vocab_mask(book.sample_reqs, skip=stale)
        return plan, step, book, self.runner.launch_sampling(step, pending.forward)
