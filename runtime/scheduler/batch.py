"""Turns a StepPlan into the runner's inputs: the ForwardBatch plus which logit rows are sampled
and which give prompt logprobs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from sgl.runtime.executor.forward_batch import ForwardBatch
from sgl.runtime.scheduler.kv_manager import KVManager
from sgl.runtime.scheduler.planner import StepPlan
from sgl.runtime.scheduler.req import Req


@dataclass
class StepInputs:
    batch: ForwardBatch
    sample_reqs: list[Req] = field(default_factory=list)   # requests sampling this step
    sample_rows: list[int] = field(default_factory=list)   # their rows in the logits
    lp_rows: list[int] = field(default_factory=list)       # logit rows scoring a prompt token
    lp_targets: list[int] = field(default_factory=list)    # ... the token each row scores
    lp_owners: list[Req] = field(default_factory=list)
    prefill_done: list[Req] = field(default_factory=list)  # max_new_tokens=0 requests now complete
    top_logprobs_num: int = 0
    need_logprobs: bool = False
    table_writes: Any = (None, None, None)  # this step's request->token writes, for other TP ranks
    vocab_mask: Optional[Any] = None  # packed (num_samples, ceil(vocab/32)) int32 grammar bitmask


def build_step(plan: StepPlan, kv: KVManager) -> StepInputs:
    ids, pos, locs, rows_pool, prefix, extend, logit_rows = [], [], [], [], [], [], []
    step = StepInputs(batch=None)  # type: ignore[arg-type]
    offset = 0
    for req, n, slots in zip(plan.reqs, plan.num_new, plan.slots):
        start = req.num_computed
        kv.extend(req, slots)
        ids.extend(req.all_ids[start:start + n])
        pos.extend(range(start, start + n))
        locs.extend(slots.tolist())
        rows_pool.append(req.req_pool_idx)
        prefix.append(start)
        extend.append(n)
        _add_prompt_logprob_rows(step, logit_rows, req, start, n, offset)
        if start + n == req.seq_len:
            if req.is_prefill_only:
                step.prefill_done.append(req)
            else:
                step.sample_rows.append(len(logit_rows))
                logit_rows.append(offset + n - 1)
                step.sample_reqs.append(req)
        offset += n
    step.table_writes = kv.table.flush() or (None, None, None)
    step.batch = ForwardBatch.build(ids, pos, locs, rows_pool, prefix, extend, logit_rows)
    asking = [r for r in step.sample_reqs + step.lp_owners if r.return_logprob]
    step.need_logprobs = bool(asking)
    step.top_logprobs_num = max((r.top_logprobs_num for r in asking), default=0)
    return step


def _add_prompt_logprob_rows(step: StepInputs, logit_rows: list[int], req: Req, start: int, n: int,
                             offset: int) -> None:
    # Row at position q scores prompt token q+1; reported tokens are [max(from, 1), prompt_len).
    lp_from = req.input_logprob_from
    if lp_from < 0 or req.input_logprobs_sent:
        return
    lo, hi = max(lp_from, 1) - 1, req.prompt_len - 2
    for q in range(max(start, lo), min(start + n - 1, hi) + 1):
        step.lp_rows.append(len(logit_rows))
        logit_rows.append(offset + q - start)
        step.lp_targets.append(req.origin_input_ids[q + 1])
        step.lp_owners.append(req)


@dataclass
class RunResult:
    """Runner -> scheduler: sampled tokens and, when asked, logprobs. Nothing else crosses back."""
    next_token_ids: list[int]
    logprobs: list[float] = field(default_factory=list)                       # per sample row
    top_logprobs: list[list[tuple[float, int]]] = field(default_factory=list)
    input_logprobs: list[float] = field(default_factory=list)                 # per prompt-logprob row
    input_top_logprobs: list[list[tuple[float, int]]] = field(default_factory=list)
