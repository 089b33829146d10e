"""Fused mixture-of-experts on the GPU: routing, then the experts as a grouped GEMM over the
tokens sorted by expert.

1. `select_experts`: one program per token: softmax over the experts in float32, top_k rounds of
   argmax, optional renormalization.
2. `_align_kernel` (one program): counts the (token, k) pairs of each expert, pads every expert's
   count to a multiple of BLOCK_M, and lays the pairs out expert by expert (`sorted_ids`, padding
   entries = T * top_k) with the expert of each BLOCK_M rows (`expert_ids`). No host sync, so
   a decode step captures it in a CUDA graph; the grid of the GEMMs is sized for the worst case
   (every pair alone in its block) and the blocks past the real count exit at once.
3. `_grouped_gemm_kernel` twice: (T * top_k, 2I) = x[pair's token] @ w13[e]^T, SiLU-and-mul, then
   (T * top_k, H) = act @ w2[e]^T scaled by the pair's routing weight; a tile reads one expert's
   weight block once for all its rows. A sum over top_k gives (T, H).

Bytes (the floor at small batch): the weights of the experts in use, n_used * 3 * I * H elements,
plus x and the output. FLOPs: 2 * T * top_k * 3 * I * H.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from sgl.kernels.triton._common import (
    dot_precision,
    next_pow2,
    require_cuda,
    require_dtype,
)

# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages) by tokens in the batch; the lead's
# H100 sweep (`python -m sgl.bench_moe --sweep`) refines them. CONFIG_OVERRIDE forces one.
CONFIGS = [  # (max tokens, config)
    (32, (16, 64, 128, 1, 4, 4)),
    (256, (32, 64, 128, 4, 4, 3)),
    (1 << 62, (64, 128, 64, 8, 8, 3)),
]
CONFIG_OVERRIDE: tuple[int, int, int, int, int, int] | None = None
_ALIGN_BLOCK = 1024


def pick_config(num_tokens: int) -> tuple[int, int, int, int, int, int]:
    if CONFIG_OVERRIDE is not None:
        return CONFIG_OVERRIDE
    return next(config for limit, config in CONFIGS if num_tokens <= limit)


@triton.jit
def _topk_kernel(Logits, Weights, Ids, stride_l, num_experts, TOP_K: tl.constexpr,
                 RENORMALIZE: tl.constexpr, BLOCK_E: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_E)
    logits = tl.load(Logits + token * stride_l + offs, mask=offs < num_experts,
                     other=float("-inf")).to(tl.float32)
    probs = tl.exp(logits - tl.max(logits, 0))
    probs = probs / tl.sum(probs, 0)
    probs = tl.where(offs < num_experts, probs, -1.0)
    offs_k = tl.arange(0, TOP_K)
    weights = tl.zeros([TOP_K], dtype=tl.float32)
    ids = tl.zeros([TOP_K], dtype=tl.int32)
    for j in tl.static_range(TOP_K):  # the largest first; ties go to the lower expert id
        best = tl.max(probs, 0)
        idx = tl.min(tl.where(probs == best, offs, BLOCK_E), 0)
        weights = tl.where(offs_k == j, best, weights)
        ids = tl.where(offs_k == j, idx, ids)
        probs = tl.where(offs == idx, -1.0, probs)
    if RENORMALIZE:
        weights = weights / tl.sum(weights, 0)
    tl.store(Weights + token * TOP_K + offs_k, weights)
    tl.store(Ids + token * TOP_K + offs_k, ids)


def select_experts(router_logits: torch.Tensor, top_k: int,
                   renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    require_cuda(router_logits=router_logits)
    require_dtype("router_logits", router_logits, (torch.float16, torch.bfloat16, torch.float32))
    num_tokens, num_experts = router_logits.shape
    if top_k & (top_k - 1):
        raise ValueError(f"top_k={top_k}: the Triton router takes a power of two")
    logits = router_logits if router_logits.stride(-1) == 1 else router_logits.contiguous()
    weights = torch.empty((num_tokens, top_k), dtype=torch.float32, device=logits.device)
    ids = torch.empty((num_tokens, top_k), dtype=torch.int32, device=logits.device)
    if num_tokens:
        _topk_kernel[(num_tokens,)](logits, weights, ids, logits.stride(0), num_experts,
                                    TOP_K=top_k, RENORMALIZE=renormalize,
                                    BLOCK_E=next_pow2(num_experts), num_warps=4)
    return weights, ids


@triton.jit
def _align_kernel(TopkIds, Counts, Cursor, SortedIds, ExpertIds, NumPadded, num_pairs,
                  num_experts, max_padded, BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr,
                  BLOCK: tl.constexpr, BLOCK_B: tl.constexpr):
    offs_e = tl.arange(0, BLOCK_E)
    mask_e = offs_e < num_experts
    tl.store(Counts + offs_e, 0, mask=mask_e)
    for start in range(0, max_padded, BLOCK):  # every slot starts as padding
        offs = start + tl.arange(0, BLOCK)
        tl.store(SortedIds + offs, num_pairs, mask=offs < max_padded)
    tl.debug_barrier()
    for start in range(0, num_pairs, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        expert = tl.load(TopkIds + offs, mask=offs < num_pairs, other=0)
        tl.atomic_add(Counts + expert, 1, mask=offs < num_pairs)
    tl.debug_barrier()
    counts = tl.load(Counts + offs_e, mask=mask_e, other=0)
    padded = tl.cdiv(counts, BLOCK_M) * BLOCK_M
    padded_end = tl.cumsum(padded, 0)  # (BLOCK_E,) where each expert's rows end
    tl.store(Cursor + offs_e, padded_end - padded, mask=mask_e)
    num_padded = tl.sum(padded, 0)
    tl.store(NumPadded, num_padded)
    for start in range(0, max_padded // BLOCK_M, BLOCK_B):  # expert of each block of rows
        blocks = start + tl.arange(0, BLOCK_B)
        ends_before = (padded_end[None, :] <= (blocks * BLOCK_M)[:, None]) & mask_e[None, :]
        expert = tl.minimum(tl.sum(ends_before.to(tl.int32), 1), num_experts - 1)
        tl.store(ExpertIds + blocks, expert, mask=blocks < max_padded // BLOCK_M)
    tl.debug_barrier()
    for start in range(0, num_pairs, BLOCK):  # each pair takes the next row of its expert
        offs = start + tl.arange(0, BLOCK)
        mask = offs < num_pairs
        expert = tl.load(TopkIds + offs, mask=mask, other=0)
        row = tl.atomic_add(Cursor + expert, 1, mask=mask)
        tl.store(SortedIds + row, offs, mask=mask)


def moe_align_block_size(topk_ids: torch.Tensor, num_experts: int,
                         block_m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sorted_ids (max_padded,), expert_ids (max_padded // block_m,), num_padded (1,)), int32:
    rows [b * block_m, (b + 1) * block_m) of sorted_ids are (token * top_k + k) pairs routed to
    expert_ids[b] (padding: T * top_k); only the first num_padded rows are real. Within an
    expert the order of the pairs is arbitrary (atomics), which changes no result."""
    num_pairs = topk_ids.numel()
    max_padded = triton.cdiv(num_pairs + min(num_pairs, num_experts) * (block_m - 1), block_m) * block_m
    device = topk_ids.device
    sorted_ids = torch.empty(max_padded, dtype=torch.int32, device=device)
    expert_ids = torch.empty(max_padded // block_m, dtype=torch.int32, device=device)
    num_padded = torch.empty(1, dtype=torch.int32, device=device)
    scratch = torch.empty(2 * num_experts, dtype=torch.int32, device=device)
    _align_kernel[(1,)](topk_ids.reshape(-1), scratch[:num_experts], scratch[num_experts:],
                        sorted_ids, expert_ids, num_padded, num_pairs, num_experts, max_padded,
                        BLOCK_M=block_m, BLOCK_E=next_pow2(num_experts), BLOCK=_ALIGN_BLOCK,
                        BLOCK_B=max(16, 8192 // next_pow2(num_experts)), num_warps=8)
    return sorted_ids, expert_ids, num_padded


@triton.jit
def _grouped_gemm_kernel(A, B, C, TopkWeights, SortedIds, ExpertIds, NumPadded, N, K, num_pairs,
                         num_m_blocks, stride_am, stride_be, stride_bn, stride_cm,
                         A_ROW_DIV: tl.constexpr, MUL_WEIGHT: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         GROUP_M: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # C[pair] = A[pair // A_ROW_DIV] @ B[expert]^T (* weight[pair]) for the BLOCK_M pairs of one
    # block (one expert) and BLOCK_N output columns. Programs walk GROUP_M row blocks per column
    # block so that neighbours share the weight tiles in L2.
    pid = tl.program_id(0)
    num_n_blocks = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * num_n_blocks)
    first_m = group * GROUP_M
    group_size = tl.minimum(num_m_blocks - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n_blocks)) % group_size
    pid_n = (pid % (GROUP_M * num_n_blocks)) // group_size
    if pid_m * BLOCK_M >= tl.load(NumPadded):
        return
    pairs = tl.load(SortedIds + pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    mask_m = pairs < num_pairs
    expert = tl.load(ExpertIds + pid_m).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = A + (pairs // A_ROW_DIV)[:, None] * stride_am + offs_k[None, :]
    b_ptrs = B + expert * stride_be + offs_n[None, :].to(tl.int64) * stride_bn + offs_k[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        mask_k = offs_k < K - k0
        a = tl.load(a_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)  # (BM, BK)
        b = tl.load(b_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)  # (BK, BN)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    if MUL_WEIGHT:
        acc = acc * tl.load(TopkWeights + pairs, mask=mask_m, other=0.0)[:, None]
    tl.store(C + pairs[:, None] * stride_cm + offs_n[None, :], acc.to(C.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


def _grouped_gemm(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, topk_weights: torch.Tensor,
                  aligned: tuple[torch.Tensor, torch.Tensor, torch.Tensor], a_row_div: int,
                  mul_weight: bool, config: tuple[int, ...]) -> None:
    sorted_ids, expert_ids, num_padded = aligned
    block_m, block_n, block_k, group_m, num_warps, num_stages = config
    n, k = b.shape[1], b.shape[2]
    num_m_blocks = expert_ids.shape[0]
    grid = (num_m_blocks * triton.cdiv(n, block_n),)
    _grouped_gemm_kernel[grid](
        a, b, c, topk_weights, sorted_ids, expert_ids, num_padded, n, k, c.shape[0],
        num_m_blocks, a.stride(0), b.stride(0), b.stride(1), c.stride(0), A_ROW_DIV=a_row_div,
        MUL_WEIGHT=mul_weight, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        GROUP_M=group_m, DOT_PRECISION=dot_precision(a.dtype), num_warps=num_warps,
        num_stages=num_stages)


def _check(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
           topk_ids: torch.Tensor) -> None:
    require_cuda(x=x, w13=w13, w2=w2, topk_weights=topk_weights, topk_ids=topk_ids)
    require_dtype("x", x, (torch.float16, torch.bfloat16, torch.float32))
    require_dtype("topk_ids", topk_ids, (torch.int32, torch.int64))
    require_dtype("topk_weights", topk_weights, (torch.float32,))
    for name, t in (("x", x), ("w13", w13), ("w2", w2)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name}: last dim must be contiguous, strides {t.stride()}")


def fused_experts(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                  topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                  config: tuple[int, ...] | None = None) -> torch.Tensor:
    """See `sgl.kernels.moe.fused_experts` (shapes checked there): (T, H) in x's dtype."""
    from sgl.kernels.triton.activation import silu_and_mul
    _check(x, w13, w2, topk_weights, topk_ids)
    num_tokens, top_k = topk_ids.shape
    num_experts, two_inter, hidden = w13.shape
    if num_tokens == 0:
        return torch.empty_like(x)
    config = config or pick_config(num_tokens)
    aligned = moe_align_block_size(topk_ids, num_experts, config[0])
    weights = topk_weights.contiguous()
    gate_up = torch.empty((num_tokens * top_k, two_inter), dtype=x.dtype, device=x.device)
    _grouped_gemm(x, w13, gate_up, weights, aligned, top_k, False, config)
    act = silu_and_mul(gate_up)  # (T * top_k, I)
    down = torch.empty((num_tokens * top_k, hidden), dtype=x.dtype, device=x.device)
    _grouped_gemm(act, w2, down, weights, aligned, 1, True, config)
    return down.view(num_tokens, top_k, hidden).sum(dim=1, dtype=torch.float32).to(x.dtype)
