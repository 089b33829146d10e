"""Rotary embedding (neox / rotate-half layout) from positions and a float32 cos/sin cache.

One program per token rotates all of its q heads and k heads: it reads the token's cos/sin row
once, and every q/k element once. In place when the outputs are the inputs (the default)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from sgl.kernels.triton._common import (
    FLOAT_DTYPES,
    check_out,
    next_pow2,
    require_cuda,
    require_dtype,
    require_last_dim_contiguous,
)

_MAX_BLOCK_H = 16


@triton.jit
def _rotate_heads(X, Out, stride_xt, stride_xh, stride_ot, stride_oh, token, num_heads,
                  cos, sin, half, head_dim, COPY_REST: tl.constexpr, BLOCK_H: tl.constexpr,
                  BLOCK_HALF: tl.constexpr, BLOCK_REST: tl.constexpr):
    # cos, sin: (1, BLOCK_HALF) float32 of this token's position
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_HALF)
    for h0 in range(0, num_heads, BLOCK_H):
        heads = h0 + offs_h
        mask = (heads[:, None] < num_heads) & (offs_d[None, :] < half)
        x_row = X + token * stride_xt + heads[:, None] * stride_xh
        o_row = Out + token * stride_ot + heads[:, None] * stride_oh
        x1 = tl.load(x_row + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(x_row + half + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(o_row + offs_d[None, :], (x1 * cos - x2 * sin).to(Out.dtype.element_ty), mask=mask)
        tl.store(o_row + half + offs_d[None, :], (x2 * cos + x1 * sin).to(Out.dtype.element_ty),
                 mask=mask)
        if COPY_REST:  # partial rotary, out of place: the unrotated tail passes through
            offs_r = 2 * half + tl.arange(0, BLOCK_REST)
            mask_r = (heads[:, None] < num_heads) & (offs_r[None, :] < head_dim)
            rest = tl.load(x_row + offs_r[None, :], mask=mask_r, other=0.0)
            tl.store(o_row + offs_r[None, :], rest, mask=mask_r)


@triton.jit
def _rotary_kernel(Q, K, QOut, KOut, Positions, CosSin, stride_qt, stride_qh, stride_kt,
                   stride_kh, stride_qot, stride_qoh, stride_kot, stride_koh, stride_cs,
                   num_q_heads, num_kv_heads, half, head_dim, COPY_REST: tl.constexpr,
                   BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_REST: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(Positions + token).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_HALF)
    cos = tl.load(CosSin + pos * stride_cs + offs_d, mask=offs_d < half, other=0.0)[None, :]
    sin = tl.load(CosSin + pos * stride_cs + half + offs_d, mask=offs_d < half, other=0.0)[None, :]
    _rotate_heads(Q, QOut, stride_qt, stride_qh, stride_qot, stride_qoh, token, num_q_heads,
                  cos, sin, half, head_dim, COPY_REST, BLOCK_H, BLOCK_HALF, BLOCK_REST)
    _rotate_heads(K, KOut, stride_kt, stride_kh, stride_kot, stride_koh, token, num_kv_heads,
                  cos, sin, half, head_dim, COPY_REST, BLOCK_H, BLOCK_HALF, BLOCK_REST)


def _check(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
           cos_sin_cache: torch.Tensor) -> None:
    require_cuda(q=q, k=k, positions=positions, cos_sin_cache=cos_sin_cache)
    require_dtype("q", q, FLOAT_DTYPES)
    require_dtype("k", k, FLOAT_DTYPES)
    require_dtype("positions", positions, (torch.int32, torch.int64))
    require_dtype("cos_sin_cache", cos_sin_cache, (torch.float32,))
    if q.dim() != 3 or k.dim() != 3 or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"expected q (T, Hq, D), k (T, Hkv, D); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}")
    if positions.shape != (q.shape[0],):
        raise ValueError(f"positions shape {tuple(positions.shape)} != ({q.shape[0]},)")
    rotary_dim = cos_sin_cache.shape[-1]
    if cos_sin_cache.dim() != 2 or rotary_dim % 2 or rotary_dim > q.shape[2]:
        raise ValueError(f"cos_sin_cache (max_pos, rotary_dim even <= {q.shape[2]}) expected, "
                         f"got {tuple(cos_sin_cache.shape)}")
    require_last_dim_contiguous("q", q)
    require_last_dim_contiguous("k", k)
    require_last_dim_contiguous("cos_sin_cache", cos_sin_cache)


def rotary_embedding(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                     cos_sin_cache: torch.Tensor, inplace: bool = True,
                     q_out: torch.Tensor | None = None, k_out: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q (T, Hq, D) and k (T, Hkv, D) by positions (T,) with cos_sin_cache
    (max_pos, rotary_dim) = cat[cos, sin]. The first rotary_dim dims of each head rotate.
    inplace=True writes into q and k (any strides with a contiguous last dim) and returns them;
    inplace=False writes new contiguous tensors (or q_out / k_out) and leaves q and k alone.
    Positions must lie in [0, max_pos): they are not bounds-checked on the device."""
    _check(q, k, positions, cos_sin_cache)
    if inplace:
        q_out, k_out = q, k
    else:
        q_out = check_out("q_out", q_out, q.shape, q.dtype, q.device)
        k_out = check_out("k_out", k_out, k.shape, k.dtype, k.device)
    num_tokens, num_q_heads, head_dim = q.shape
    if num_tokens == 0:
        return q_out, k_out
    half = cos_sin_cache.shape[-1] // 2
    rest = head_dim - 2 * half
    _rotary_kernel[(num_tokens,)](
        q, k, q_out, k_out, positions, cos_sin_cache, q.stride(0), q.stride(1), k.stride(0),
        k.stride(1), q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1),
        cos_sin_cache.stride(0), num_q_heads, k.shape[1], half, head_dim,
        COPY_REST=(rest > 0 and not inplace), BLOCK_H=min(_MAX_BLOCK_H, next_pow2(num_q_heads)),
        BLOCK_HALF=next_pow2(half), BLOCK_REST=next_pow2(max(rest, 1)), num_warps=4)
    return q_out, k_out
