"""Rotary position embedding references in the HF "rotate_half" (neox) layout: the first half of
the rotated dims pairs with the second half. CPU path and oracle for the Triton kernel."""
from __future__ import annotations

import math

import torch

from sgl.kernels.dispatch import use_triton


def compute_inv_freq(rotary_dim: int, theta: float,
                     rope_scaling: dict | None = None) -> torch.Tensor:
    """Inverse frequencies (rotary_dim // 2,) float32 for rope_type default, "linear", "llama3"."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
    inv_freq = 1.0 / (theta ** exponents)
    rope_type = _rope_type(rope_scaling)
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / float(rope_scaling["factor"])
    if rope_type == "llama3":
        return _llama3_inv_freq(inv_freq, rope_scaling)
    raise ValueError(f"unsupported rope_type {rope_type!r}; supported: default, linear, llama3")


def _rope_type(rope_scaling: dict | None) -> str:
    if not rope_scaling:
        return "default"
    return rope_scaling.get("rope_type") or rope_scaling.get("type") or "default"


def _llama3_inv_freq(inv_freq: torch.Tensor, rope_scaling: dict) -> torch.Tensor:
    # Long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
    factor = float(rope_scaling["factor"])
    low_freq_factor = float(rope_scaling["low_freq_factor"])
    high_freq_factor = float(rope_scaling["high_freq_factor"])
    original_len = float(rope_scaling["original_max_position_embeddings"])
    low_freq_wavelen = original_len / low_freq_factor
    high_freq_wavelen = original_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def compute_cos_sin_cache(inv_freq: torch.Tensor, max_positions: int) -> torch.Tensor:
    """(max_positions, rotary_dim) float32: cat[cos, sin] of every position times every freq."""
    t = torch.arange(max_positions, dtype=torch.float32, device=inv_freq.device)
    freqs = torch.outer(t, inv_freq.float())  # (max_positions, rotary_dim // 2)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)


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
