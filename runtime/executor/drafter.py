"""Drafting with a model, in the runner: a STANDALONE small model with the target's tokenizer, or an
EAGLE / EAGLE-3 head fed the target's hidden states. The scheduler's `SpecDecoder` asks for trees
through `Runner.draft` with plain data (runtime/scheduler/contract.py: `DraftRequest`).

The draft's KV pool has as many slots as the target's and is indexed by the same slots: the draft
K/V of position i sits in the slot holding the target K/V of position i. The radix cache and
retraction therefore carry draft KV along with the target's for free. Positions the draft fills
beyond the sequence go to the scratch slots the scheduler lent for this call.

The drafter writes no entry of the target's request -> token table (the scheduler's `KVManager`
owns it): it works on rows of its own `table`, whose prefix columns it copies from the target's
rows at the start of each proposal. Drafting one step for a batch of requests of lengths S (the
target holds K/V of positions [0, S - 1)):
  1. catch-up: one causal extend over the positions the draft has not seen. A STANDALONE model
     reads token i at position i, up to and including the root S - 1 (in a scratch slot). An
     EAGLE head reads (target hidden h_i, token i + 1) at position i, up to S - 2. The last row
     gives the first level of candidates.
  2. num_steps - 1 tree steps: the frontier (the topk best candidates so far) runs at depth d in
     scratch slots, attending to the prefix and its own ancestors; each frontier node proposes
     topk children scored by summed log-probabilities.
  3. The best max_nodes candidates (ancestor-closed) form the draft tree.

A tree step is a DECODE batch of one row per frontier node, each on a row of `table` (a chain: the
request's row k; a tree: rows k * topk + n; draft_candidates.py: "branch rows"). It replays CUDA
graphs (`graph_runner`, draft_graph_runner.py) where the target decodes under graphs and the rows
fit a captured size; else it runs eagerly. A tree whose frontier needs more rows than `table`
holds runs its steps as eager masked extends on one row per request instead. The catch-up extend
is always eager."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Optional

import torch
import torch.distributed as dist

from sgl.runtime.cache.memory_pool import MHATokenToKVPool, ReqTable, ReqToTokenPool
from sgl.runtime.executor import draft_candidates as candidates
from sgl.runtime.executor.attention import get_attention_backend
from sgl.runtime.executor.draft_candidates import Cand
from sgl.runtime.executor.draft_graph_runner import MAX_DRAFT_ROWS, DraftOutput
from sgl.runtime.executor.forward_batch import ForwardBatch
from sgl.runtime.layers.embedding import VocabParallelEmbedding
from sgl.runtime.scheduler.contract import DraftRequest, Observation
from sgl.runtime.speculative.tree import DraftTree

logger = logging.getLogger("sgl.speculative")

MODEL_ALGORITHMS = ("EAGLE", "EAGLE3", "STANDALONE")


def make_drafter(server_args: Any, runner: Any, vocab: Optional[Any]) -> Optional[ModelDrafter]:
    if server_args.speculative_algorithm not in MODEL_ALGORITHMS:
        return None
    return ModelDrafter(server_args, runner, vocab)


def shared_vocab_tables(runner: Any) -> Optional[Any]:
    """Tensor parallelism with an EAGLE head: the head borrows the target's embedding and LM
    head, which are split by vocabulary over the ranks. Every rank joins one all-gather of them
    at start-up, so that rank 0's drafter holds whole (one-rank) copies and drafts with no
    collectives. Returns a stand-in target for `load_draft_model` (None without EAGLE)."""
    if runner.args.speculative_algorithm not in ("EAGLE", "EAGLE3"):
        return None
    model = runner.model
    embed = _gathered(model.model.embed_tokens, runner.device)
    head = embed if model.lm_head is model.model.embed_tokens else _gathered(model.lm_head, runner.device)
    return SimpleNamespace(model=SimpleNamespace(embed_tokens=embed), lm_head=head, config=model.config)


def _gathered(table: VocabParallelEmbedding, device: torch.device) -> VocabParallelEmbedding:
    parts = [torch.empty_like(table.weight) for _ in range(table.tp_size)]
    dist.all_gather(parts, table.weight.data.contiguous())
    whole = VocabParallelEmbedding(table.num_embeddings, table.embedding_dim,
                                   params_dtype=table.weight.dtype).to(device)
    whole.weight.data.copy_(torch.cat(parts)[:table.num_embeddings])
    return whole


@dataclass
class _DraftState:
    admission: int = -1
    done: int = 0                                   # draft KV covers positions [0, done)
    pending: list[torch.Tensor] = field(default_factory=list)  # target hidden of [done, ...)


class ModelDrafter:
    def __init__(self, server_args: Any, runner: Any, vocab: Optional[Any] = None) -> None:
        self.args, self.runner = server_args, runner
        self.algorithm = server_args.speculative_algorithm
        self.num_steps, self.topk, num_draft_tokens = server_args.speculative_settings()
        self.max_nodes = num_draft_tokens - 1
        self.needs_hidden = self.algorithm in ("EAGLE", "EAGLE3")
        self.shift = 1 if self.needs_hidden else 0  # EAGLE: position i reads token i + 1
        self._load(server_args.speculative_draft_model_path, vocab)
        self.kv_pool = MHATokenToKVPool(runner.max_total_tokens, self.num_kv_heads, self.head_dim,
                                        self.num_layers, runner.dtype, runner.device)
        self.attn_backend = get_attention_backend(runner._attention_backend_name())()
        self.states: dict[str, _DraftState] = {}
        # The drafter's own rows: a chain per running request, or topk branch rows per request.
        width = runner.req_to_token_pool.max_context_len
        rows = max(MAX_DRAFT_ROWS, runner.max_running_requests) + 1  # the last: the dummy row
        self.table = ReqToTokenPool(rows, width, runner.device)
        self.writes = ReqTable(rows, width)  # this call's writes, applied in one scatter per step
        self.max_rows = rows - 1
        self.graph_runner: Any = None  # set by the runner once the target's graphs are captured

    def _load(self, path: str, vocab: Optional[Any]) -> None:
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
        info = load_draft_model(path, vocab or runner.model, runner.dtype, runner.device)
        if info.model.is_eagle3 != (self.algorithm == "EAGLE3"):
            kind = "EAGLE-3" if info.model.is_eagle3 else "EAGLE"
            raise ValueError(f"{path} holds an {kind} head; pass speculative_algorithm="
                             f"{'EAGLE3' if info.model.is_eagle3 else 'EAGLE'}")
        self.model, self.draft_to_target = info.model, info.model.draft_to_target
        self.num_layers, self.num_kv_heads, self.head_dim = info.num_layers, info.num_kv_heads, info.head_dim
        if info.model.is_eagle3:
            runner.model.model.layers_to_capture = tuple(info.target_layers_to_capture)

    def close(self) -> None:
        """Before another drafter replaces this one: the target stops capturing for it."""
        if self.needs_hidden:
            self.runner.model.model.layers_to_capture = ()

    # -- what the target steps told us ---------------------------------------------------------
    def observe(self, observed: list[Observation], hidden: Optional[torch.Tensor]) -> None:
        """The target computed K/V of each request's positions [start, start + rows) in the last
        step; `hidden` (EAGLE) holds their states at those rows."""
        for obs in observed:
            state = self.states.get(obs.rid)
            if state is None or state.admission != obs.admission:
                state = self.states[obs.rid] = _DraftState(admission=obs.admission, done=obs.start)
            if self.needs_hidden and hidden is not None and obs.rows:
                index = torch.tensor(obs.rows, dtype=torch.int64).to(hidden.device, non_blocking=True)
                state.pending.append(hidden.index_select(0, index))

    def release(self, rids: list[str]) -> None:
        for rid in rids:
            self.states.pop(rid, None)

    # -- drafting ----------------------------------------------------------------------------
    @torch.inference_mode()
    def propose(self, reqs: list[DraftRequest]) -> list[DraftTree]:
        trees = [DraftTree() for _ in reqs]
        work = [(i, r) for i, r in enumerate(reqs) if r.max_nodes > 0 and self._ready(r)]
        if not work:
            return trees
        drafting = [r for _, r in work]
        by_rows = len(drafting) * self.topk <= self.max_rows
        per_req = self.topk if by_rows else 1
        base_rows = [k * per_req for k in range(len(drafting))]
        width = max(r.num_computed for r in drafting) + 1
        candidates.copy_prefixes(self.table, self.runner.req_to_token_pool, [r.row for r in drafting],
                                 per_req, width)
        scratch = _Scratch(drafting)
        first, roots = self._catch_up(drafting, base_rows, per_req, scratch)
        cands = self._children(first, [(-1, 0.0)] * len(work), depth=1)
        for req_cands in cands:
            candidates.mark_frontier(req_cands, 1, self.topk)
        for step in range(1, self.num_steps):
            if not self._tree_step(drafting, base_rows, roots, cands, scratch, step + 1, by_rows):
                break
        for (i, r), req_cands in zip(work, cands):
            trees[i] = candidates.select(req_cands, min(r.max_nodes, self.max_nodes))
        return trees

    def _ready(self, req: DraftRequest) -> bool:
        state = self.states.get(req.rid)
        if state is None or state.admission != req.admission:
            return False
        if self.needs_hidden:
            if state.done >= req.num_computed:  # not run since the last draft: nothing to feed
                return False
            have = sum(int(h.shape[0]) for h in state.pending)
            if state.done + have != req.num_computed:  # hidden states missing: skip drafting
                return False
        return True

    def _catch_up(self, reqs: list[DraftRequest], base_rows: list[int], per_req: int,
                  scratch: _Scratch):
        """One causal extend over each request's unseen positions. Returns the draft's output
        (top-k, hidden) of each request's last row and the column where its scratch tokens
        start (the position of its first draft token)."""
        ids, pos, locs, prefix, extend, logit_rows, hiddens, roots = [], [], [], [], [], [], [], []
        for k, req in enumerate(reqs):
            state = self.states[req.rid]
            seq = len(req.token_ids)
            end = seq - self.shift  # positions [done, end)
            start = min(state.done, end - 1)
            slots = req.kv_slots[start:min(end, seq - 1)]
            if self.shift == 0:  # the root's draft K/V: a scratch slot at column seq - 1
                root = scratch.take(k, 1)
                slots = torch.cat([slots, root])
                for row in range(base_rows[k], base_rows[k] + per_req):
                    self.writes.write(row, seq - 1, root)
            ids.extend(req.token_ids[start + self.shift:end + self.shift])
            pos.extend(range(start, end))
            locs.extend(slots.tolist())
            prefix.append(start)
            extend.append(end - start)
            logit_rows.append(len(ids) - 1)
            roots.append(end)
            if self.needs_hidden:
                pend = torch.cat(state.pending) if len(state.pending) > 1 else state.pending[0]
                hiddens.append(pend[start - state.done:])
                state.pending = []
            state.done = min(end, req.num_computed)
        self.table.apply(self.writes.flush())
        batch = ForwardBatch.build(ids, pos, locs, base_rows, prefix, extend, logit_rows)
        hidden_in = torch.cat(hiddens) if hiddens else None
        return self._forward(batch, hidden_in), roots

    def _tree_step(self, reqs: list[DraftRequest], base_rows: list[int], roots: list[int],
                   cands: list[list[Cand]], scratch: _Scratch, depth: int, by_rows: bool) -> bool:
        """Run the frontier (candidates of depth - 1) in scratch slots, on branch rows or as a
        masked extend (draft_candidates.py), and add its children."""
        fronts = [candidates.frontier(rc, depth) for rc in cands]
        if not any(fronts):
            return False
        slots = [scratch.take(k, len(f)) for k, f in enumerate(fronts)]
        if by_rows:
            batch, hidden_in = candidates.branch_batch(base_rows, roots, cands, fronts, slots,
                                                       self.writes, chain=self.topk == 1)
        else:
            batch, hidden_in = candidates.masked_batch(base_rows, roots, cands, fronts, slots, self.writes)
        self.table.apply(self.writes.flush())
        vals, ids, hidden = self._forward(batch, hidden_in, is_tree_step=by_rows)
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
        batch.req_to_token = self.table.req_to_token
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


class _Scratch:
    """The scratch slots each request lent for this proposal, handed out in order."""

    def __init__(self, reqs: list[DraftRequest]) -> None:
        self.slots = [r.scratch for r in reqs]
        self.used = [0] * len(reqs)

    def take(self, k: int, n: int) -> torch.Tensor:
        out = self.slots[k][self.used[k]:self.used[k] + n]
        assert out.numel() == n, "a proposal used more scratch than the scheduler lent"
        self.used[k] += n
        return out
