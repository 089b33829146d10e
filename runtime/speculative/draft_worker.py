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
     scratch slots, attending to the prefix and its own ancestors (a tree mask); each frontier node
     proposes topk children scored by summed log-probabilities.
  3. The best num_draft_tokens - 1 candidates (ancestor-closed) form the draft tree.
Scratch slots go back to the allocator before the target's step is planned."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from sgl.runtime.cache.memory_pool import MHATokenToKVPool
from sgl.runtime.executor.attention import get_attention_backend
from sgl.runtime.executor.forward_batch import ForwardBatch
from sgl.runtime.speculative.tree import DraftTree

logger = logging.getLogger("sgl.speculative")


@dataclass
class _ReqState:
    admission: int = -1
    done: int = 0                                   # draft KV covers positions [0, done)
    pending: list[torch.Tensor] = field(default_factory=list)  # target hidden of [done, ...)


@dataclass
class _Cand:
    token: int
    parent: int        # index of the parent candidate, -1 = the root
    score: float
    depth: int
    hidden: Optional[torch.Tensor] = None  # EAGLE: the draft hidden this node feeds its children
    placed: int = -1   # when fed: its column among the request's scratch tokens
    fed: bool = False  # among the topk best of its depth: runs at the next step


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
            last_logits, last_hidden, roots = self._catch_up([r for _, r in work], kv, scratch)
            if last_logits is None:
                return trees
            cands = self._children(last_logits, last_hidden, [(-1, 0.0)] * len(work), depth=1)
            for req_cands in cands:
                _mark_frontier(req_cands, 1, self.topk)
            for step in range(1, self.num_steps):
                if not self._tree_step(work, roots, cands, kv, scratch, depth=step + 1):
                    break
            for (i, req), req_cands in zip(work, cands):
                trees[i] = _select(req_cands, min(limits[i], self.max_nodes))
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
        """One causal extend over each request's unseen positions. Returns (logits, hidden) of
        each request's last row and the table column where its scratch tokens start."""
        ids, pos, locs, rows, prefix, extend, logit_rows, hiddens, roots = [], [], [], [], [], [], [], [], []
        root_slots = kv.alloc(len(reqs)) if self.shift == 0 else None
        if self.shift == 0:
            if root_slots is None:
                return None, None, None
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
        logits, hidden = self._forward(batch, hidden_in)
        return logits, hidden, roots

    def _tree_step(self, work: list[tuple[int, Any]], roots: list[int], cands: list[list[_Cand]],
                   kv: Any, scratch: list[torch.Tensor], depth: int) -> bool:
        frontier = [[j for j, c in enumerate(rc) if c.depth == depth - 1 and c.placed < 0 and c.fed]
                    for rc in cands]
        total = sum(len(f) for f in frontier)
        if total == 0:
            return False
        slots = kv.alloc(total)
        if slots is None:
            return False
        scratch.append(slots)
        table = self.runner.req_to_token_pool
        ids, pos, locs, rows, prefix, extend, logit_rows, hiddens, masks = [], [], [], [], [], [], [], [], []
        placed_counts = [sum(c.placed >= 0 for c in rc) for rc in cands]
        offset = 0
        for k, ((_, req), rc, front) in enumerate(zip(work, cands, frontier)):
            if not front:
                continue
            mine = slots[offset:offset + len(front)]
            offset += len(front)
            base = roots[k]  # first scratch column in the table
            for n, j in enumerate(front):
                rc[j].placed = placed_counts[k] + n
            table.write(req.req_pool_idx, base + placed_counts[k], mine)
            placed_counts[k] += len(front)
            seq = base + placed_counts[k]
            block = torch.zeros((len(front), seq), dtype=torch.bool)  # prefix + ancestors + self
            block[:, :base] = True
            for n, j in enumerate(front):
                node = j
                while node >= 0:
                    block[n, base + rc[node].placed] = True
                    node = rc[node].parent
                ids.append(rc[j].token)
                pos.append(base - 1 + rc[j].depth)
                if rc[j].hidden is not None:
                    hiddens.append(rc[j].hidden)
            locs.extend(mine.tolist())
            rows.append(req.req_pool_idx)
            prefix.append(seq - len(front))
            extend.append(len(front))
            masks.append(block)
        table.flush()
        logit_rows = list(range(len(ids)))
        batch = ForwardBatch.build(ids, pos, locs, rows, prefix, extend, logit_rows)
        if not all(bool(m.all()) for m in masks):  # a chain (topk 1) sees everything: decode
            batch.set_custom_mask(masks)
        hidden_in = torch.stack(hiddens) if hiddens else None
        logits, hidden = self._forward(batch, hidden_in)
        row = 0
        for rc, front in zip(cands, frontier):
            if not front:
                continue
            part = slice(row, row + len(front))
            row += len(front)
            for row_cands in self._children(logits[part], None if hidden is None else hidden[part],
                                            [(j, rc[j].score) for j in front], depth):
                rc.extend(row_cands)
            _mark_frontier(rc, depth, self.topk)
        return True

    def _children(self, logits: torch.Tensor, hidden: Optional[torch.Tensor],
                  parents: list[tuple[int, float]], depth: int) -> list[list[_Cand]]:
        """The topk candidates proposed by each row; row k extends parents[k] = (the parent's
        candidate index, -1 for the root; its score)."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        vals, idx = logp.topk(min(self.topk, logp.shape[-1]), dim=-1)
        if self.draft_to_target is not None:
            idx = self.draft_to_target[idx]
        vals, idx = vals.tolist(), idx.tolist()
        return [[_Cand(t, parent, score + v, depth, None if hidden is None else hidden[k])
                 for v, t in zip(vals[k], idx[k]) if t < self.runner.vocab_size]
                for k, (parent, score) in enumerate(parents)]

    def _forward(self, batch: ForwardBatch, hidden_in: Optional[torch.Tensor]):
        runner = self.runner
        batch.to(runner.device)
        batch.req_to_token = runner.req_to_token_pool.req_to_token
        batch.kv_pool, batch.attn_backend = self.kv_pool, self.attn_backend
        self.attn_backend.init_forward_metadata(batch)
        if self.needs_hidden:
            nxt, for_logits = self.model(batch.input_ids, batch.positions, batch, hidden_in.to(runner.device))
        else:
            nxt = None
            for_logits = self.model(batch.input_ids, batch.positions, batch)
        rows = batch.logits_indices
        logits = self.model.compute_logits(for_logits[rows])
        return logits, None if nxt is None else nxt[rows]


def _mark_frontier(cands: list[_Cand], depth: int, topk: int) -> None:
    """The topk best new candidates of this depth are fed at the next step."""
    level = sorted((c for c in cands if c.depth == depth), key=lambda c: -c.score)
    for c in level:
        c.fed = False
    for c in level[:topk]:
        c.fed = True


def _select(cands: list[_Cand], max_nodes: int) -> DraftTree:
    """The best max_nodes candidates by summed log-probability. A child never scores above its
    parent, and ties go to the shallower node, so the choice is ancestor-closed (a child whose
    parent float rounding left out is dropped)."""
    order = sorted(range(len(cands)), key=lambda j: (-cands[j].score, cands[j].depth, j))[:max_nodes]
    every = DraftTree([c.token for c in cands], [c.parent for c in cands])
    return every.subtree(order)
