"""Rotary frequencies and the cos/sin table for every rope_type a config may name: default,
linear, llama3, yarn, dynamic (NTK) and longrope, with transformers' formulas.

The table holds one row per position. Most types give every position the same frequencies; two
depend on the length of the sequence, and transformers recomputes them at each forward from the
largest position in it:
  - dynamic: base * ((factor * len / trained) - (factor - 1)) ** (dim / (dim - 2)), len >= trained;
  - longrope: the long factors once len exceeds original_max_position_embeddings, else the short.
Here a position's row uses len = position + 1. That is what transformers computes for a token
generated at that position (one new token per forward), so greedy decoding matches it; unlike a
per-forward rule it does not depend on how a prompt is chunked or batched, so the radix cache and
chunked prefill stay exact. (A single transformers forward over a prompt longer than the trained
length rotates all its tokens with that prompt's length instead.)
"""
from __future__ import annotations

import math

import torch

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn", "dynamic", "longrope")


def rope_type(rope_scaling: dict | None) -> str:
    if not rope_scaling:
        return "default"
    return rope_scaling.get("rope_type") or rope_scaling.get("type") or "default"


def _exponents(rotary_dim: int) -> torch.Tensor:
    return torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim  # (D/2,)


def compute_inv_freq(rotary_dim: int, theta: float,
                     rope_scaling: dict | None = None) -> torch.Tensor:
    """Inverse frequencies (rotary_dim // 2,) float32 of the position-independent types (for
    dynamic and longrope: those of positions within the trained length)."""
    kind = rope_type(rope_scaling)
    if kind not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"unsupported rope_type {kind!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    inv_freq = 1.0 / (theta ** _exponents(rotary_dim))
    if kind == "linear":
        return inv_freq / float(rope_scaling["factor"])
    if kind == "llama3":
        return _llama3_inv_freq(inv_freq, rope_scaling)
    if kind == "yarn":
        return _yarn_inv_freq(rotary_dim, theta, rope_scaling)
    if kind == "longrope":
        return inv_freq / torch.tensor(rope_scaling["short_factor"], dtype=torch.float32)
    return inv_freq


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


def _yarn_factor(rope_scaling: dict, trained_max_positions: int | None) -> float:
    factor = rope_scaling.get("factor")
    if factor is None:  # DeepSeek-style configs: the ratio of the lengths
        factor = trained_max_positions / rope_scaling["original_max_position_embeddings"]
    return float(factor)


def _yarn_inv_freq(rotary_dim: int, theta: float, rope_scaling: dict,
                   trained_max_positions: int | None = None) -> torch.Tensor:
    # Interpolate (divide by factor) the low frequencies, keep (extrapolate) the high ones, and
    # ramp linearly between the dims that turn beta_slow and beta_fast times over the original
    # context.
    factor = _yarn_factor(rope_scaling, trained_max_positions)
    original_len = rope_scaling["original_max_position_embeddings"]
    beta_fast = rope_scaling.get("beta_fast") or 32
    beta_slow = rope_scaling.get("beta_slow") or 1

    def correction_dim(num_rotations: float) -> float:
        return (rotary_dim * math.log(original_len / (num_rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rope_scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    if low == high:
        high += 0.001  # no zero-width ramp
    ramp = ((torch.arange(rotary_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = theta ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim)
    keep = 1 - ramp  # 1: extrapolate (high frequencies), 0: interpolate
    return (1.0 / (factor * pos_freqs)) * (1 - keep) + (1.0 / pos_freqs) * keep


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def attention_factor(rope_scaling: dict | None, trained_max_positions: int) -> float:
    """The factor transformers multiplies cos and sin by (YaRN's and LongRoPE's mscale)."""
    kind = rope_type(rope_scaling)
    if kind == "yarn":
        given = rope_scaling.get("attention_factor")
        if given is not None:
            return float(given)
        factor = _yarn_factor(rope_scaling, trained_max_positions)
        mscale, mscale_all_dim = rope_scaling.get("mscale"), rope_scaling.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            return _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
        return _yarn_mscale(factor)
    if kind == "longrope":
        given = rope_scaling.get("attention_factor")
        if given is not None:
            return float(given)
        original_len = rope_scaling["original_max_position_embeddings"]
        factor = rope_scaling.get("factor") or trained_max_positions / original_len
        return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original_len))
    return 1.0


def _per_position_inv_freq(rotary_dim: int, theta: float, rope_scaling: dict,
                           max_positions: int, trained_max_positions: int) -> torch.Tensor:
    """(max_positions, rotary_dim // 2): row p holds the frequencies of a sequence of p + 1."""
    seq_lens = torch.arange(1, max_positions + 1, dtype=torch.float32)[:, None]  # (P, 1)
    if rope_type(rope_scaling) == "dynamic":
        factor = float(rope_scaling["factor"])
        seq_lens = seq_lens.clamp(min=trained_max_positions)
        bases = theta * ((factor * seq_lens / trained_max_positions) - (factor - 1)) ** (
            rotary_dim / (rotary_dim - 2))  # (P, 1)
        return 1.0 / (bases ** _exponents(rotary_dim))
    original_len = rope_scaling["original_max_position_embeddings"]  # longrope
    short = torch.tensor(rope_scaling["short_factor"], dtype=torch.float32)
    long = torch.tensor(rope_scaling["long_factor"], dtype=torch.float32)
    factors = torch.where(seq_lens > original_len, long, short)  # (P, D/2)
    return 1.0 / (factors * theta ** _exponents(rotary_dim))


def compute_cos_sin_cache(inv_freq: torch.Tensor, max_positions: int,
                          scale: float = 1.0) -> torch.Tensor:
    """(max_positions, rotary_dim) float32: cat[cos, sin] (times `scale`) of every position times
    its frequencies; inv_freq is (rotary_dim // 2,) or one row per position."""
    t = torch.arange(max_positions, dtype=torch.float32, device=inv_freq.device)
    freqs = t[:, None] * inv_freq.float()  # (max_positions, rotary_dim // 2)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1) * scale


def rope_cos_sin_cache(rotary_dim: int, theta: float, rope_scaling: dict | None,
                       max_positions: int, trained_max_positions: int) -> torch.Tensor:
    """The (max_positions, rotary_dim) float32 table a config's rope asks for. trained_max_positions:
    the checkpoint's max_position_embeddings (before any --context-length extension), which
    dynamic scaling measures lengths against."""
    if rope_type(rope_scaling) in ("dynamic", "longrope"):
        inv_freq = _per_position_inv_freq(rotary_dim, theta, rope_scaling, max_positions,
                                          trained_max_positions)
    elif rope_type(rope_scaling) == "yarn":
        inv_freq = _yarn_inv_freq(rotary_dim, theta, rope_scaling, trained_max_positions)
    else:
        inv_freq = compute_inv_freq(rotary_dim, theta, rope_scaling)
    return compute_cos_sin_cache(inv_freq, max_positions,
                                 attention_factor(rope_scaling, trained_max_positions))
