"""y = x W^T (+ b). cuBLAS, except a single row (batch-1 decode) against a large weight on CUDA:
there the Triton GEMV (kernels/triton/gemv.py) moves the weight bytes faster than cuBLAS's choice
(scripts/gemv_probe.py on an H100: 78 vs 83 us for 4096 x 28672, 333 vs 377 us for the LM head)."""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from sgl.kernels import use_triton

# Below this many weight elements cuBLAS was as fast or faster (qkv, o_proj of the 8B shape).
GEMV_MIN_NUMEL = 48 * 1024 * 1024
# SGL_DISABLE_GEMV=1: cuBLAS everywhere (to compare the two in one run).
_GEMV = os.environ.get("SGL_DISABLE_GEMV", "0").lower() in ("", "0", "false", "no")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    if (_GEMV and x.dim() == 2 and x.shape[0] == 1 and weight.numel() >= GEMV_MIN_NUMEL
            and x.dtype in (torch.bfloat16, torch.float16) and weight.dtype == x.dtype
            and weight.stride(1) == 1 and use_triton(x)):
        from sgl.kernels.triton.gemv import gemv
        return gemv(x.contiguous(), weight, bias)
    return F.linear(x, weight, bias)
