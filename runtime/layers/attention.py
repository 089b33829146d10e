"""The attention layer a model calls: it names its layer and head geometry and hands the work to
the step's backend, which owns the KV pool access."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from sgl.runtime.executor.forward_batch import ForwardBatch


class RadixAttention(nn.Module):
    def __init__(self, num_heads: int, head_dim: int, scaling: float, num_kv_heads: int,
                 layer_id: int, sliding_window: int | None = None, logit_cap: float = 0.0) -> None:
        super().__init__()
        # Per-rank head counts.
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scaling, self.layer_id = scaling, layer_id
        # Per-layer constants every backend honours (so CUDA graphs capture them as they are):
        # a query at position p sees keys at positions > p - sliding_window (0: all earlier keys),
        # and scores are soft-capped to logit_cap * tanh(s / logit_cap) when logit_cap > 0.
        self.sliding_window = int(sliding_window or 0)
        self.logit_cap = float(logit_cap or 0.0)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                batch: ForwardBatch) -> torch.Tensor:
        # q: (T, Hq * D)  k, v: (T, Hkv * D)  ->  (T, Hq * D)
        return batch.attn_backend.forward(q, k, v, self, batch)
