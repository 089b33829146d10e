"""Gated-MLP activations over x = cat[gate, up] on the last dim: the Triton kernel on CUDA
tensors, the references (CPU path and oracle for the kernel) elsewhere."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sgl.kernels.dispatch import use_triton


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, in x's dtype (SwiGLU: Llama, Qwen, Mistral, Phi-3, the MoE experts)."""
    if use_triton(x):
        from sgl.kernels.triton import activation
        return activation.silu_and_mul(x)
    return silu_and_mul_ref(x)


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    """gelu(gate, approximate="tanh") * up, in x's dtype (GeGLU: Gemma 2 and 3)."""
    if use_triton(x):
        from sgl.kernels.triton import activation
        return activation.gelu_tanh_and_mul(x)
    return gelu_tanh_and_mul_ref(x)


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    # x: (..., 2 * d) -> (..., d)
    d = x.shape[-1] // 2
    x_f32 = x.float()
    return (F.silu(x_f32[..., :d]) * x_f32[..., d:]).to(x.dtype)


def gelu_tanh_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    x_f32 = x.float()
    return (F.gelu(x_f32[..., :d], approximate="tanh") * x_f32[..., d:]).to(x.dtype)
