"""Rotary embedding layer: a cos/sin table for every position up to max_position, built once in
float32 (kernels/rope_scaling.py: every rope_type) and indexed by position at each step."""
from __future__ import annotations

import torch
from sgl.kernels.rotary import apply_rotary, compute_cos_sin_cache, compute_inv_freq, rope_cos_sin_cache
from torch import nn

# Set by the loader when --context-length extends max_position_embeddings: the checkpoint's own
# length, which dynamic and longrope scaling measure sequences against.
TRAINED_MAX_POSITIONS_ATTR = "sgl_trained_max_positions"


def rope_params_from_config(config, layer_type: str | None = None) -> tuple[float, dict | None]:
    """(theta, scaling dict or None) from a HF config; transformers >= 5 keeps both in
    `rope_parameters`, older versions in `rope_theta` / `rope_scaling`. A config with one rope
    per layer type (Gemma 3: "full_attention" / "sliding_attention") gives `layer_type`'s."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if params and "rope_type" not in params and "type" not in params and "rope_theta" not in params:
        params = params.get(layer_type) or next(iter(params.values()))  # per-layer-type dict
    theta = params.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type == "default":
        return float(theta), None
    scaling = dict(params)
    original = getattr(config, "original_max_position_embeddings", None)
    if original is not None:  # Phi-3 keeps it beside rope_scaling, not in it
        scaling.setdefault("original_max_position_embeddings", original)
    return float(theta), scaling


def trained_max_positions(config) -> int:
    return getattr(config, TRAINED_MAX_POSITIONS_ATTR, None) or config.max_position_embeddings


def get_rope(config, head_dim: int, layer_type: str | None = None) -> RotaryEmbedding:
    """The rotary embedding a config asks for (partial rotary, scaling, per-layer-type theta)."""
    theta, rope_scaling = rope_params_from_config(config, layer_type)
    params = getattr(config, "rope_parameters", None) or {}
    if layer_type in params:
        params = params[layer_type]
    factor = getattr(config, "partial_rotary_factor", None) or params.get("partial_rotary_factor") or 1.0
    return RotaryEmbedding(head_dim, int(head_dim * factor), config.max_position_embeddings, theta,
                           rope_scaling, trained_max_positions(config))


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, rotary_dim: int, max_position: int, theta: float,
                 rope_scaling: dict | None = None, trained_max_position: int | None = None) -> None:
        super().__init__()
        self.head_dim, self.rotary_dim, self.max_position = head_dim, rotary_dim, max_position
        inv_freq = compute_inv_freq(rotary_dim, theta, rope_scaling)  # (rotary_dim // 2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        cache = rope_cos_sin_cache(rotary_dim, theta, rope_scaling, max_position,
                                   trained_max_position or max_position)
        self.register_buffer("cos_sin_cache", cache, persistent=False)  # (max_position, rotary_dim) f32

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
