"""Split-K flash-decoding over the paged KV pool (one new query token per request).

Stage 1, grid (bs, Hkv, max_splits): a program takes one request, one KV head with the GROUP
query heads that share it (GQA: each K/V tile is read once for all of them) and one contiguous
split of the request's keys, whose pool slots it reads through req_to_token. It runs an online
softmax in float32 and writes a partial output and its log-sum-exp (base 2).
Stage 2, grid (bs, Hq): merges the splits of each (request, head), all in one tile.

A request uses min(max_splits, ceil(seq_len / MIN_SPLIT_LEN)) splits, computed in the kernels
from seq_lens, so nothing but `max_splits` (a host int that depends on the batch size only) is
planned per step: the launch is the same for every replay of a CUDA graph of one batch size.
With max_splits == 1 stage 1 writes the output directly and stage 2 is skipped.

A sliding window W (a per-layer constant) restricts the request to its last W keys: both stages
count splits over those (seq_len - max(seq_len - W, 0) keys) alone, so a windowed layer reads at
most W keys a request. Soft-capping (SOFTCAP, Gemma 2) maps each scaled score s to
cap * tanh(s / cap).

Bytes moved (the floor): every request's K and V rows, bs * seq_len * Hkv * (D + Dv) elements,
plus its req_to_token entries (4 bytes a token); q and the output are small.

FP8 pools (float8_e4m3fn / float8_e5m2, half the bytes of bf16): K and V tiles are widened to q's
dtype as they are loaded and the products run in it, as for a 16-bit pool; the pool's per-tensor
scales (stored = value / scale) fold into the softmax scale (K) and the output (V).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from sgl.kernels.triton._common import (dot_precision, dot_width, next_pow2, require_cuda, require_dtype,
                                         require_pool_dtypes, sm_count)

MIN_SPLIT_LEN = 64       # fewest keys worth a split of their own
MAX_KV_SPLITS = 32       # cap on splits per request (sizes the workspace)
# Stage 1 launch parameters (H100); module-level so that bench_kernels --sweep can try others.
CONFIG = {"BLOCK_N": 64, "num_warps": 4, "num_stages": 3}
_LOG2E = 1.4426950408889634


@triton.jit
def _decode_split_kernel(
        Q, KBuf, VBuf, ReqToToken, ReqPoolIdx, SeqLens, PartO, PartLse, Out,
        stride_qb, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_r2t,
        stride_ob, stride_oh, num_q_heads, max_splits, scale_log2, v_scale, window, cap_log2,
        HEAD_DIM: tl.constexpr, V_HEAD_DIM: tl.constexpr, GROUP: tl.constexpr,
        MIN_SPLIT: tl.constexpr, BLOCK_H: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        DIRECT: tl.constexpr, SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr):
    bid = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(SeqLens + bid).to(tl.int32)
    first_key = _first_key(seq_len, window)
    num_splits = tl.minimum(max_splits, tl.cdiv(seq_len - first_key, MIN_SPLIT))
    split_len = tl.cdiv(seq_len - first_key, tl.maximum(num_splits, 1))
    start = first_key + split * split_len
    end = tl.minimum(start + split_len, seq_len)
    row = tl.load(ReqPoolIdx + bid).to(tl.int64)

    offs_g = tl.arange(0, BLOCK_H)
    heads = kv_head * GROUP + offs_g  # (BLOCK_H,) this KV head's query heads
    mask_h = offs_g < GROUP
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_d = offs_d < HEAD_DIM
    mask_dv = offs_dv < V_HEAD_DIM
    q = tl.load(Q + bid.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=mask_h[:, None] & mask_d[None, :], other=0.0)  # (BLOCK_H, BLOCK_D)

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_DV], tl.float32)
    k_head = KBuf + kv_head * stride_kh
    v_head = VBuf + kv_head * stride_vh
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < end
        slots = tl.load(ReqToToken + row * stride_r2t + offs_n, mask=mask_n, other=0).to(tl.int64)
        k = tl.load(k_head + slots[None, :] * stride_kt + offs_d[:, None],
                    mask=mask_n[None, :] & mask_d[:, None], other=0.0)  # (BLOCK_D, BLOCK_N)
        k = k.to(q.dtype)  # an FP8 pool's tile widened (a no-op otherwise)
        s = tl.dot(q, k, input_precision=DOT_PRECISION) * scale_log2  # (BLOCK_H, BLOCK_N) f32, log2
        if SOFTCAP:  # cap * tanh(s / cap) in natural units (cap_log2 = cap * log2 e)
            s = cap_log2 * (2.0 * tl.sigmoid(2.0 * s / cap_log2) - 1.0)
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_head + slots[:, None] * stride_vt + offs_dv[None, :],
                    mask=mask_n[:, None] & mask_dv[None, :], other=0.0).to(q.dtype)  # (BLOCK_N, DV)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    l_safe = tl.where(l_i > 0, l_i, 1.0)  # an empty split (or seq_len 0) leaves l_i == 0
    out = acc * (v_scale / l_safe)[:, None]  # a split's partial takes V's scale: merging is linear
    mask_o = mask_h[:, None] & mask_dv[None, :]
    if DIRECT:
        tl.store(Out + bid.to(tl.int64) * stride_ob + heads[:, None] * stride_oh + offs_dv[None, :],
                 out.to(Out.dtype.element_ty), mask=mask_o)
    else:
        part = (bid.to(tl.int64) * num_q_heads + heads) * max_splits + split  # (BLOCK_H,)
        tl.store(PartO + part[:, None] * V_HEAD_DIM + offs_dv[None, :], out, mask=mask_o)
        tl.store(PartLse + part, m_i + tl.log2(l_safe), mask=mask_h)


@triton.jit
def _first_key(seq_len, window):
    """The first key position the request's query (at seq_len - 1) sees: 0 without a window."""
    return tl.where(window > 0, tl.maximum(seq_len - window, 0), 0)


@triton.jit
def _decode_merge_kernel(PartO, PartLse, SeqLens, Out, stride_ob, stride_oh, num_q_heads,
                         max_splits, window, V_HEAD_DIM: tl.constexpr, MIN_SPLIT: tl.constexpr,
                         BLOCK_S: tl.constexpr, BLOCK_DV: tl.constexpr):
    # All splits of one (request, head) in one tile: one round of loads, no loop.
    bid = tl.program_id(0)
    head = tl.program_id(1)
    seq_len = tl.load(SeqLens + bid).to(tl.int32)
    seq_len = seq_len - _first_key(seq_len, window)  # the keys seen, split as stage 1 split them
    num_splits = tl.minimum(max_splits, tl.cdiv(seq_len, MIN_SPLIT))
    split_len = tl.cdiv(seq_len, tl.maximum(num_splits, 1))
    num_nonempty = tl.cdiv(seq_len, tl.maximum(split_len, 1))  # splits holding >= 1 key
    offs_s = tl.arange(0, BLOCK_S)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_s = offs_s < num_nonempty
    mask_dv = offs_dv < V_HEAD_DIM
    part = (bid.to(tl.int64) * num_q_heads + head) * max_splits + offs_s  # (BLOCK_S,)
    lse = tl.load(PartLse + part, mask=mask_s, other=float("-inf"))
    o = tl.load(PartO + part[:, None] * V_HEAD_DIM + offs_dv[None, :],
                mask=mask_s[:, None] & mask_dv[None, :], other=0.0)  # (BLOCK_S, BLOCK_DV)
    w = tl.exp2(lse - tl.max(lse, 0))  # empty splits: exp2(-inf) = 0
    w = tl.where(mask_s, w, 0.0)  # and NaN-free when every split is empty (seq_len 0)
    total = tl.sum(w, 0)
    out = tl.sum(o * w[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(Out + bid.to(tl.int64) * stride_ob + head * stride_oh + offs_dv,
             out.to(Out.dtype.element_ty), mask=mask_dv)


def num_kv_splits(batch_size: int, num_kv_heads: int, num_sms: int) -> int:
    """Splits per request: enough (request, KV head, split) programs to fill the SMs ~4 times."""
    target = 4 * num_sms
    return max(1, min(MAX_KV_SPLITS, triton.cdiv(target, max(1, batch_size * num_kv_heads))))


def workspace_numel(batch_size: int, num_q_heads: int, v_head_dim: int, max_splits: int) -> int:
    """float32 elements of stage 1's partial outputs and log-sum-exps."""
    return 0 if max_splits == 1 else batch_size * num_q_heads * max_splits * (v_head_dim + 1)


def _check(q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor,
           req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
           seq_lens: torch.Tensor) -> None:
    require_cuda(q=q, k_buffer=k_buffer, v_buffer=v_buffer, req_to_token=req_to_token,
                 req_pool_indices=req_pool_indices, seq_lens=seq_lens)
    require_pool_dtypes(q, k_buffer, v_buffer)
    require_dtype("req_to_token", req_to_token, (torch.int32, torch.int64))
    require_dtype("req_pool_indices", req_pool_indices, (torch.int32, torch.int64))
    require_dtype("seq_lens", seq_lens, (torch.int32, torch.int64))
    if q.dim() != 3 or k_buffer.dim() != 3 or v_buffer.dim() != 3:
        raise ValueError("q (bs, Hq, D), k_buffer (slots, Hkv, D), v_buffer (slots, Hkv, Dv)")
    bs, num_q_heads, head_dim = q.shape
    if k_buffer.shape[2] != head_dim or k_buffer.shape[:2] != v_buffer.shape[:2]:
        raise ValueError(f"pool shapes {tuple(k_buffer.shape)}, {tuple(v_buffer.shape)} do not "
                         f"match q {tuple(q.shape)}")
    if num_q_heads % k_buffer.shape[1]:
        raise ValueError(f"Hq={num_q_heads} is not a multiple of Hkv={k_buffer.shape[1]}")
    if req_pool_indices.shape != (bs,) or seq_lens.shape != (bs,):
        raise ValueError("req_pool_indices and seq_lens must be (bs,)")
    for name, t in (("q", q), ("k_buffer", k_buffer), ("v_buffer", v_buffer),
                    ("req_to_token", req_to_token)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name}: last dim must be contiguous, strides {t.stride()}")


def decode_attention(q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor,
                     req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
                     seq_lens: torch.Tensor, scaling: float, *, out: torch.Tensor | None = None,
                     max_splits: int | None = None,
                     workspace: torch.Tensor | None = None, sliding_window: int = 0,
                     logit_cap: float = 0.0, k_scale: float = 1.0,
                     v_scale: float = 1.0) -> torch.Tensor:
    """Attention of q (bs, Hq, D), one token per request, over keys 0..seq_lens[i]-1 of request i
    at slots req_to_token[req_pool_indices[i], :seq_lens[i]] of k_buffer (slots, Hkv, D) and
    v_buffer (slots, Hkv, Dv). Returns out (bs, Hq, Dv) in q's dtype. A request with seq_len 0
    gets zeros. Indices and lengths are not bounds-checked on the device.
    sliding_window: W > 0 limits the query to the last W keys. logit_cap: c > 0 soft-caps the
    scaled scores to c * tanh(s / c).

    max_splits: splits per request (default `num_kv_splits` for this batch). workspace: a float32
    tensor of at least `workspace_numel(...)` elements (allocated when None); pass preallocated
    ones under CUDA graphs. The pool holds q's dtype, or FP8 with per-tensor scales k_scale,
    v_scale (a stored element is value / scale)."""
    _check(q, k_buffer, v_buffer, req_to_token, req_pool_indices, seq_lens)
    bs, num_q_heads, head_dim = q.shape
    num_kv_heads, v_head_dim = k_buffer.shape[1], v_buffer.shape[2]
    if out is None:
        out = torch.empty((bs, num_q_heads, v_head_dim), dtype=q.dtype, device=q.device)
    elif out.shape != (bs, num_q_heads, v_head_dim) or out.stride(-1) != 1:
        raise ValueError(f"out must be ({bs}, {num_q_heads}, {v_head_dim}), last dim contiguous")
    if bs == 0:
        return out
    if max_splits is None:
        max_splits = num_kv_splits(bs, num_kv_heads, sm_count(q.device))
    need = workspace_numel(bs, num_q_heads, v_head_dim, max_splits)
    if workspace is None:
        workspace = torch.empty(max(need, 1), dtype=torch.float32, device=q.device)
    elif workspace.dtype != torch.float32 or workspace.numel() < need:
        raise ValueError(f"workspace must be float32 with >= {need} elements")
    num_parts = need // (v_head_dim + 1)  # (bs, Hq, max_splits) partials
    part_o, part_lse = workspace[:num_parts * v_head_dim], workspace[num_parts * v_head_dim:]
    group = num_q_heads // num_kv_heads
    direct = max_splits == 1
    block_d, block_dv = dot_width(head_dim), dot_width(v_head_dim)
    _decode_split_kernel[(bs, num_kv_heads, max_splits)](
        q, k_buffer, v_buffer, req_to_token, req_pool_indices, seq_lens, part_o, part_lse, out,
        q.stride(0), q.stride(1), k_buffer.stride(0), k_buffer.stride(1), v_buffer.stride(0),
        v_buffer.stride(1), req_to_token.stride(0), out.stride(0), out.stride(1), num_q_heads,
        max_splits, scaling * k_scale * _LOG2E, v_scale, int(sliding_window),
        float(logit_cap) * _LOG2E, HEAD_DIM=head_dim, V_HEAD_DIM=v_head_dim, GROUP=group,
        MIN_SPLIT=MIN_SPLIT_LEN,
        BLOCK_H=max(16, next_pow2(group)), BLOCK_D=block_d, BLOCK_DV=block_dv, DIRECT=direct,
        SOFTCAP=logit_cap > 0, DOT_PRECISION=dot_precision(q.dtype), **CONFIG)
    if not direct:
        _decode_merge_kernel[(bs, num_q_heads)](
            part_o, part_lse, seq_lens, out, out.stride(0), out.stride(1), num_q_heads,
            max_splits, int(sliding_window), V_HEAD_DIM=v_head_dim, MIN_SPLIT=MIN_SPLIT_LEN,
            BLOCK_S=next_pow2(max_splits), BLOCK_DV=block_dv, num_warps=4)
    return out
