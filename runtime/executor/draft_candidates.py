"""The candidate tree a model drafter grows (runtime/executor/drafter.py): its nodes,
which of them run at the next step, the two batch layouts a tree step runs them in, and the
final choice of the draft.

Layouts of one tree step over the frontier (at most topk fed nodes per request, node at depth D
of a request whose first draft token sits at position/column `base` runs at position
base - 1 + D and sees the prefix, its ancestors and itself):
  - branch rows (`branch_batch`, DECODE): one row per node, a row of the drafter's table whose
    columns hold the prefix's slots, then its ancestors' and its own scratch slot (column =
    position). A chain (topk 1) uses request k's row k; a tree rows k * topk + n
    (`copy_prefixes` fills their prefix columns from the target's table once per proposal).
    What the draft CUDA graphs replay (runtime/executor/draft_graph_runner.py).
  - masked extend (`masked_batch`, EXTEND + custom mask): a request's frontier as extend rows on
    one row of its own, over the prefix and every scratch token placed so far; for trees whose
    frontier needs more rows than the drafter's table holds (always eager)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from sgl.runtime.cache.memory_pool import ReqTable, ReqToTokenPool
from sgl.runtime.executor.forward_batch import ForwardBatch
from sgl.runtime.speculative.tree import DraftTree


@dataclass
class Cand:
    token: int
    parent: int        # index of the parent candidate, -1 = the root
    score: float
    depth: int
    hidden: Optional[torch.Tensor] = None  # EAGLE: the draft hidden this node feeds its children
    placed: int = -1   # once run: >= 0 (masked layout: its column among the scratch tokens)
    slot: int = -1     # once run (branch layout): its scratch KV slot
    fed: bool = False  # among the topk best of its depth: runs at the next step


def mark_frontier(cands: list[Cand], depth: int, topk: int) -> None:
    """The topk best new candidates of this depth are fed at the next step."""
    level = sorted((c for c in cands if c.depth == depth), key=lambda c: -c.score)
    for c in level:
        c.fed = False
    for c in level[:topk]:
        c.fed = True


def frontier(cands: list[Cand], depth: int) -> list[int]:
    """Indices of the candidates that run at tree step `depth` (fed, of depth - 1, not run)."""
    return [j for j, c in enumerate(cands) if c.depth == depth - 1 and c.placed < 0 and c.fed]


def select(cands: list[Cand], max_nodes: int) -> DraftTree:
    """The best max_nodes candidates by summed log-probability. A child never scores above its
    parent, and ties go to the shallower node, so the choice is ancestor-closed (a child whose
    parent float rounding left out is dropped)."""
    order = sorted(range(len(cands)), key=lambda j: (-cands[j].score, cands[j].depth, j))[:max_nodes]
    every = DraftTree([c.token for c in cands], [c.parent for c in cands])
    return every.subtree(order)


def copy_prefixes(table: ReqToTokenPool, target_table: ReqToTokenPool, rows: list[int],
                  per_req: int, width: int) -> None:
    """Rows k * per_req .. k * per_req + per_req - 1 of the drafter's `table` get columns
    [0, width) of the target's row rows[k] (the request's prefix; later columns are the
    drafter's own writes, applied after this copy)."""
    src = torch.tensor(rows, dtype=torch.int64).repeat_interleave(per_req)
    src = src.to(target_table.req_to_token.device, non_blocking=True)
    table.req_to_token[:src.numel(), :width] = target_table.req_to_token[src, :width]


def branch_batch(base_rows: list[int], roots: list[int], cands: list[list[Cand]],
                 fronts: list[list[int]], slots: list[torch.Tensor], writes: ReqTable,
                 chain: bool) -> tuple[ForwardBatch, Optional[torch.Tensor]]:
    """One decode row per frontier node (fronts[k]: request k's, in its scratch slots[k]). A
    chain's row is the request's own (its ancestors' slots are there from the earlier steps);
    a tree's is branch row base_rows[k] + n, whose ancestor columns are rewritten (a node's row
    may differ from its parent's). Queues the table writes in `writes`; returns the batch and
    the stacked hidden states the nodes feed (EAGLE) or None."""
    ids, pos, locs, rows, hiddens = [], [], [], [], []
    for k, (rc, front) in enumerate(zip(cands, fronts)):
        for n, (j, slot) in enumerate(zip(front, slots[k].tolist())):
            node = rc[j]
            node.slot, node.placed = slot, n
            path = [node.slot] if chain else _path_slots(rc, j)
            row = base_rows[k] + (0 if chain else n)
            position = roots[k] - 1 + node.depth
            writes.write(row, position + 1 - len(path), torch.tensor(path, dtype=torch.int64))
            ids.append(node.token)
            pos.append(position)
            locs.append(node.slot)
            rows.append(row)
            if node.hidden is not None:
                hiddens.append(node.hidden)
    # each row sees columns [0, position]: prefix_len = position, extend_len 1 (DECODE)
    batch = ForwardBatch.build(ids, pos, locs, rows, pos, [1] * len(ids), list(range(len(ids))))
    return batch, (torch.stack(hiddens) if hiddens else None)


def masked_batch(base_rows: list[int], roots: list[int], cands: list[list[Cand]],
                 fronts: list[list[int]], slots: list[torch.Tensor],
                 writes: ReqTable) -> tuple[ForwardBatch, Optional[torch.Tensor]]:
    """Each request's frontier as extend rows on its row base_rows[k], over the prefix and every
    scratch token placed so far, under a custom mask (prefix + ancestors + self)."""
    ids, pos, locs, rows, prefix, extend, hiddens, masks = [], [], [], [], [], [], [], []
    for row, base, rc, front, mine in zip(base_rows, roots, cands, fronts, slots):
        if not front:
            continue
        num_placed = sum(c.placed >= 0 for c in rc)
        for n, j in enumerate(front):
            rc[j].placed = num_placed + n
        writes.write(row, base + num_placed, mine)  # base: first scratch column
        seq = base + num_placed + len(front)
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
        rows.append(row)
        prefix.append(seq - len(front))
        extend.append(len(front))
        masks.append(block)
    batch = ForwardBatch.build(ids, pos, locs, rows, prefix, extend, list(range(len(ids))))
    batch.set_custom_mask(masks)
    return batch, (torch.stack(hiddens) if hiddens else None)


def _path_slots(cands: list[Cand], j: int) -> list[int]:
    """The scratch slots of candidate j's ancestors (shallowest first) and its own."""
    path = []
    while j >= 0:
        path.append(cands[j].slot)
        j = cands[j].parent
    return path[::-1]
