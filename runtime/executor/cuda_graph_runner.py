"""Decode under CUDA graphs: one graph per captured batch size, replayed on static buffers; a
batch is padded up to the nearest captured size. Padded rows point at a reserved table row whose
slots are the pool's padding slot, so they read and write nothing that matters."""
from __future__ import annotations

import bisect
import logging
from collections.abc import Callable
from typing import Any

import torch

from sgl.runtime.executor.forward_batch import ForwardBatch, ForwardMode

logger = logging.getLogger("sgl.runner")


def default_batch_sizes(max_bs: int) -> list[int]:
    sizes = [1, 2, 4, 8, 12] + list(range(16, 257, 8)) + list(range(272, 1025, 16))
    return [bs for bs in sizes if bs <= max_bs]


def auto_max_bs(total_gpu_bytes: int) -> int:
    """SGLang's rule of thumb: larger cards decode larger batches (256 on an 80 GB card)."""
    gib = total_gpu_bytes / (1 << 30)
    return 256 if gib >= 60 else 160 if gib >= 35 else 128 if gib >= 20 else 64


def capture_graphs(forward: Callable[[ForwardBatch], Any], batches: dict[int, ForwardBatch],
                   pool: Any = None) -> tuple[dict[int, torch.cuda.CUDAGraph], dict[int, Any], Any]:
    """One graph of forward(batch) per batch size, largest first (later graphs reuse its memory),
    each after two warm-up runs (Triton compiles, cuBLAS picks its kernels), all in one memory
    pool. Returns (graphs, their outputs, the pool)."""
    graphs, outputs = {}, {}
    stream = torch.cuda.Stream()
    torch.cuda.synchronize()
    for bs in sorted(batches, reverse=True):
        with torch.cuda.stream(stream):
            for _ in range(2):
                forward(batches[bs])
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=stream):
            outputs[bs] = forward(batches[bs])
        graphs[bs], pool = graph, graph.pool()
    torch.cuda.synchronize()
    return graphs, outputs, pool


def release_graphs(graphs: dict[int, torch.cuda.CUDAGraph]) -> None:
    """Reset the graphs now (their executables and pool references go), rather than whenever a
    collector gets to them: one destroyed during another capture breaks that capture, and live
    graphs that captured NCCL collectives block destroy_process_group (pytorch/pytorch#115388)."""
    for graph in graphs.values():
        graph.reset()
    graphs.clear()


class DecodeBuffers:
    """The static inputs of decode graphs (one token per row), up to n rows: a step's rows are
    copied in, and rows past them up to the captured size are padding on the table's reserved
    row, writing the pool's padding slot 0. The target's decode graphs and a drafter's tree-step
    graphs (draft_graph_runner.py) both replay on these."""

    def __init__(self, n: int, device: torch.device, dummy_row: int) -> None:
        self.dummy_row = dummy_row
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.out_cache_loc = torch.zeros(n, dtype=torch.int64, device=device)  # slot 0: padding
        self.req_pool_indices = torch.full((n,), dummy_row, dtype=torch.int64, device=device)
        self.seq_lens = torch.ones(n, dtype=torch.int64, device=device)
        self.ones = torch.ones(n, dtype=torch.int64, device=device)
        self.arange = torch.arange(n, dtype=torch.int64, device=device)

    def batch(self, bs: int, req_to_token: torch.Tensor, kv_pool: Any,
              attn_backend: Any) -> ForwardBatch:
        b = ForwardBatch(
            forward_mode=ForwardMode.DECODE, batch_size=bs, input_ids=self.input_ids[:bs],
            positions=self.positions[:bs], out_cache_loc=self.out_cache_loc[:bs],
            req_pool_indices=self.req_pool_indices[:bs],
            prefix_lens=self.seq_lens[:bs] - 1,  # as captured; decode kernels read seq_lens only
            extend_lens=self.ones[:bs], seq_lens=self.seq_lens[:bs],
            logits_indices=self.arange[:bs])
        b.req_to_token = req_to_token
        b.kv_pool, b.attn_backend = kv_pool, attn_backend
        return b

    def fill(self, batch: ForwardBatch, padded: int) -> None:
        """Copy a decode batch's rows in; rows [batch_size, padded) become padding."""
        bs = batch.batch_size
        for name in ("input_ids", "positions", "out_cache_loc", "req_pool_indices", "seq_lens"):
            getattr(self, name)[:bs].copy_(getattr(batch, name), non_blocking=True)
        if padded > bs:  # the dummy row, one key, K/V to slot 0
            self.out_cache_loc[bs:padded].zero_()
            self.req_pool_indices[bs:padded].fill_(self.dummy_row)
            self.seq_lens[bs:padded].fill_(1)


class CudaGraphRunner:
    def __init__(self, runner: Any, batch_sizes: list[int]) -> None:
        self.runner, self.model = runner, runner.model
        self.batch_sizes = sorted(set(batch_sizes))
        self.max_bs = self.batch_sizes[-1]
        self._init_buffers()
        self._capture_all()

    def _init_buffers(self) -> None:
        n, dev = self.max_bs, self.runner.device
        self.buffers = DecodeBuffers(n, dev, self.runner.req_to_token_pool.dummy_row)
        L = self.runner.loaded
        num_q_heads = L.hf_config.num_attention_heads // self.runner.tp_size
        self.runner.attn_backend.init_cuda_graph_state(n, num_q_heads, L.num_kv_heads, L.head_dim, dev)

    def _static_batch(self, bs: int) -> ForwardBatch:
        r = self.runner
        return self.buffers.batch(bs, r.req_to_token_pool.req_to_token, r.kv_pool, r.attn_backend)

    def _forward(self, batch: ForwardBatch) -> torch.Tensor:
        batch.attn_backend.init_forward_metadata(batch)
        hidden = self.model(batch.input_ids, batch.positions, batch)  # (bs, hidden)
        return self.model.compute_logits(hidden)                       # (bs, vocab) float32

    @torch.inference_mode()
    def _capture_all(self) -> None:
        self.batches = {bs: self._static_batch(bs) for bs in self.batch_sizes}
        # self.pool: the memory pool of these graphs; the verify graphs share it
        self.graphs, self.outputs, self.pool = capture_graphs(self._forward, self.batches)
        logger.info("Captured CUDA graphs for decode batch sizes %s", self.batch_sizes)

    def can_run(self, batch: ForwardBatch) -> bool:
        return batch.forward_mode is ForwardMode.DECODE and batch.batch_size <= self.max_bs

    def replay(self, batch: ForwardBatch) -> torch.Tensor:
        bs = batch.batch_size
        padded = self.batch_sizes[bisect.bisect_left(self.batch_sizes, bs)]
        self.buffers.fill(batch, padded)
        self.graphs[padded].replay()
        return self.outputs[padded][:bs]
