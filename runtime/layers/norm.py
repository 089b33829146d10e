"""RMSNorm layer on the reference kernels (Triton versions plug in behind the same functions)."""
from __future__ import annotations

import torch
from sgl.kernels.norm import fused_add_rms_norm, rms_norm
from sgl.runtime.layers.lazy_tensor import full_weight
from sgl.runtime.layers.linear import default_weight_loader
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6,
                 params_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dtype = params_dtype or torch.get_default_dtype()
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype), requires_grad=False)
        self.weight.weight_loader = default_weight_loader
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Without residual: norm(x). With residual: (norm(x + residual), x + residual)."""
        if residual is None:
            return rms_norm(x, self.weight, self.eps)
        return fused_add_rms_norm(x, residual, self.weight, self.eps)


class GemmaRMSNorm(RMSNorm):
    """Gemma's RMSNorm scales by (1 + weight), the checkpoint holding the offset from 1. The
    parameter keeps 1 + weight in float32, computed once at load, as transformers computes it
    (in float32) at every call; the forward is then RMSNorm's."""

    def __init__(self, hidden_size: int, eps: float = 1e-6,
                 params_dtype: torch.dtype | None = None) -> None:
        super().__init__(hidden_size, eps, torch.float32)
        self.weight.weight_loader = self.weight_loader

    @staticmethod
    def weight_loader(param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        default_weight_loader(param, full_weight(loaded).float() + 1.0)
