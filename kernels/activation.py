"""Gated-MLP activation reference (CPU path and oracle for the Triton kernel)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x = cat[gate, up] on the last dim -> silu(gate) * up, in x's dtype."""
    # x: (..., 2 * d) -> (..., d)
    d = x.shape[-1] // 2
    x_f32 = x.float()
    return (F.silu(x_f32[..., :d]) * x_f32[..., d:]).to(x.dtype)
