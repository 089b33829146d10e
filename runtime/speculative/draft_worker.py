"""Drafting with a model: a STANDALONE small model with the target's tokenizer, or an EAGLE /
EAGLE-3 head fed the target's hidden states.

The draft's KV pool has as many slots as the target's and is indexed by the same slots: the draft
K/V of position i sits in the slot holding the target K/V of position i. The request->token
table, the radix cache and retraction therefore carry draft KV along with the target's for free.

Drafting one step for a batch of requests of lengths S (all_ids known, the target holds K/V of
positions [0, S - 1)):
  1. catch-up: one causal extend over the positions the draft has not seen. A STANDALONE model
     reads token i at position i, up to and including the root S - 1 (in a scratch slot). An
     EAGLE head reads (target hidden h_i, token i + 1) at position i, up to S - 2. The last row
     gives the first level of candidates.
  2. num_steps - 1 tree steps: the frontier (the topk best candidates so far) runs at depth d in
     scratch slots, attending to the prefix and its own ancestors; each frontier node proposes
     topk children scored by summed log-probabilities.
  3. The best num_draft_tokens - 1 candidates (ancestor-closed) form the draft tree.
Scratch slots go back to the allocator before the target's step is planned.

A tree step is a DECODE batch of one row per frontier node, each on a table row of its own
(candidates.py: "branch rows"; a chain uses the requests' own rows, a tree the drafter's
`branch_table`). It replays CUDA graphs (`graph_runner`, runtime/executor/draft_graph_runner.py)
where the target decodes under graphs and the rows fit a captured size; else it runs eagerly. A
tree whose frontier needs more rows than `branch_table` holds (MAX_DRAFT_ROWS) runs its steps as
eager masked extends instead. The catch-up extend is always eager."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from sgl.runtime.cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
from sgl.runtime.executor.attention import get_attention_backend
from sgl.runtime.executor.draft_graph_runner import MAX_DRAFT_ROWS, DraftOutput
from sgl.runtime.executor.forward_batch import ForwardBatch
from sgl.runtime.speculative import candidates
from sgl.runtime.speculative.candidates import Cand
from sgl.runtime.speculative.tree import DraftTree

logger = logging.getLogger("sgl.speculative")


@dataclass
class _ReqState:
    admission: int = -1
    done: int = 0                                   # draft KV covers positions [0, done)
    pending: list[torch.Tensor] = field(default_factory=list)  # target hidden of [done, ...)


class ModelDrafter:
    def __init__(self, server_args: Any, runner: Any) -> None:
        self.args, self.runner = server_args, runner
        self.algorithm = server_args.speculative_algorithm
        self.num_steps, self.topk, num_draft_tokens = server_args.speculative_settings()
        self.max_nodes = num_draft_tokens - 1
        self.needs_hidden = self.algorithm in ("EAGLE", "EAGLE3")
        self.shift = 1 if self.needs_hidden else 0  # EAGLE: position i reads token i + 1
        self._load(server_args.speculative_draft_model_path)
        self.kv_pool = MHATokenToKVPool(runner.max_total_tokens, self.num_kv_heads, self.head_dim,
                                        self.num_layers, runner.dtype, runner.device)
        self.attn_backend = get_attention_backend(runner._attention_backend_name())()
        self.states: dict[int, _ReqState] = {}
        self._init_branches()

    def _init_branches(self) -> None:
        """The table the tree steps' rows live in, and their CUDA graphs (None: eager)."""
        main = self.runner.req_to_token_pool
        self.branch_table: Optional[ReqToTokenPool] = None
        if self.topk > 1:  # MAX_DRAFT_ROWS branch rows, then the dummy row
            self.branch_table = ReqToTokenPool(MAX_DRAFT_ROWS + 1, main.max_context_len,
                                               self.runner.device)
        self.max_branch_rows = MAX_DRAFT_ROWS  # a tree with more frontier rows: masked extends
        self.rows_table = main if self.branch_table is None else self.branch_table
        prepare = getattr(self.runner, "prepare_draft_graphs", None)
        self.graph_runner = prepare(self) if prepare is not None else None

    def _load(self, path: str) -> None:
        runner = self.runner
        if self.algorithm == "STANDALONE":
            from sgl.runtime.loader import load_model
            loaded = load_model(path, "auto", dtype=runner.dtype, device=runner.device,
                                seed=self.args.random_seed)
            self.model, self.draft_to_target = loaded.model, None
            self.num_layers, self.num_kv_heads, self.head_dim = (
                loaded.num_layers, loaded.num_kv_heads, loaded.head_dim)
            if loaded.vocab_size < runner.vocab_size // 2:
                raise ValueError(f"the STANDALONE draft's vocabulary ({loaded.vocab_size}) does not "
                                 f"look like the target's ({runner.vocab_size})")
            return
        from sgl.runtime.loader.draft import load_draft_model
        info = load_draft_model(path, runner.model, runner.dtype, runner.device)
        if info.model.is_eagle3 != (self.algorithm == "EAGLE3"):
            kind = "EAGLE-3" if info.model.is_eagle3 else "EAGLE"
            raise ValueError(f"{path} holds an {kind} head; pass speculative_algorithm="
                             f"{'EAGLE3' if info.model.is_eagle3 else 'EAGLE'}")
        self.model, self.draft_to_target = info.model, info.model.draft_to_target
        self.num_layers, self.num_kv_heads, self.head_dim = info.num_layers, info.num_kv_heads, info.head_dim
        if info.model.is_eagle3:
            runner.model.model.layers_to_capture = tuple(info.target_layers_to_capture)

    # -- what the target step tells us -----------------------------------------------------
    def observe(self, req: Any, start: int, hidden: Optional[torch.Tensor]) -> None:
        """The target computed K/V of req's positions [start, start + rows) this step; hidden
        holds their states (EAGLE) in position order."""
        state = self.states.get(id(req))
        if state is None or state.admission != req.num_admissions:
            state = self.states[id(req)] = _ReqState(admission=req.num_admissions, done=start)
        if self.needs_hidden and hidden is not None:
            state.pending.append(hidden)

    def release(self, req: Any) -> None:
        self.states.pop(id(req), None)

    # -- drafting ----------------------------------------------------------------------------
    @torch.inference_mode()
    def propose(self, reqs: list[Any], limits: list[int], kv: Any) -> list[DraftTree]:
        trees = [DraftTree() for _ in reqs]
        work = [(i, r) for i, r in enumerate(reqs) if limits[i] > 0 and self._ready(r)]
        if not work:
            return trees
        scratch: list[torch.Tensor] = []
        try:
            drafting = [r for _, r in work]
            first, roots = self._catch_up(drafting, kv, scratch)
            if first is None:
                return trees
            cands = self._children(first, [(-1, 0.0)] * len(work), depth=1)
            for req_cands in cands:
                candidates.mark_frontier(req_cands, 1, self.topk)
            by_rows = self.branch_table is None or len(work) * self.topk <= self.max_branch_rows
            if by_rows and self.branch_table is not None and self.num_steps > 1:
                candidates.copy_prefixes(self.branch_table, self.runner.req_to_token_pool,
                                         drafting, self.topk, max(roots))
            for step in range(1, self.num_steps):
                if not self._tree_step(drafting, roots, cands, kv, scratch, step + 1, by_rows):
                    break
            for (i, _), req_cands in zip(work, cands):
                trees[i] = candidates.select(req_cands, min(limits[i], self.max_nodes))
        finally:
            for slots in scratch:
                kv.allocator.free(slots)
        return trees

    def _ready(self, req: Any) -> bool:
        state = self.states.get(id(req))
        if state is None or state.admission != req.num_admissions:
            return False
        if self.needs_hidden:
            if state.done >= req.num_computed:  # not run since the last draft: nothing to feed
                return False
            have = sum(int(h.shape[0]) for h in state.pending)
            if state.done + have != req.num_computed:  # hidden states missing: skip drafting
                return False
        return True

    def _catch_up(self, reqs: list[Any], kv: Any, scratch: list[torch.Tensor]):
        """One causal extend over each request's unseen positions. Returns the draft's output
        (top-k, hidden) of each request's last row and the table column where its scratch tokens
        start (the position of its first draft token)."""
        ids, pos, locs, rows, prefix, extend, logit_rows, hiddens, roots = [], [], [], [], [], [], [], [], []
        root_slots = kv.alloc(len(reqs)) if self.shift == 0 else None
        if self.shift == 0:
            if root_slots is None:
                return None, None
            scratch.append(root_slots)
        table = self.runner.req_to_token_pool
        for k, req in enumerate(reqs):
            state = self.states[id(req)]
            seq = req.seq_len
            end = seq - self.shift  # positions [done, end)
            start = min(state.done, end - 1)
            computed = req.kv_indices
            slots = computed[start:min(end, seq - 1)]
            if self.shift == 0:
                slots = torch.cat([slots, root_slots[k:k + 1]])
                table.write(req.req_pool_idx, seq - 1, root_slots[k:k + 1])
            ids.extend(req.all_ids[start + self.shift:end + self.shift])
            pos.extend(range(start, end))
            locs.extend(slots.tolist())
            rows.append(req.req_pool_idx)
            prefix.append(start)
            extend.append(end - start)
            logit_rows.append(len(ids) - 1)
            roots.append(end)
            if self.needs_hidden:
                pend = torch.cat(state.pending) if len(state.pending) > 1 else state.pending[0]
                hiddens.append(pend[start - state.done:])
                state.pending = []
            state.done = min(end, req.num_computed)
        table.flush()
        batch = ForwardBatch.build(ids, pos, locs, rows, prefix, extend, logit_rows)
        hidden_in = torch.cat(hiddens) if hiddens else None
        return self._forward(batch, hidden_in), roots

    def _tree_step(self, reqs: list[Any], roots: list[int], cands: list[list[Cand]], kv: Any,
                   scratch: list[torch.Tensor], depth: int, by_rows: bool) -> bool:
        """Run the frontier (candidates of depth - 1) in new scratch slots, on branch rows or as
        a masked extend (candidates.py), and add its children."""
        fronts = [candidates.frontier(rc, depth) for rc in cands]
        total = sum(len(f) for f in fronts)
        if total == 0:
            return False
        slots = kv.alloc(total)
        if slots is None:
            return False
        scratch.append(slots)
        if by_rows:
            batch, hidden_in = candidates.branch_batch(
                reqs, roots, cands, fronts, slots, self.rows_table, self.topk,
                chain=self.branch_table is None)
        else:
            batch, hidden_in = candidates.masked_batch(
                reqs, roots, cands, fronts, slots, self.runner.req_to_token_pool)
        vals, ids, hidden = self._forward(batch, hidden_in, is_tree_step=True)
        row = 0
        for rc, front in zip(cands, fronts):
            if not front:
                continue
            part = slice(row, row + len(front))
            row += len(front)
            out = (vals[part], ids[part], None if hidden is None else hidden[part])
            for row_cands in self._children(out, [(j, rc[j].score) for j in front], depth):
                rc.extend(row_cands)
            candidates.mark_frontier(rc, depth, self.topk)
        return True

    def _children(self, out: DraftOutput, parents: list[tuple[int, float]],
                  depth: int) -> list[list[Cand]]:
        """The topk candidates proposed by each row of `out` (top-k log-probabilities, target
        ids, hidden); row k extends parents[k] = (the parent's candidate index, -1 for the root;
        its score)."""
        vals, ids, hidden = out
        vals, ids = vals.tolist(), ids.tolist()
        return [[Cand(t, parent, score + v, depth, None if hidden is None else hidden[k])
                 for v, t in zip(vals[k], ids[k]) if t < self.runner.vocab_size]
                for k, (parent, score) in enumerate(parents)]

    def _forward(self, batch: ForwardBatch, hidden_in: Optional[torch.Tensor],
                 is_tree_step: bool = False) -> DraftOutput:
        """The draft's output for `batch`; a tree step on branch rows replays a graph when one
        fits (a one-token catch-up is decode-shaped too, but reads the target's hidden states,
        3H wide for EAGLE-3: it stays eager)."""
        runner = self.runner
        batch.to(runner.device)
        if hidden_in is not None:
            hidden_in = hidden_in.to(runner.device)
        if batch.req_to_token is None:
            batch.req_to_token = runner.req_to_token_pool.req_to_token
        batch.kv_pool, batch.attn_backend = self.kv_pool, self.attn_backend
        if is_tree_step and self.graph_runner is not None and self.graph_runner.can_run(batch):
            return self.graph_runner.replay(batch, hidden_in)
        return self.run_model(batch, hidden_in)

    def run_model(self, batch: ForwardBatch, hidden_in: Optional[torch.Tensor]) -> DraftOutput:
        """The draft model over `batch` (on the device, pools set): for each logit row the top-k
        log-probabilities (float32) and their ids in the target vocabulary, and (EAGLE) the
        hidden state it feeds its children. Captured as is by the draft graphs."""
        self.attn_backend.init_forward_metadata(batch)
        if self.needs_hidden:
            nxt, for_logits = self.model(batch.input_ids, batch.positions, batch, hidden_in)
        else:
            nxt, for_logits = None, self.model(batch.input_ids, batch.positions, batch)
        rows = batch.logits_indices
        logp = torch.log_softmax(self.model.compute_logits(for_logits[rows]).float(), dim=-1)
        vals, ids = logp.topk(min(self.topk, logp.shape[-1]), dim=-1)
        if self.draft_to_target is not None:
            ids = self.draft_to_target[ids]
        return vals, ids, None if nxt is None else nxt[rows]
