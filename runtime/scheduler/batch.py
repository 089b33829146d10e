"""Turns a StepPlan into the runner's inputs: the ForwardBatch plus which logit rows are sampled
and which give prompt logprobs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

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
    # Speculative decoding. A verified request owns 1 + len(draft) consecutive sample rows; row
    # k samples as if the output already held sample_paths[k] (its draft ancestors).
    verify: dict[int, "VerifyRows"] = field(default_factory=dict)  # id(req) -> its rows
    sample_paths: list[list[int]] = field(default_factory=list)    # empty when nothing verifies
    capture_hidden: bool = False  # return the forward's hidden states (EAGLE drafters)
    versions: dict[int, int] = field(default_factory=dict)  # overlap: id(req) -> req.version at build
    num_generated: int = 0        # tokens appended by this step (set when results are processed)


@dataclass
class VerifyRows:
    tree: Any            # DraftTree
    slots: Any           # (1 + len(tree),) KV slots of the root and the draft nodes
    kept: list[int] = field(default_factory=list)  # rows whose KV the request kept (after accept)


def build_step(plan: StepPlan, kv: KVManager, capture_hidden: bool = False,
               future: Optional[dict[int, int]] = None) -> StepInputs:
    """future (overlap scheduling): id(req) -> its row among the tokens sampled by the step in
    flight; such a request runs that token, which the host does not know yet."""
    ids, pos, locs, rows_pool, prefix, extend, logit_rows = [], [], [], [], [], [], []
    future_src: list[int] = []
    step = StepInputs(batch=None, capture_hidden=capture_hidden)  # type: ignore[arg-type]
    masks: list[Optional[torch.Tensor]] = []  # per request: its tree mask block, None = causal
    offset = 0
    for req, n, slots in zip(plan.reqs, plan.num_new, plan.slots):
        start = req.num_computed
        rows_pool.append(req.req_pool_idx)
        prefix.append(start)
        extend.append(n)
        locs.extend(slots.tolist())
        if future is not None and id(req) in future:
            _add_future_row(step, logit_rows, masks, req, slots, start, future[id(req)], offset,
                            ids, pos, future_src, kv)
            offset += 1
            continue
        tree = req.draft
        if tree is not None and n == 1 + len(tree):
            _add_verify_rows(step, logit_rows, masks, req, tree, start, slots, offset, ids, pos, kv)
            offset += n
            continue
        masks.append(None)
        kv.extend(req, slots)
        ids.extend(req.all_ids[start:start + n])
        pos.extend(range(start, start + n))
        _add_prompt_logprob_rows(step, logit_rows, req, start, n, offset)
        if start + n == req.seq_len:
            if req.is_prefill_only:
                step.prefill_done.append(req)
            else:
                step.sample_rows.append(len(logit_rows))
                logit_rows.append(offset + n - 1)
                step.sample_reqs.append(req)
                if step.verify:
                    step.sample_paths.append([])
        offset += n
    step.table_writes = kv.table.flush() or (None, None, None)
    step.batch = ForwardBatch.build(ids, pos, locs, rows_pool, prefix, extend, logit_rows)
    if future_src:
        step.batch.future_src = torch.tensor(future_src + [-1] * (len(ids) - len(future_src)),
                                             dtype=torch.int64)
    if step.verify:
        _attach_tree_masks(step.batch, masks, prefix, extend)
    asking = [r for r in step.sample_reqs + step.lp_owners if r.return_logprob]
    step.need_logprobs = bool(asking)
    step.top_logprobs_num = max((r.top_logprobs_num for r in asking), default=0)
    return step


def _add_future_row(step: StepInputs, logit_rows: list[int], masks: list, req: Req,
                    slots: torch.Tensor, start: int, src: int, offset: int, ids: list[int],
                    pos: list[int], future_src: list[int], kv: KVManager) -> None:
    """One decode token whose id is still on the device; it samples as output index
    len(output_ids) + 1 (the token in flight counts)."""
    masks.append(None)
    kv.extend(req, slots)
    step.versions[id(req)] = req.version
    future_src.extend([-1] * (len(ids) - len(future_src)))
    future_src.append(src)
    ids.append(0)
    pos.append(start)
    step.sample_rows.append(len(logit_rows))
    logit_rows.append(offset)
    step.sample_reqs.append(req)
    step.sample_paths.append([0])  # only its length is read: no penalties in chained steps


def _add_verify_rows(step: StepInputs, logit_rows: list[int], masks: list, req: Req, tree: Any,
                     start: int, slots: torch.Tensor, offset: int, ids: list[int], pos: list[int],
                     kv: KVManager) -> None:
    """The root (last token) and the draft nodes, at positions start + depth; every row samples."""
    if not step.verify:  # the first verified request: earlier sample rows get empty paths
        step.sample_paths.extend([] for _ in step.sample_reqs)
    kv.table.write(req.req_pool_idx, start, slots)  # the request keeps only what is accepted
    ids.append(req.all_ids[start])
    ids.extend(tree.tokens)
    pos.append(start)
    pos.extend(start + d for d in tree.depths())
    masks.append(tree.tree_mask())  # (1 + n, 1 + n) over the new tokens; the prefix is visible
    step.verify[id(req)] = VerifyRows(tree, slots)
    for k, path in enumerate(tree.paths()):
        step.sample_rows.append(len(logit_rows))
        logit_rows.append(offset + k)
        step.sample_reqs.append(req)
        step.sample_paths.append(path)


def _attach_tree_masks(batch: ForwardBatch, masks: list, prefix: list[int], extend: list[int]) -> None:
    """One mask for the whole batch: tree blocks for verified requests, causal blocks for the
    others. The compact layout (new tokens only, what the verify CUDA graphs take) when no
    request extends past the largest tree; else (a prompt chunk rides along) the full one."""
    blocks = [torch.ones((e, e), dtype=torch.bool).tril() if block is None else block
              for block, e in zip(masks, extend)]
    if max(extend) <= max(block.shape[0] for block in masks if block is not None):
        batch.set_tree_mask(blocks)
        return
    full = []
    for block, p, e in zip(blocks, prefix, extend):
        rows = torch.ones((e, p + e), dtype=torch.bool)
        rows[:, p:] = block
        full.append(rows)
    batch.set_custom_mask(full)


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
    hidden_states: Optional[Any] = None  # (num_tokens, H) when the step asked to capture them
