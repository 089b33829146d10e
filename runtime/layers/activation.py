"""Gated activation layer."""
from __future__ import annotations

import torch
from sgl.kernels.activation import silu_and_mul
from torch import nn


class SiluAndMul(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (T, 2 * intermediate) -> (T, intermediate)
        return silu_and_mul(x)
