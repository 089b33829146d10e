"""Pure-torch sampling primitives: truncation masks, penalties and counter-based noise.

Every function is batched over rows with per-row parameters, performs no host sync, and treats
each row independently (a row's result never depends on the other rows of the batch). They serve
as the CPU path of the sampler and as the oracles for fused GPU kernels.
"""
from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF


def top_k_mask(logits: torch.Tensor, top_k: torch.Tensor,
               max_top_k: int | None = None) -> torch.Tensor:
    """Keep entries of row i that are >= its `top_k[i]`-th largest value (ties there all stay).

    logits: (bs, V) float (logits or probs: only the order matters). top_k: (bs,) int64 >= 1;
    rows with top_k >= V keep everything. max_top_k: host-side max of the top_k values below V
    (only it is sorted for; saves a sync). Returns a (bs, V) bool mask, True = keep.
    """
    _check_rows(logits, top_k)
    vocab_size = logits.shape[-1]
    is_off = top_k >= vocab_size  # (bs,)
    if max_top_k is None:
        max_top_k = int(torch.where(is_off, 1, top_k).max())
    max_top_k = max(1, min(max_top_k, vocab_size))
    top_values = torch.topk(logits, max_top_k, dim=-1, sorted=True).values  # (bs, max_top_k)
    # The k-th largest value does not depend on how topk orders ties, so this is deterministic.
    kth_value = top_values.gather(1, (top_k[:, None] - 1).clamp(0, max_top_k - 1))  # (bs, 1)
    return (logits >= kth_value) | is_off[:, None]


def top_p_mask(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep the smallest set of most probable tokens whose total probability reaches top_p[i].

    A token is kept iff the mass strictly above it (in descending order, ties by id) is < top_p,
    so the top token is always kept. Rows with top_p >= 1 keep everything.
    probs: (bs, V) float, rows sum to 1. top_p: (bs,) float in (0, 1]. Returns (bs, V) bool.
    """
    _check_rows(probs, top_p)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    cumsum = torch.cumsum(sorted_probs, dim=-1)
    mass_above = torch.nn.functional.pad(cumsum[:, :-1], (1, 0))  # (bs, V) exclusive prefix sum
    threshold = top_p[:, None].to(probs.dtype)
    keep_sorted = (mass_above < threshold) | (threshold >= 1.0)
    return torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted)


def min_p_mask(probs: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens whose probability is below min_p[i] times the row's largest probability.

    probs: (bs, V) float. min_p: (bs,) float in [0, 1]. Returns (bs, V) bool, True = keep.
    """
    _check_rows(probs, min_p)
    max_prob = probs.amax(dim=-1, keepdim=True)  # (bs, 1)
    return probs >= min_p[:, None].to(probs.dtype) * max_prob


def apply_penalties_ref(
    logits: torch.Tensor,
    output_counts: torch.Tensor | None,
    prompt_output_mask: torch.Tensor | None,
    frequency_penalties: torch.Tensor,
    presence_penalties: torch.Tensor,
    repetition_penalties: torch.Tensor,
) -> torch.Tensor:
    """Return penalized logits (a new tensor).

    Repetition (HF semantics) first, over tokens seen in the prompt or output: a positive logit is
    divided by the penalty, any other multiplied by it. Then frequency/presence (OpenAI semantics)
    over output tokens: logit -= frequency * count + presence * (count > 0).
    logits: (n, V) float. output_counts: (n, V) float or None (no frequency/presence).
    prompt_output_mask: (n, V) bool or None (no repetition). Penalties: (n,) float.
    """
    if prompt_output_mask is not None:
        rep = repetition_penalties[:, None].to(logits.dtype)
        penalized = torch.where(logits > 0, logits / rep, logits * rep)
        logits = torch.where(prompt_output_mask, penalized, logits)
    if output_counts is not None:
        counts = output_counts.to(logits.dtype)
        freq = frequency_penalties[:, None].to(logits.dtype)
        pres = presence_penalties[:, None].to(logits.dtype)
        logits = logits - freq * counts - pres * (counts > 0).to(logits.dtype)
    return logits


def fmix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finalizer (lowbias32) on int64 tensors holding values in [0, 2**32).

    int64 products may wrap past 2**63; the low 32 bits stay exact, and masking keeps only them.
    """
    x = x ^ (x >> 16)  # the first op allocates; the rest work in place on the copy
    x.mul_(0x7FEB352D).bitwise_and_(_MASK32)
    x.bitwise_xor_(x >> 15)
    x.mul_(0x846CA68B).bitwise_and_(_MASK32)
    return x.bitwise_xor_(x >> 16)


def row_keys(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Mix each row's 64-bit seed and its step counter into one 32-bit key: (bs,) -> (bs,) int64."""
    seed_lo = seeds & _MASK32
    seed_hi = (seeds >> 32) & _MASK32  # arithmetic shift, then mask: the raw high bits
    key = fmix32(fmix32(seed_lo) ^ seed_hi)
    return fmix32(key ^ (steps & _MASK32))


def uniform_noise(seeds: torch.Tensor, steps: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Counter-based uniforms in (0, 1): entry (i, v) is a pure function of (seeds[i], steps[i], v).

    seeds, steps: (bs,) int64. Returns (bs, vocab_size) float32 with 24 random bits, never 0 or 1.
    """
    token_ids = torch.arange(vocab_size, dtype=torch.int64, device=seeds.device)
    bits = fmix32(row_keys(seeds, steps)[:, None] ^ fmix32(token_ids)[None, :])  # (bs, V)
    return bits_to_uniform(bits)


def bits_to_uniform(bits: torch.Tensor) -> torch.Tensor:
    """32 random bits (int64) -> float32 in [2**-24, 1 - 2**-24]; never 0 or 1, so logs stay finite.

    23 bits, not 24: with 24, (2**24 - 1) + 0.5 rounds up to 2**24 in float32 and gives exactly 1.
    """
    return ((bits >> 9).to(torch.float32) + 0.5) * (2.0 ** -23)


def gumbel_noise(seeds: torch.Tensor, steps: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Standard Gumbel noise; argmax(logits + noise) draws from softmax(logits). (bs, V) float32.

    The noise lies in about [-2.8, 16.6] (23-bit uniforms), so a token more than ~19 nats below
    the row's best can never be drawn: a bias below 1e-8 relative probability per token.
    """
    return uniform_noise(seeds, steps, vocab_size).log_().neg_().log_().neg_()


def _check_rows(values: torch.Tensor, per_row: torch.Tensor) -> None:
    assert values.dim() == 2, f"expected (bs, V), got {tuple(values.shape)}"
    assert per_row.shape == (values.shape[0],), (
        f"expected per-row parameter of shape ({values.shape[0]},), got {tuple(per_row.shape)}")
