"""Triton attention backend: split-K flash-decoding in DECODE mode, the paged extend kernel in
EXTEND mode, both reading the pool through req_to_token; K/V of new tokens stored by one Triton
launch per layer.

Per-step planning (`init_forward_metadata`) costs no host sync: DECODE needs only the number of
KV splits, a host int from the batch size; EXTEND needs each request's first row in q (a device
cumsum of extend_lens) and max(extend_lens), read from `batch.extend_lens_cpu`. The runner calls
it once per step after `batch.to(device)`; if it does not, the first layer's `forward` does.

CUDA graphs (DECODE mode). The runner, once, before capturing:
    backend.init_cuda_graph_state(max_bs, num_q_heads, num_kv_heads, v_head_dim, device)
which allocates the float32 split-K workspace for every batch size up to max_bs (the only
buffer the decode kernels use besides the batch's own tensors). Then for each captured batch
size, with a ForwardBatch whose tensors are slices of the runner's static buffers
(req_pool_indices, seq_lens, out_cache_loc, positions, input_ids):
    backend.init_forward_metadata(batch)   # outside or inside the capture: host math only
    ... capture the model forward ...
and before each replay, after copying the step's values into the static buffers, nothing more:
the kernels read seq_lens / req_pool_indices / out_cache_loc from those buffers, and the split
count depends on the batch size alone. Padded entries may carry seq_len 0 (their output is zeros)
or any valid row/slot (slot 0 is the pool's padding slot).

CUDA graphs (verify, EXTEND mode with `batch.tree_mask`; runtime/executor/verify_graph_runner.py).
The static batch sets `rows_per_req = N`: request i's rows start at i * N whatever its extend_len,
so planning is fixed per captured size (q_start = arange(bs) * N, computed inside the capture;
max_extend_len = N, a host int). Before each replay the runner copies prefix_lens, extend_lens
(padded requests: 0, the kernel skips them), req_pool_indices, out_cache_loc and the (bs, N, N)
tree mask into its static buffers. The attention output of padding rows is zeros.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from sgl.kernels.kv_store import store_kv
from sgl.kernels.triton._common import sm_count
from sgl.kernels.triton.decode_attention import (MAX_KV_SPLITS, decode_attention, num_kv_splits,
                                                workspace_numel)
from sgl.kernels.triton.extend_attention import extend_attention
from sgl.runtime.executor.attention.base import AttentionBackend
from sgl.runtime.executor.forward_batch import ForwardMode

if TYPE_CHECKING:
    from sgl.runtime.executor.forward_batch import ForwardBatch
    from sgl.runtime.layers.attention import RadixAttention


class TritonBackend(AttentionBackend):
    def __init__(self) -> None:
        self._planned: ForwardBatch | None = None  # the batch the metadata below belongs to
        self.max_splits = 1            # DECODE: KV splits per request (host int)
        self.q_start: torch.Tensor | None = None  # EXTEND: (bs,) first row of each request in q
        self.max_extend_len = 0        # EXTEND: host int
        self._num_sms: int | None = None
        self._workspace: torch.Tensor | None = None  # float32 split-K partials
        self._graph_workspaces: list[torch.Tensor] = []  # buffers captured graphs point to
        # --enable-deterministic-inference: DECODE takes MAX_KV_SPLITS whatever the batch (a
        # request's splits then follow its length alone), EXTEND one launch config.
        self.batch_invariant = False

    # -- planning ----------------------------------------------------------------------------
    def init_forward_metadata(self, batch: ForwardBatch) -> None:
        self._planned = batch
        if batch.forward_mode is ForwardMode.DECODE:
            self.max_splits = self._num_splits(batch.batch_size, batch.kv_pool.num_kv_heads
                                               if batch.kv_pool is not None else 1,
                                               batch.seq_lens.device)
            return
        self.q_start = _q_start(batch)
        if batch.rows_per_req:
            self.max_extend_len = batch.rows_per_req
        else:
            self.max_extend_len = (max(batch.extend_lens_cpu) if batch.extend_lens_cpu
                                   else int(batch.extend_lens.max()))  # syncs; callers set _cpu

    def init_cuda_graph_state(self, max_bs: int, num_q_heads: int, num_kv_heads: int,
                              v_head_dim: int, device: torch.device | str) -> None:
        """Allocate the decode workspace for every batch size up to max_bs (per-rank heads).
        Call once before capturing; captured graphs keep pointing at this buffer."""
        numel = max(workspace_numel(bs, num_q_heads, v_head_dim,
                                    self._num_splits(bs, num_kv_heads, torch.device(device)))
                    for bs in range(1, max_bs + 1))
        self._workspace = torch.empty(max(numel, 1), dtype=torch.float32, device=device)
        self._graph_workspaces.append(self._workspace)

    def _num_splits(self, batch_size: int, num_kv_heads: int, device: torch.device) -> int:
        if self.batch_invariant:
            return MAX_KV_SPLITS
        return num_kv_splits(batch_size, num_kv_heads, self._sm_count(device))

    def _sm_count(self, device: torch.device) -> int:
        if self._num_sms is None:
            self._num_sms = sm_count(device)
        return self._num_sms

    def _get_workspace(self, numel: int, device: torch.device) -> torch.Tensor:
        if self._workspace is None or self._workspace.numel() < numel:
            if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise RuntimeError("decode workspace too small during CUDA graph capture: call "
                                   "init_cuda_graph_state(max_bs, ...) with this model's heads")
            self._workspace = torch.empty(numel, dtype=torch.float32, device=device)
        return self._workspace

    # -- the layer ---------------------------------------------------------------------------
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                layer: RadixAttention, batch: ForwardBatch) -> torch.Tensor:
        if self._planned is not batch:
            self.init_forward_metadata(batch)
        num_tokens = q.shape[0]
        k_buffer, v_buffer = batch.kv_pool.get_kv(layer.layer_id)
        k_scale, v_scale = batch.kv_pool.get_scales(layer.layer_id)  # 1.0 unless FP8
        store_kv(k_buffer, v_buffer, batch.out_cache_loc,
                 k.view(num_tokens, layer.num_kv_heads, layer.head_dim),
                 v.view(num_tokens, layer.num_kv_heads, -1), k_scale, v_scale)
        q3 = q.view(num_tokens, layer.num_heads, layer.head_dim)  # (T, Hq, D)
        if not batch.kv_pool.is_fp8:  # FP8 tiles are widened to q's dtype in the kernels
            q3 = q3.to(k_buffer.dtype)
        if batch.forward_mode is ForwardMode.DECODE:
            need = workspace_numel(num_tokens, layer.num_heads, v_buffer.shape[-1], self.max_splits)
            out = decode_attention(q3, k_buffer, v_buffer, batch.req_to_token,
                                   batch.req_pool_indices, batch.seq_lens, layer.scaling,
                                   max_splits=self.max_splits,
                                   workspace=self._get_workspace(max(need, 1), q.device),
                                   sliding_window=layer.sliding_window, logit_cap=layer.logit_cap,
                                   k_scale=k_scale, v_scale=v_scale)
        else:
            if self.q_start is None or self.q_start.device != q.device:  # planned before .to()
                self.q_start = _q_start(batch)
            out = None
            if batch.rows_per_req:  # padding rows are never attended: give them zeros
                out = torch.zeros((num_tokens, layer.num_heads, v_buffer.shape[-1]),
                                  dtype=q3.dtype, device=q3.device)
            out = extend_attention(q3, k_buffer, v_buffer, batch.req_to_token,
                                   batch.req_pool_indices, batch.prefix_lens, batch.extend_lens,
                                   layer.scaling, q_start=self.q_start,
                                   max_extend_len=self.max_extend_len, out=out,
                                   custom_mask=batch.custom_mask, mask_indptr=batch.mask_indptr,
                                   tree_mask=batch.tree_mask, sliding_window=layer.sliding_window,
                                   logit_cap=layer.logit_cap, k_scale=k_scale, v_scale=v_scale,
                                   batch_invariant=self.batch_invariant)
        return out.view(num_tokens, -1).to(q.dtype)  # (T, Hq * Dv)


def _q_start(batch: ForwardBatch) -> torch.Tensor:
    """(bs,) first row of each request in q: packed (exclusive cumsum) or padded (i * N)."""
    if batch.rows_per_req:
        return torch.arange(batch.batch_size, device=batch.extend_lens.device) * batch.rows_per_req
    return torch.cumsum(batch.extend_lens, 0) - batch.extend_lens
