"""Token-granular KV memory: a per-layer K/V pool, a free-list allocator over its slots, and the
request -> token table that maps each request's positions to pool slots."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch

from sgl.kernels.fp8 import is_fp8
from sgl.kernels.kv_store import store_kv_ref


class MHATokenToKVPool:
    """K and V for every layer, one row per token slot. Slot 0 is a padding slot that is never
    handed out: padded batch entries write there harmlessly.

    `dtype` is what the buffers hold: the model's dtype, or an FP8 format (--kv-cache-dtype),
    half of bfloat16's bytes per token. An FP8 pool stores value / scale with one scale for K and
    one for V per layer (host floats, 1.0 unless the checkpoint gives them: `set_scales`);
    writers (`store_kv`) divide, readers (the attention kernels) multiply."""

    def __init__(self, size: int, num_kv_heads: int, head_dim: int, num_layers: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        self.size = size
        self.num_kv_heads, self.head_dim, self.num_layers = num_kv_heads, head_dim, num_layers
        self.dtype, self.device = dtype, torch.device(device)
        shape = (size + 1, num_kv_heads, head_dim)  # (slots, kv_heads, head_dim)
        self.k_buffer = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v_buffer = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.k_scales, self.v_scales = [1.0] * num_layers, [1.0] * num_layers

    @property
    def is_fp8(self) -> bool:
        return is_fp8(self.dtype)

    def set_scales(self, k_scales: Sequence[float], v_scales: Sequence[float]) -> None:
        """Per-layer K and V scales of an FP8 pool (set before anything is stored)."""
        if len(k_scales) != self.num_layers or len(v_scales) != self.num_layers:
            raise ValueError(f"{self.num_layers} layers need as many K and V scales, got "
                             f"{len(k_scales)} and {len(v_scales)}")
        if min(*k_scales, *v_scales) <= 0:
            raise ValueError("KV cache scales must be positive")
        self.k_scales, self.v_scales = [float(s) for s in k_scales], [float(s) for s in v_scales]

    def get_kv(self, layer_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k_buffer[layer_id], self.v_buffer[layer_id]

    def get_scales(self, layer_id: int) -> tuple[float, float]:
        """(k_scale, v_scale) of the layer: stored values times these are K and V."""
        return self.k_scales[layer_id], self.v_scales[layer_id]

    def set_kv(self, layer_id: int, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        # loc: (num_tokens,)  k, v: (num_tokens, kv_heads, head_dim)
        store_kv_ref(self.k_buffer[layer_id], self.v_buffer[layer_id], loc, k, v,
                     *self.get_scales(layer_id))

    def bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype.itemsize


class TokenAllocator:
    """Free list over slots 1..size of a KV pool. Works on CPU tensors so the scheduler never
    touches the device to allocate. Freed slots are kept as a list of chunks and joined to the
    free list only when an allocation needs them: a free costs its own size, not the pool's."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.clear()

    def clear(self) -> None:
        self._free = torch.arange(1, self.size + 1, dtype=torch.int64)
        self._freed: list[torch.Tensor] = []
        self._num_freed = 0

    def available_size(self) -> int:
        return int(self._free.numel()) + self._num_freed

    def alloc(self, num_tokens: int) -> Optional[torch.Tensor]:
        if num_tokens > self._free.numel():
            if num_tokens > self.available_size():
                return None
            self._free = torch.cat([self._free, *self._freed])
            self._freed, self._num_freed = [], 0
        out, self._free = self._free[:num_tokens], self._free[num_tokens:]
        return out

    def free(self, indices: torch.Tensor) -> None:
        if indices.numel():
            self._freed.append(indices.to(torch.int64).cpu())
            self._num_freed += int(indices.numel())

    def free_slots(self) -> list[int]:
        """Every free slot (for checks), in no particular order."""
        return torch.cat([self._free, *self._freed]).tolist()


TableWrites = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (rows, cols, slots), CPU int tensors


class ReqToTokenPool:
    """The runner's request -> token table on its device: row r, column i holds the KV slot of
    token i of the request holding row r. The scheduler decides every entry (`ReqTable`); the
    runner applies the writes it is sent, in one scatter per step."""

    def __init__(self, max_reqs: int, max_context_len: int, device: torch.device | str) -> None:
        self.max_reqs, self.max_context_len = max_reqs, max_context_len
        self.req_to_token = torch.zeros((max_reqs, max_context_len), dtype=torch.int32, device=device)
        # The last row is never handed out: its slots stay 0 (the KV padding slot), so padded
        # batch entries (CUDA graphs) can point at it.
        self.dummy_row = max_reqs - 1

    def apply(self, writes: Optional[TableWrites]) -> None:
        if writes is None:
            return
        rows, cols, vals = writes
        dev = self.req_to_token.device
        self.req_to_token[rows.to(dev, non_blocking=True), cols.to(dev, non_blocking=True)] = vals.to(dev, non_blocking=True)


class ReqTable:
    """The scheduler's side of the request -> token table: which rows are free, and the writes
    queued for the runner's copy (`ReqToTokenPool`). Writes are joined by `flush()` once per
    step and travel in the step's inputs, so a batch of hundreds of requests costs the runner
    one device copy, not hundreds, and the scheduler touches no device memory."""

    def __init__(self, max_reqs: int, max_context_len: int) -> None:
        self.max_reqs, self.max_context_len = max_reqs, max_context_len
        self._free_rows = list(range(max_reqs - 1))  # the last row is the runner's dummy row
        self._pending: list[tuple[int, int, torch.Tensor]] = []

    def available_size(self) -> int:
        return len(self._free_rows)

    def alloc(self) -> Optional[int]:
        return self._free_rows.pop() if self._free_rows else None

    def free(self, row: int) -> None:
        # Queued writes to a freed row are moot, and must not land on its next owner's data.
        self._pending = [w for w in self._pending if w[0] != row]
        self._free_rows.append(row)

    def write(self, row: int, start: int, slots: torch.Tensor) -> None:
        if slots.numel():
            self._pending.append((row, start, slots))

    def flush(self) -> Optional[TableWrites]:
        """The queued writes as (rows, cols, slots), emptied; None when there are none."""
        if not self._pending:
            return None
        lens = np.array([s.numel() for _, _, s in self._pending])
        first = np.cumsum(lens) - lens  # where each write starts in the flat list
        rows = torch.from_numpy(np.repeat(np.array([r for r, _, _ in self._pending]), lens))
        cols = np.repeat(np.array([c for _, c, _ in self._pending]) - first, lens)
        cols = torch.from_numpy(cols + np.arange(int(lens.sum())))
        vals = torch.cat([s for _, _, s in self._pending]).to(torch.int32)
        self._pending = []
        return rows, cols, vals
