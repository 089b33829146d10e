"""Rotary embedding layer: a cos/sin table for every position up to max_position, built once in
float32 and indexed by position at each step."""
from __future__ import annotations

import torch
from sgl.kernels.rotary import apply_rotary, compute_cos_sin_cache, compute_inv_freq
from torch import nn


def rope_params_from_config(config) -> tuple[float, dict | None]:
    """(theta, scaling dict or None) from a HF config; transformers >= 5 keeps both in
    `rope_parameters`, older versions in `rope_theta` / `rope_scaling`."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if params and "rope_type" not in params and "type" not in params and "rope_theta" not in params:
        params = next(iter(params.values()))  # per-layer-type dict: all our models use one rope
    theta = params.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0
    rope_type = params.get("rope_type") or params.get("type") or "default"
    return float(theta), (None if rope_type == "default" else dict(params))


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, rotary_dim: int, max_position: int, theta: float,
                 rope_scaling: dict | None = None) -> None:
        super().__init__()
        self.head_dim, self.rotary_dim, self.max_position = head_dim, rotary_dim, max_position
        inv_freq = compute_inv_freq(rotary_dim, theta, rope_scaling)  # (rotary_dim // 2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("cos_sin_cache", compute_cos_sin_cache(inv_freq, max_position),
                             persistent=False)  # (max_position, rotary_dim) float32

    def apply_freq_factors(self, freq_factors: torch.Tensor) -> None:
        """Divide every frequency by a per-frequency factor (llama.cpp stores Llama 3 rope scaling
        this way, as the `rope_freqs` tensor, instead of as config fields)."""
        inv_freq = self.inv_freq / freq_factors.to(self.inv_freq.device, torch.float32)
        self.inv_freq = inv_freq
        self.cos_sin_cache = compute_cos_sin_cache(inv_freq, self.max_position)

    def forward(self, positions: torch.Tensor, q: torch.Tensor,
                k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # positions: (T,)  q: (T, Hq * D) or (T, Hq, D)  k: likewise with Hkv; same shapes back.
        num_tokens = q.shape[0]
        q3 = q.view(num_tokens, -1, self.head_dim)
        k3 = k.view(num_tokens, -1, self.head_dim)
        q3, k3 = apply_rotary(q3, k3, positions, self.cos_sin_cache)
        return q3.view(q.shape), k3.view(k.shape)
