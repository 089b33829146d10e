"""Rotary position embedding references in the HF "rotate_half" (neox) layout: the first half of
the rotated dims pairs with the second half. CPU path and oracle for the Triton kernel. The
frequencies and cos/sin tables of each rope_type are in `rope_scaling`."""
from __future__ import annotations

import torch

from sgl.kernels.dispatch import use_triton
from sgl.kernels.rope_scaling import (  # noqa: F401 (the frequency helpers' public home was here)
    compute_cos_sin_cache,
    compute_inv_freq,
    rope_cos_sin_cache,
)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                 cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q (T, Hq, D) and k (T, Hk, D) by their positions (T,). The first rotary_dim =
    cos_sin_cache.shape[-1] dims of each head rotate; the rest (partial rotary) pass through.
    Returns new tensors and leaves q and k alone (on CUDA the Triton kernel writes fresh outputs,
    which moves the same bytes as rotating in place)."""
    if use_triton(q):
        from sgl.kernels.triton import rotary
        return rotary.rotary_embedding(q, k, positions, cos_sin_cache, inplace=False)
    return apply_rotary_ref(q, k, positions, cos_sin_cache)


def apply_rotary_ref(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                     cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cos_sin = cos_sin_cache.index_select(0, positions.long()).float()  # (T, rotary_dim)
    cos, sin = cos_sin.unsqueeze(1).chunk(2, dim=-1)  # (T, 1, rotary_dim // 2) each
    return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = cos.shape[-1]
    x_f32 = x.float()
    x1, x2 = x_f32[..., :half], x_f32[..., half:2 * half]
    rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, x_f32[..., 2 * half:]], dim=-1)
    return rotated.to(x.dtype)
