"""Turns a StepPlan into the runner's inputs (`StepInputs`: the ForwardBatch, which logit rows are
sampled and which score prompt tokens, the sampling inputs) and the scheduler's own record of the
step (`StepBook`: which request owns which row), read back when the results come."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from sgl.runtime.executor.forward_batch import ForwardBatch
from sgl.runtime.scheduler.contract import StepInputs
from sgl.runtime.scheduler.hidden_states import HiddenSpan, wanted_rows
from sgl.runtime.scheduler.kv_manager import KVManager
from sgl.runtime.scheduler.planner import StepPlan
from sgl.runtime.scheduler.req import Req
from sgl.runtime.speculative.tree import DraftTree


@dataclass
class VerifyRows:
    tree: DraftTree
    slots: torch.Tensor  # (1 + len(tree),) KV slots of the root and the draft nodes
    kept: list[int] = field(default_factory=list)  # rows whose KV the request kept (after accept)


@dataclass
class StepBook:
    """The scheduler's side of a step: the owners of the rows the runner sees as numbers."""
    sample_reqs: list[Req] = field(default_factory=list)   # the request of each sample row
    lp_owners: list[Req] = field(default_factory=list)     # ... of each prompt-logprob row
    pool_owners: list[Req] = field(default_factory=list)   # ... of each pool span (embeddings)
    prefill_done: list[Req] = field(default_factory=list)  # max_new_tokens=0 requests now complete
    # Speculative decoding: a verified request owns 1 + len(draft) consecutive sample rows.
    verify: dict[int, VerifyRows] = field(default_factory=dict)  # id(req) -> its rows
    versions: dict[int, int] = field(default_factory=dict)  # overlap: id(req) -> req.version at build
    sample_paths: list[list[int]] = field(default_factory=list)  # row k samples as if its output held these
    hidden_spans: list[HiddenSpan] = field(default_factory=list)  # return_hidden_states: whose rows
    num_generated: int = 0  # tokens appended by this step (set when results are processed)


def build_step(plan: StepPlan, kv: KVManager, capture_hidden: bool = False,
               future: Optional[dict[int, int]] = None) -> tuple[StepInputs, StepBook]:
    """future (overlap scheduling): id(req) -> its row among the tokens sampled by the step in
    flight; such a request runs that token, which the host does not know yet."""
    b = _Builder(kv, future)
    for req, n, slots in zip(plan.reqs, plan.num_new, plan.slots):
        b.add(req, n, slots)
    return b.finish(capture_hidden)


class _Builder:
    def __init__(self, kv: KVManager, future: Optional[dict[int, int]]) -> None:
        self.kv, self.future = kv, future
        self.ids: list[int] = []
        self.pos: list[int] = []
        self.locs: list[int] = []
        self.rows_pool: list[int] = []
        self.prefix: list[int] = []
        self.extend: list[int] = []
        self.logit_rows: list[int] = []
        self.future_src: list[int] = []
        self.masks: list[Optional[torch.Tensor]] = []  # per request: its tree mask block, None = causal
        self.step = StepInputs(batch=None)  # type: ignore[arg-type]
        self.book = StepBook()

    def add(self, req: Req, n: int, slots: torch.Tensor) -> None:
        start = req.num_computed
        self.rows_pool.append(req.req_pool_idx)
        self.prefix.append(start)
        self.extend.append(n)
        self.locs.extend(slots.tolist())
        if self.future is not None and id(req) in self.future:
            self._add_future_row(req, slots, start, self.future[id(req)])
        elif req.draft is not None and n == 1 + len(req.draft):
            self._add_verify_rows(req, req.draft, start, slots)
        else:
            self._add_rows(req, n, slots, start)

    def _add_rows(self, req: Req, n: int, slots: torch.Tensor, start: int) -> None:
        offset = len(self.ids)
        self.masks.append(None)
        self.kv.extend(req, slots)
        self.ids.extend(req.all_ids[start:start + n])
        self.pos.extend(range(start, start + n))
        self._want_hidden(req, offset, n, start)
        self._add_prompt_logprob_rows(req, start, n, offset)
        span = req.pooling.chunk_span(start, n, req.seq_len) if req.pooling is not None else None
        if span is not None:
            if start == 0:  # a retracted prompt runs again from its start: forget the old sums
                req.pooled_sum = None
            self.step.pool_spans.append((offset + span[0], offset + span[1]))
            self.book.pool_owners.append(req)
        if start + n == req.seq_len:
            if req.is_prefill_only:
                self.book.prefill_done.append(req)
            else:
                self._sample(req, offset + n - 1, [])

    def _sample(self, req: Req, row: int, path: list[int], in_flight: int = 0) -> None:
        """Logit row `row` samples req's next token as if its output also held `path` (draft
        ancestors) and `in_flight` tokens not yet read back."""
        s = self.step.sampling
        out = req.output_ids + path if path else req.output_ids
        self.step.sample_rows.append(len(self.logit_rows))
        self.logit_rows.append(row)
        self.book.sample_reqs.append(req)
        self.book.sample_paths.append(path)
        s.params.append(req.sampling_params)
        s.seeds.append(req.seed)
        s.steps.append(len(out) + in_flight)
        s.prompt_ids.append(req.origin_input_ids)
        s.output_ids.append(out)
        s.min_tokens_ids.append(req.min_tokens_ids)

    def _add_future_row(self, req: Req, slots: torch.Tensor, start: int, src: int) -> None:
        """One decode token whose id is still on the device; it samples as output index
        len(output_ids) + 1 (the token in flight counts; no penalties in chained steps)."""
        self.masks.append(None)
        self.kv.extend(req, slots)
        self.book.versions[id(req)] = req.version
        self.future_src.extend([-1] * (len(self.ids) - len(self.future_src)))
        self.future_src.append(src)
        self.ids.append(0)
        self.pos.append(start)
        self._want_hidden(req, len(self.ids) - 1, 1, start)
        self._sample(req, len(self.ids) - 1, [], in_flight=1)

    def _add_verify_rows(self, req: Req, tree: DraftTree, start: int, slots: torch.Tensor) -> None:
        """The root (last token) and the draft nodes, at positions start + depth; every row samples."""
        offset = len(self.ids)
        self.kv.write_verify_rows(req, start, slots)  # the request keeps only what is accepted
        self.ids.append(req.all_ids[start])
        self.ids.extend(tree.tokens)
        self.pos.append(start)
        self.pos.extend(start + d for d in tree.depths())
        self.masks.append(tree.tree_mask())  # (1 + n, 1 + n) over the new tokens; the prefix is visible
        self.book.verify[id(req)] = VerifyRows(tree, slots)
        self._want_hidden(req, offset, 1 + len(tree), start, whole=True)
        for k, path in enumerate(tree.paths()):
            self._sample(req, offset + k, path)

    def _want_hidden(self, req: Req, first_row: int, num_rows: int, start: int,
                     whole: bool = False) -> None:
        """return_hidden_states: the runner returns these rows' final hidden states."""
        if req.hidden is None:
            return
        rows, pos = wanted_rows(req.hidden.last_only, first_row, num_rows, start, whole)
        self.book.hidden_spans.append(HiddenSpan(req, len(self.step.hidden_rows), len(rows), pos))
        self.step.hidden_rows.extend(rows)

    def _add_prompt_logprob_rows(self, req: Req, start: int, n: int, offset: int) -> None:
        # Row at position q scores prompt token q+1; reported tokens are [max(from, 1), prompt_len).
        lp_from = req.input_logprob_from
        if lp_from < 0 or req.input_logprobs_sent:
            return
        lo, hi = max(lp_from, 1) - 1, req.prompt_len - 2
        for q in range(max(start, lo), min(start + n - 1, hi) + 1):
            self.step.lp_rows.append(len(self.logit_rows))
            self.logit_rows.append(offset + q - start)
            self.step.lp_targets.append(req.origin_input_ids[q + 1])
            self.book.lp_owners.append(req)

    def finish(self, capture_hidden: bool) -> tuple[StepInputs, StepBook]:
        step, book = self.step, self.book
        step.table_writes = self.kv.flush_table()
        step.batch = ForwardBatch.build(self.ids, self.pos, self.locs, self.rows_pool, self.prefix,
                                        self.extend, self.logit_rows)
        if self.future_src:
            pad = [-1] * (len(self.ids) - len(self.future_src))
            step.batch.future_src = torch.tensor(self.future_src + pad, dtype=torch.int64)
        if book.verify:
            _attach_tree_masks(step.batch, self.masks, self.prefix, self.extend)
        asking = [r for r in book.sample_reqs + book.lp_owners if r.return_logprob]
        step.need_logprobs = bool(asking)
        step.top_logprobs_num = max((r.top_logprobs_num for r in asking), default=0)
        step.capture_hidden = capture_hidden
        return step, book


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
