"""Paged attention references: read K/V of every request from the token pool through the
request -> token table, attend causally (or under a custom tree mask) in float32. The CPU path,
and the oracle that the Triton extend/decode kernels are tested against."""
from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate, pairwise

import torch
import torch.nn.functional as F

from sgl.kernels.kv_store import from_pool

Lengths = torch.Tensor | Sequence[int]


def extend_attention_ref(q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor,
                         req_to_token: torch.Tensor, req_pool_indices: Lengths,
                         prefix_lens: Lengths, extend_lens: Lengths, scaling: float, *,
                         custom_mask: torch.Tensor | None = None,
                         mask_indptr: Lengths | None = None,
                         tree_mask: torch.Tensor | None = None,
                         sliding_window: int | None = None,
                         logit_cap: float = 0.0, k_scale: float = 1.0,
                         v_scale: float = 1.0) -> torch.Tensor:
    """Causal (or custom-masked) attention of a ragged batch of new tokens over their requests'
    whole sequences.

    q: (num_tokens, Hq, D), the new tokens of all requests concatenated.
    k_buffer: (num_slots, Hkv, D), v_buffer: (num_slots, Hkv, Dv); Hq = G * Hkv (GQA).
    The K/V of request i (prefix and new tokens, already written) sit at slots
    req_to_token[req_pool_indices[i], :prefix_lens[i] + extend_lens[i]]. New token j of request i
    is at position prefix_lens[i] + j and sees keys 0..prefix_lens[i] + j.
    custom_mask: optional 1-D bool tensor replacing the causal mask (speculative tree
    verification). Request i owns the block custom_mask[mask_indptr[i]:mask_indptr[i + 1]] of
    extend_lens[i] * seq_len entries, seq_len = prefix_lens[i] + extend_lens[i], row-major:
    row j = new token j, column c = key position c; True = may attend. mask_indptr: (bs + 1,)
    block offsets; when None the blocks are taken as packed back to back (cumsum of the sizes).
    tree_mask: the compact alternative to custom_mask (verify batches, CUDA graphs): a (bs, N, N)
    bool tensor over the new tokens only, N >= every extend_len; request i's new token j sees new
    token c iff tree_mask[i, j, c] (c < extend_lens[i]; entries past that are ignored) and always
    its whole cached prefix. It equals the custom_mask block whose prefix columns are all True.
    A row that sees no key gives zeros (SDPA's safe softmax).
    sliding_window: W > 0 limits new token j (position p = prefix_len + j) to the keys at positions
    > p - W (itself and the W - 1 before it; transformers' convention), on top of any mask.
    logit_cap: c > 0 soft-caps the scaled scores to c * tanh(s / c) before masking (Gemma 2).
    An FP8 pool is read as stored * k_scale (K) and stored * v_scale (V).
    Returns (num_tokens, Hq, Dv) in q's dtype.
    """
    rows, prefixes, extends = _as_list(req_pool_indices), _as_list(prefix_lens), _as_list(extend_lens)
    assert q.dim() == 3 and k_buffer.dim() == 3, "q (T, Hq, D), k_buffer (slots, Hkv, D)"
    assert sum(extends) == q.shape[0], f"sum(extend_lens)={sum(extends)} != num_tokens={q.shape[0]}"
    assert q.shape[1] % k_buffer.shape[1] == 0, "num q heads must be a multiple of num kv heads"
    out = q.new_empty((q.shape[0], q.shape[1], v_buffer.shape[-1]))
    assert custom_mask is None or tree_mask is None, "custom_mask or tree_mask, not both"
    if tree_mask is not None:
        masks = _tree_mask_blocks(tree_mask.to(q.device), prefixes, extends)
    else:
        masks = _mask_blocks(custom_mask, mask_indptr, prefixes, extends)
    start = 0
    for row, prefix_len, extend_len, mask in zip(rows, prefixes, extends, masks):
        seq_len = prefix_len + extend_len
        slots = req_to_token[row, :seq_len].long()
        q_req = q[start:start + extend_len]  # (extend_len, Hq, D)
        mask = _visible(mask, prefix_len, extend_len, sliding_window, q.device)
        k, v = from_pool(k_buffer[slots], k_scale), from_pool(v_buffer[slots], v_scale)
        out[start:start + extend_len] = _attend(q_req, k, v, scaling, mask, logit_cap).to(q.dtype)
        start += extend_len
    return out


def decode_attention_ref(q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor,
                         req_to_token: torch.Tensor, req_pool_indices: Lengths,
                         seq_lens: Lengths, scaling: float, *, sliding_window: int | None = None,
                         logit_cap: float = 0.0, k_scale: float = 1.0,
                         v_scale: float = 1.0) -> torch.Tensor:
    """One new token per request: q (bs, Hq, D), its K/V already at position seq_lens[i] - 1.
    Returns (bs, Hq, Dv)."""
    seqs = _as_list(seq_lens)
    return extend_attention_ref(q, k_buffer, v_buffer, req_to_token, req_pool_indices,
                                [s - 1 for s in seqs], [1] * len(seqs), scaling,
                                sliding_window=sliding_window, logit_cap=logit_cap,
                                k_scale=k_scale, v_scale=v_scale)


def _mask_blocks(custom_mask: torch.Tensor | None, mask_indptr: Lengths | None,
                 prefixes: list[int], extends: list[int]) -> list[torch.Tensor | None]:
    """Each request's (extend_len, seq_len) block of custom_mask; all None without one."""
    if custom_mask is None:
        return [None] * len(extends)
    assert custom_mask.dim() == 1 and custom_mask.dtype == torch.bool, "custom_mask: 1-D bool"
    sizes = [e * (p + e) for p, e in zip(prefixes, extends)]
    indptr = [0, *accumulate(sizes)] if mask_indptr is None else _as_list(mask_indptr)
    assert len(indptr) == len(sizes) + 1, "mask_indptr must be (bs + 1,)"
    assert [b - a for a, b in pairwise(indptr)] == sizes, \
        f"mask_indptr {indptr} does not hold blocks of extend_len * seq_len = {sizes}"
    assert indptr[-1] <= custom_mask.numel(), "custom_mask is shorter than its blocks"
    return [custom_mask[start:start + size].view(e, p + e)
            for start, size, p, e in zip(indptr, sizes, prefixes, extends)]


def _tree_mask_blocks(tree_mask: torch.Tensor, prefixes: list[int],
                      extends: list[int]) -> list[torch.Tensor]:
    """Each request's (extend_len, seq_len) block of a compact tree mask: prefix columns True."""
    assert tree_mask.dim() == 3 and tree_mask.dtype == torch.bool, "tree_mask: (bs, N, N) bool"
    assert tree_mask.shape[0] >= len(extends) and tree_mask.shape[1] == tree_mask.shape[2]
    assert max(extends, default=0) <= tree_mask.shape[1], "an extend is longer than tree_mask's N"
    blocks = []
    for i, (p, e) in enumerate(zip(prefixes, extends)):
        block = torch.ones((e, p + e), dtype=torch.bool, device=tree_mask.device)
        block[:, p:] = tree_mask[i, :e, :e]
        blocks.append(block)
    return blocks


def _visible(mask: torch.Tensor | None, prefix_len: int, extend_len: int,
             sliding_window: int | None, device: torch.device) -> torch.Tensor:
    """(E, S) bool, True = may attend: the given mask (None = causal), within the window."""
    query_pos = torch.arange(extend_len, device=device).unsqueeze(1) + prefix_len  # (E, 1)
    key_pos = torch.arange(prefix_len + extend_len, device=device).unsqueeze(0)  # (1, S)
    if mask is None:
        mask = key_pos <= query_pos
    if sliding_window:
        mask = mask & (key_pos > query_pos - sliding_window)
    return mask


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float,
            mask: torch.Tensor, logit_cap: float = 0.0) -> torch.Tensor:
    # q: (E, Hq, D)  k: (S, Hkv, D)  v: (S, Hkv, Dv)  mask: (E, S) bool, True = may attend
    q, k, v = (t.float().transpose(0, 1) for t in (q, k, v))  # (H, len, D)
    if not logit_cap:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling,
                                             enable_gqa=True)  # (Hq, E, Dv)
        return out.transpose(0, 1)
    group = q.shape[0] // k.shape[0]
    k, v = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)  # (Hq, S, D)
    scores = torch.matmul(q, k.transpose(1, 2)) * scaling  # (Hq, E, S)
    scores = logit_cap * torch.tanh(scores / logit_cap)
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)  # a row that sees no key: zeros, as SDPA gives
    return torch.matmul(probs, v).transpose(0, 1)  # (E, Hq, Dv)


def _as_list(x: Lengths) -> list[int]:
    return x.tolist() if isinstance(x, torch.Tensor) else [int(v) for v in x]
