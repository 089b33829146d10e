"""Speculative verify under CUDA graphs: one graph per captured batch size bs, each a target
forward over bs * N new tokens (N = num_draft_tokens) under the compact (bs, N, N) tree mask.

Layout (`ForwardBatch.rows_per_req = N`): request i owns rows [i * N, (i + 1) * N): its root, then
up to N - 1 draft nodes (a request that did not draft, or a short prompt chunk, has fewer rows).
The rest are padding: their K/V go to the pool's padding slot 0, the kernel never attends from
or to them (their attention output is zeros) and their logits are dropped. Requests past the
batch's own size, up to the captured size, have extend_len 0 and the reserved table row.

A step replays a graph when its batch carries `tree_mask` (the scheduler's compact layout), has
at most max(batch_sizes) requests and no request extends past N; anything else (a prompt chunk
longer than the largest tree, a full-layout mask) runs eagerly. The ragged rows are scattered
into the static buffers with one index tensor built on the host from `extend_lens_cpu` (no
device -> host sync), and the logits rows the batch asks for are gathered back with it.

Outputs: the final hidden states of every row, and the captured layers' (`layers_to_capture`,
EAGLE-3) when the model had them set at capture; the LM head runs after the replay on the rows
the batch samples. An EAGLE-3 drafter sets
them after start-up, so the first step that asks for hidden states with other layers set
recaptures every size (once; speculation runs with tp_size 1, so no other rank must follow)."""
from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from typing import Any

import torch

from sgl.runtime.executor.cuda_graph_runner import capture_graphs, release_graphs
from sgl.runtime.executor.forward_batch import ForwardBatch, ForwardMode

logger = logging.getLogger("sgl.runner")

MAX_VERIFY_BS = 64         # the default caps: verify batches are bs * N tokens
MAX_VERIFY_TOKENS = 1024


def verify_batch_sizes(decode_sizes: list[int], num_rows: int, max_bs: int = MAX_VERIFY_BS,
                       max_tokens: int = MAX_VERIFY_TOKENS) -> list[int]:
    return [bs for bs in decode_sizes if bs <= max_bs and bs * num_rows <= max_tokens]


@dataclass
class VerifyPlan:
    """Host side of one replay: the captured size, and the rows of the static buffers."""
    batch_size: int
    padded_bs: int
    num_tokens: int
    index: torch.Tensor  # (num_tokens [+ num_logits],) int64: each new token's static row, then
    has_logit_rows: bool  # (when logits_indices was still on the host) each logit row's source


class VerifyGraphRunner:
    def __init__(self, runner: Any, batch_sizes: list[int], num_rows: int, pool: Any = None,
                 use_graphs: bool = True) -> None:
        """use_graphs=False runs the static padded batch eagerly instead of replaying (checks the
        layout on the CPU)."""
        self.runner, self.model = runner, runner.model
        self.batch_sizes = sorted(set(batch_sizes))
        self.max_bs, self.num_rows = self.batch_sizes[-1], num_rows
        self.use_graphs = use_graphs
        self.num_replays = 0  # steps served from a graph (or the static batch)
        self._init_buffers()
        self._capture_all(pool)

    def _init_buffers(self) -> None:
        n, dev = self.max_bs * self.num_rows, self.runner.device
        self.dummy_row = self.runner.req_to_token_pool.dummy_row
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=dev)
        self.positions = torch.zeros(n, dtype=torch.int64, device=dev)
        self.out_cache_loc = torch.zeros(n, dtype=torch.int64, device=dev)  # slot 0: padding
        self.arange = torch.arange(n, dtype=torch.int64, device=dev)
        bs = self.max_bs
        self.req_pool_indices = torch.full((bs,), self.dummy_row, dtype=torch.int64, device=dev)
        self.prefix_lens = torch.zeros(bs, dtype=torch.int64, device=dev)
        self.extend_lens = torch.ones(bs, dtype=torch.int64, device=dev)
        self.seq_lens = torch.ones(bs, dtype=torch.int64, device=dev)
        self.tree_mask = torch.ones((bs, self.num_rows, self.num_rows), dtype=torch.bool,
                                    device=dev).tril()

    def _static_batch(self, bs: int) -> ForwardBatch:
        n = bs * self.num_rows
        b = ForwardBatch(
            forward_mode=ForwardMode.EXTEND, batch_size=bs, input_ids=self.input_ids[:n],
            positions=self.positions[:n], out_cache_loc=self.out_cache_loc[:n],
            req_pool_indices=self.req_pool_indices[:bs], prefix_lens=self.prefix_lens[:bs],
            extend_lens=self.extend_lens[:bs], seq_lens=self.seq_lens[:bs],
            logits_indices=self.arange[:n], tree_mask=self.tree_mask[:bs],
            rows_per_req=self.num_rows)
        b.req_to_token = self.runner.req_to_token_pool.req_to_token
        b.kv_pool, b.attn_backend = self.runner.kv_pool, self.runner.attn_backend
        return b

    def _forward(self, batch: ForwardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(final hidden states, the hidden states a drafter keeps) of every row. The LM head
        runs after the replay, on the rows that sample only: a graph's own (bs * N, vocab)
        float32 output would stay allocated per captured size (gigabytes at a 128k vocab)."""
        batch.attn_backend.init_forward_metadata(batch)
        hidden = self.model(batch.input_ids, batch.positions, batch)  # (bs * N, hidden)
        return hidden, hidden if batch.aux_hidden_states is None else batch.aux_hidden_states

    def _layers(self) -> tuple[int, ...]:
        return tuple(getattr(getattr(self.model, "model", None), "layers_to_capture", ()))

    @torch.inference_mode()
    def _capture_all(self, pool: Any = None) -> None:
        self.graphs: dict[int, Any] = {}
        self.outputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.batches = {bs: self._static_batch(bs) for bs in self.batch_sizes}
        self.layers_captured = self._layers()
        if not self.use_graphs:
            return
        self.graphs, self.outputs, self.pool = capture_graphs(self._forward, self.batches, pool)
        logger.info("Captured CUDA graphs for verify batch sizes %s (%d rows per request)",
                    self.batch_sizes, self.num_rows)

    # -- the step ------------------------------------------------------------------------------
    def plan(self, batch: ForwardBatch) -> VerifyPlan | None:
        """Host-only: how this batch replays, or None when it must run eagerly. Call before
        `batch.to(device)` so that the logit rows are mapped on the host too."""
        lens = batch.extend_lens_cpu
        if (batch.tree_mask is None or batch.custom_mask is not None or not lens
                or batch.batch_size > self.max_bs or max(lens) > self.num_rows
                or batch.tree_mask.shape[-1] > self.num_rows):
            return None
        bs, n = batch.batch_size, self.num_rows
        lens_t = torch.tensor(lens, dtype=torch.int64)
        # token t of request i, row j of it, goes to static row i * N + j = t + shift_i
        shift = torch.arange(bs, dtype=torch.int64) * n - (torch.cumsum(lens_t, 0) - lens_t)
        dst = torch.arange(int(lens_t.sum()), dtype=torch.int64) + torch.repeat_interleave(shift, lens_t)
        on_host = batch.logits_indices.device.type == "cpu"
        index = torch.cat([dst, dst[batch.logits_indices]]) if on_host else dst
        padded = self.batch_sizes[bisect.bisect_left(self.batch_sizes, bs)]
        return VerifyPlan(bs, padded, dst.numel(), index, on_host)

    def replay(self, batch: ForwardBatch, plan: VerifyPlan,
               keep_hidden: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits of batch.logits_indices, hidden states of the batch's rows when keep_hidden).
        The batch is on the device; `plan` is `self.plan(batch)` from before it moved."""
        if keep_hidden and self.use_graphs and self._layers() != self.layers_captured:
            logger.info("Recapturing the verify graphs for hidden states of layers %s", self._layers())
            release_graphs(self.graphs)
            self._capture_all(self.pool)
        index = plan.index
        if index.device != self.input_ids.device:
            if self.input_ids.device.type == "cuda":
                index = index.pin_memory()
            index = index.to(self.input_ids.device, non_blocking=True)
        dst = index[:plan.num_tokens]
        src = index[plan.num_tokens:] if plan.has_logit_rows else dst[batch.logits_indices]
        self._fill(batch, plan, dst)
        if self.use_graphs:
            self.graphs[plan.padded_bs].replay()
            final, kept = self.outputs[plan.padded_bs]
        else:
            final, kept = self._forward(self.batches[plan.padded_bs])
        self.num_replays += 1
        return self.model.compute_logits(final[src]), (kept[dst] if keep_hidden else None)

    def _fill(self, batch: ForwardBatch, plan: VerifyPlan, dst: torch.Tensor) -> None:
        bs, padded = plan.batch_size, plan.padded_bs
        self.out_cache_loc[:padded * self.num_rows].zero_()  # padding rows write slot 0
        self.out_cache_loc.index_copy_(0, dst, batch.out_cache_loc)
        self.input_ids.index_copy_(0, dst, batch.input_ids)
        self.positions.index_copy_(0, dst, batch.positions)
        for name in ("req_pool_indices", "prefix_lens", "extend_lens", "seq_lens"):
            getattr(self, name)[:bs].copy_(getattr(batch, name), non_blocking=True)
        if padded > bs:  # whole padding requests: nothing to attend
            self.req_pool_indices[bs:padded].fill_(self.dummy_row)
            self.prefix_lens[bs:padded].zero_()
            self.extend_lens[bs:padded].zero_()
            self.seq_lens[bs:padded].zero_()
        width = batch.tree_mask.shape[-1]
        self.tree_mask[:bs, :width, :width].copy_(batch.tree_mask, non_blocking=True)
