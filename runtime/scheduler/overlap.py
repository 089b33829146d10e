"""Overlap scheduling: while the device runs step k, the scheduler builds and launches step k+1
for the same requests, each one token further, before it has read step k's tokens back. Step
k+1's input ids name step k's sampled tokens on the device (`ForwardBatch.future_src`), so the
device never waits for the host between steady decode steps. With grammar-constrained requests
the forward of k+1 is queued first and its sampling once step k's tokens have advanced the
grammars: the mask is filled on the host while the device runs the forward.

Only plain decode steps chain: every running request samples, nothing waits for admission, and
no request needs its previous token on the host for the sampler's inputs (penalties, an active
min_new_tokens, speculation, prompt logprobs). A request that step k finishes, or whose tokens a
jump-forward rewrites, has already run in step k+1: that row is dropped (the KV it wrote belongs
to the request's sequence as it was, and is kept or freed with the rest of it)."""
from __future__ import annotations

from typing import Any, Optional

import torch

from sgl.runtime.scheduler.batch import StepInputs, build_step
from sgl.runtime.scheduler.output import is_stale
from sgl.runtime.scheduler.planner import StepPlan
from sgl.runtime.scheduler.req import Req, ReqState

InFlight = tuple[StepPlan, StepInputs, Any]  # plan, inputs, the runner's pending result


def chainable(sched: Any, plan: StepPlan, inputs: StepInputs) -> bool:
    if not sched.overlap or sched.spec is not None or sched.waiting or sched.grammar.waiting:
        return False
    if inputs.lp_rows or inputs.prefill_done or inputs.verify:
        return False
    if len(inputs.sample_reqs) != len(plan.reqs) or len(plan.reqs) != len(sched.running):
        return False
    width = sched.runner.req_to_token_pool.max_context_len
    return all(_plain(req, width) for req in plan.reqs)


def _plain(req: Req, width: int) -> bool:
    # seq_len == num_computed: the step in flight computes this request's last known token and
    # samples the next; anything else (a jump-forward to catch up) needs the host first.
    p = req.sampling_params
    return (req.state is ReqState.RUNNING and req.seq_len == req.num_computed
            and p.frequency_penalty == 0 and p.presence_penalty == 0 and p.repetition_penalty == 1
            and p.min_new_tokens <= len(req.output_ids) and req.seq_len + 2 < width)


def chain_step(sched: Any, plan: StepPlan, inputs: StepInputs) -> Optional[InFlight]:
    """Launch the step after `plan` (still in flight), or None when it cannot be chained."""
    if not chainable(sched, plan, inputs):
        return None
    reqs = list(inputs.sample_reqs)
    slots = sched.kv.alloc(len(reqs))
    if slots is None:
        return None
    nxt = StepPlan()
    for req, slot in zip(reqs, torch.split(slots, 1)):
        nxt.add(req, 1, slot)
    nxt_inputs = build_step(nxt, sched.kv, future={id(r): i for i, r in enumerate(reqs)})
    sched.stats.num_overlapped += 1
    if any(r.grammar is not None for r in reqs):
        # The grammar mask needs the token in flight: queue the forward now, sample later.
        return nxt, nxt_inputs, DeferredSampling(sched.runner.launch_forward(nxt_inputs))
    return nxt, nxt_inputs, sched.runner.launch_batch(nxt_inputs)


class DeferredSampling:
    """A chained step whose forward is queued; `finish_launch` queues its sampling once the
    previous step's tokens have advanced the grammars."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


def finish_launch(sched: Any, inflight: InFlight) -> InFlight:
    plan, inputs, pending = inflight
    if not isinstance(pending, DeferredSampling):
        return inflight
    stale = {id(r) for r in inputs.sample_reqs if is_stale(r, inputs)}
    inputs.vocab_mask = sched.grammar.vocab_mask(inputs.sample_reqs, skip=stale)
    inputs.sample_paths = []  # the outputs now hold the token that was in flight
    return plan, inputs, sched.runner.launch_sampling(inputs, pending.logits)
