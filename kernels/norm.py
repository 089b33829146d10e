"""RMSNorm: `rms_norm` / `fused_add_rms_norm` run the Triton kernels on CUDA tensors and the
`*_ref` references elsewhere; the references are also the oracle for the kernels.
Math is done in float32 whatever the input dtype; the result comes back in the input dtype."""
from __future__ import annotations

import torch

from sgl.kernels.dispatch import use_triton


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # x: (..., hidden)  weight: (hidden,)
    if use_triton(x):
        from sgl.kernels.triton import norm
        return norm.rms_norm(x, weight, eps)
    return rms_norm_ref(x, weight, eps)


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (rms_norm(x + residual), x + residual): the pre-norm block's residual stream update
    and the next sublayer's input in one pass."""
    if use_triton(x):
        from sgl.kernels.triton import norm
        return norm.fused_add_rms_norm(x, residual, weight, eps)
    return fused_add_rms_norm_ref(x, residual, weight, eps)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # x: (..., hidden)  weight: (hidden,)
    x_f32 = x.float()
    inv_rms = torch.rsqrt(x_f32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (x_f32 * inv_rms * weight.float()).to(x.dtype)


def fused_add_rms_norm_ref(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    new_residual = x.float() + residual.float()  # (..., hidden) float32
    inv_rms = torch.rsqrt(new_residual.pow(2).mean(dim=-1, keepdim=True) + eps)
    normed = new_residual * inv_rms * weight.float()
    return normed.to(x.dtype), new_residual.to(residual.dtype)
