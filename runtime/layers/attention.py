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
        # Scales of an FP8 KV cache (stored = value / scale) from the checkpoint, else 1.0.
        self.k_scale = self.v_scale = 1.0

    def set_kv_scale(self, which: str, value: float) -> None:
        """which: "k", "v" or "kv" (one scale for both)."""
        if not value > 0:
            raise ValueError(f"layer {self.layer_id}: KV cache scale must be positive, got {value}")
        if "k" in which:
            self.k_scale = value
        if "v" in which:
            self.v_scale = value

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                batch: ForwardBatch) -> torch.Tensor:
        # q: (T, Hq * D)  k, v: (T, Hkv * D)  ->  (T, Hq * D)
        return batch.attn_backend.forward(q, k, v, self, batch)


def kv_cache_scales(model: nn.Module) -> tuple[list[float], list[float]]:
    """(k_scales, v_scales) of the model's attention layers, by layer id."""
    layers = sorted((m for m in model.modules() if isinstance(m, RadixAttention)),
                    key=lambda m: m.layer_id)
    return [m.k_scale for m in layers], [m.v_scale for m in layers]
