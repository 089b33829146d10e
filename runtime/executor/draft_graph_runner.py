"""A model drafter's tree steps under CUDA graphs.

A tree step (runtime/executor/drafter.py) runs the draft model over the frontier: at
most topk nodes per request, each a new token at position base - 1 + depth that attends to its
request's prefix, its own ancestors and itself. Laid out as one sequence per node (a "branch
row", runtime/executor/draft_candidates.py: a table row holding the prefix's slots, then its
ancestors' and its own scratch slot, column = position), every step is a DECODE batch of the
draft model: one token per row, the decode attention kernel, no mask, on rows of the drafter's
own request->token table (`drafter.table`).

This runner replays those steps: one graph per captured row count (topk x the target's decode
sizes, up to MAX_DRAFT_ROWS), static buffers for input_ids, positions, out_cache_loc,
req_pool_indices, seq_lens (and hidden_in, the (rows, H) draft hidden states an EAGLE / EAGLE-3
head reads), rows padded up to the nearest captured size with the table's reserved dummy row
and the pool's padding slot 0 (as CudaGraphRunner does). The drafter's attention backend is its
own instance: `init_cuda_graph_state` gives it a decode workspace for the draft's heads. The
graph ends in the top-k of each row's log-softmax (ids mapped to the target vocabulary), so what
comes back is small: (rows, topk) values and ids, and the next hidden states (EAGLE).

What stays eager: the catch-up extend (ragged; a one-token catch-up is decode-shaped but reads
the target's hidden states), a step with more rows than the largest captured size, the masked
steps of a tree too wide for the branch table, and everything where the target has no decode
graphs (CPU, --disable-cuda-graph, a backend other than triton). The graphs share the target's
graph memory pool: a draft graph's outputs are read (`tolist`, or copied into the next step's
hidden_in) before any target graph replays, and the target's are consumed before the drafter
runs, so neither clobbers the other's live data. `use_graphs=False` runs the static padded
batch eagerly instead (checks the layout on the CPU)."""
from __future__ import annotations

import bisect
import logging
from typing import Any, Optional

import torch

from sgl.runtime.executor.cuda_graph_runner import DecodeBuffers, capture_graphs
from sgl.runtime.executor.forward_batch import ForwardBatch, ForwardMode
from sgl.runtime.layers.attention import RadixAttention

logger = logging.getLogger("sgl.runner")

MAX_DRAFT_ROWS = 64  # the largest draft step captured (and the rows of a tree's branch table)

DraftOutput = tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]  # (vals, ids, hidden)


def draft_batch_sizes(decode_sizes: list[int], topk: int,
                      max_rows: int = MAX_DRAFT_ROWS) -> list[int]:
    """Row counts to capture: topk rows for each of the target's decode batch sizes."""
    return sorted({bs * topk for bs in decode_sizes if bs * topk <= max_rows})


class DraftGraphRunner:
    def __init__(self, drafter: Any, batch_sizes: list[int], pool: Any = None,
                 use_graphs: bool = True) -> None:
        """drafter: the ModelDrafter (its model, KV pool, attention backend, `table` and
        `run_model`). use_graphs=False runs the static padded batch eagerly instead."""
        self.drafter = drafter
        self.batch_sizes = sorted(set(batch_sizes))
        self.max_bs = self.batch_sizes[-1]
        self.use_graphs = use_graphs
        self.num_replays = 0  # tree steps served from a graph (or the static batch)
        self.graphs: dict[int, Any] = {}
        self._init_buffers()
        self._capture_all(pool)

    def _init_buffers(self) -> None:
        n, dev, d = self.max_bs, self.drafter.runner.device, self.drafter
        self.buffers = DecodeBuffers(n, dev, d.table.dummy_row)
        self.hidden_in = None  # (n, H): the draft's own hidden states (EAGLE tree steps)
        if d.needs_hidden:
            self.hidden_in = torch.zeros((n, d.model.hidden_size), dtype=d.runner.dtype, device=dev)
        if self.use_graphs:  # the drafter's backend: a decode workspace of its own heads
            attn = next(m for m in d.model.modules() if isinstance(m, RadixAttention))
            d.attn_backend.init_cuda_graph_state(n, attn.num_heads, attn.num_kv_heads,
                                                 attn.head_dim, dev)

    def _static_batch(self, bs: int) -> ForwardBatch:
        d = self.drafter
        return self.buffers.batch(bs, d.table.req_to_token, d.kv_pool, d.attn_backend)

    def _forward(self, batch: ForwardBatch) -> DraftOutput:
        hidden_in = None if self.hidden_in is None else self.hidden_in[:batch.batch_size]
        return self.drafter.run_model(batch, hidden_in)

    @torch.inference_mode()
    def _capture_all(self, pool: Any) -> None:
        self.batches = {bs: self._static_batch(bs) for bs in self.batch_sizes}
        if not self.use_graphs:
            return
        self.graphs, self.outputs, self.pool = capture_graphs(self._forward, self.batches, pool)
        logger.info("Captured CUDA graphs for draft steps of %s rows", self.batch_sizes)

    # -- the step ------------------------------------------------------------------------------
    def can_run(self, batch: ForwardBatch) -> bool:
        """A decode batch on the rows table, of a captured size, graphs not yet released."""
        return (batch.forward_mode is ForwardMode.DECODE and batch.batch_size <= self.max_bs
                and batch.req_to_token is self.drafter.table.req_to_token
                and (bool(self.graphs) or not self.use_graphs))

    def replay(self, batch: ForwardBatch, hidden_in: Optional[torch.Tensor]) -> DraftOutput:
        """(top-k log-probabilities, their target ids, next hidden states or None) of every row
        of `batch` (on the device). The tensors are views of the graph's outputs: read them
        before the next replay."""
        bs = batch.batch_size
        padded = self.batch_sizes[bisect.bisect_left(self.batch_sizes, bs)]
        self.buffers.fill(batch, padded)
        if self.hidden_in is not None:
            self.hidden_in[:bs].copy_(hidden_in, non_blocking=True)
        if self.use_graphs:
            self.graphs[padded].replay()
            vals, ids, hidden = self.outputs[padded]
        else:  # the torch path reads prefix_lens, which the replayed decode kernels do not
            static = self.batches[padded]
            static.prefix_lens = static.seq_lens - 1
            vals, ids, hidden = self._forward(static)
        self.num_replays += 1
        return vals[:bs], ids[:bs], None if hidden is None else hidden[:bs]
