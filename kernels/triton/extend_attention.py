"""Prefill / extend attention over the paged KV pool: a ragged batch of new tokens, each request
with its own cached prefix, causal (or under a custom mask), GQA.

One kernel reads both parts through req_to_token (the new tokens' K/V are already stored in the
pool): grid (query blocks, bs, Hq); a program holds BLOCK_M new tokens of one request and one
query head, sweeps the keys before its first token without a mask, then the diagonal keys with a
causal mask, and stops there (later keys are invisible). Online softmax in float32 (base 2).
Causal key tiles are aligned to multiples of BLOCK_N in the sequence, so a query meets its keys
in the same groups however its prompt was split (cached prefix, chunks, query blocks).

With a custom mask (speculative tree verification; MASK_LAYOUT 1, a separate compilation) both
sweeps read the request's (extend_len, seq_len) block of the mask instead, and the second one
runs to the end of the sequence so that any mask is honoured (verification extends fit in one
query block, so that costs nothing there).

With a compact tree mask (MASK_LAYOUT 2: (bs, N, N) over the new tokens alone, the prefix always
visible; verify batches and their CUDA graphs) the first sweep covers exactly the prefix,
unmasked, and the second the request's new tokens under its (N x N) block.

A sliding window W (a per-layer constant; WINDOWED is a separate compilation) starts both sweeps
at the first key the block's first query sees (p - W + 1) and masks, per query, the keys at
positions <= p - W, on top of the layout's mask. Soft-capping (SOFTCAP, Gemma 2) maps each scaled
score s to cap * tanh(s / cap) before the mask.

FLOPs (the floor, matrix units): 4 * Hq * D * sum over new tokens of the keys each one sees
(prefix_len + j + 1 for new token j), with D = Dv.

FP8 pools: K and V tiles are widened to q's dtype as they are loaded; the per-tensor scales
(stored = value / scale) fold into the softmax scale (K) and the output (V).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from sgl.kernels.triton._common import (dot_precision, dot_width, require_cuda, require_dtype,
                                         require_pool_dtypes)

_LOG2E = 1.4426950408889634
# (BLOCK_M, BLOCK_N, num_warps, num_stages) forced for every head size; None = `_block_config`.
# Module-level so that bench_kernels --sweep can try others.
CONFIG_OVERRIDE: tuple[int, int, int, int] | None = None


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _attend_tile(acc, m_i, l_i, q, k_head, v_head, slot_row, mask_rows, mask_m, n0, key_mask_end,
                 q_pos, stride_kt, stride_vt, scale_log2, window, cap_log2, offs_d, offs_dv,
                 mask_d, mask_dv, CAUSAL: tl.constexpr, USE_CUSTOM_MASK: tl.constexpr,
                 WINDOWED: tl.constexpr, SOFTCAP: tl.constexpr, BLOCK_N: tl.constexpr,
                 DOT_PRECISION: tl.constexpr):
    offs_n = n0 + tl.arange(0, BLOCK_N)
    mask_n = offs_n < key_mask_end
    slots = tl.load(slot_row + offs_n, mask=mask_n, other=0).to(tl.int64)
    k = tl.load(k_head + slots[None, :] * stride_kt + offs_d[:, None],
                mask=mask_n[None, :] & mask_d[:, None], other=0.0)  # (BLOCK_D, BLOCK_N)
    k = k.to(q.dtype)  # an FP8 pool's tile widened (a no-op otherwise)
    s = tl.dot(q, k, input_precision=DOT_PRECISION) * scale_log2  # (BLOCK_M, BLOCK_N) f32, log2
    if SOFTCAP:  # cap * tanh(s / cap) in natural units is this in log2 units (cap_log2 = cap * log2 e)
        s = cap_log2 * _tanh(s / cap_log2)
    if USE_CUSTOM_MASK:  # mask_rows: (BLOCK_M,) pointers to each query's row of the mask
        tile_mask = mask_m[:, None] & mask_n[None, :]
        visible = tl.load(mask_rows[:, None] + offs_n[None, :], mask=tile_mask, other=0) != 0
    elif CAUSAL:
        visible = mask_n[None, :] & (offs_n[None, :] <= q_pos[:, None])
    else:
        visible = mask_n[None, :]
    if WINDOWED:
        visible = visible & (offs_n[None, :] > q_pos[:, None] - window)
    s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if USE_CUSTOM_MASK or WINDOWED:
        # A row may have seen no key yet (m_new = -inf): subtract 0 there, not -inf (NaN).
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_shift = m_new  # causal: the first tile a row meets holds a key it sees
    p = tl.exp2(s - m_shift[:, None])
    alpha = tl.exp2(m_i - m_shift)
    v = tl.load(v_head + slots[:, None] * stride_vt + offs_dv[None, :],
                mask=mask_n[:, None] & mask_dv[None, :], other=0.0).to(q.dtype)  # (BLOCK_N, DV)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, m_new, l_i * alpha + tl.sum(p, 1)


@triton.jit
def _extend_kernel(
        Q, KBuf, VBuf, Out, ReqToToken, ReqPoolIdx, PrefixLens, ExtendLens, QStart, CustomMask,
        MaskIndptr, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot,
        stride_oh, stride_r2t, mask_width, scale_log2, v_scale, window, cap_log2,
        HEAD_DIM: tl.constexpr,
        V_HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        MASK_LAYOUT: tl.constexpr, WINDOWED: tl.constexpr, SOFTCAP: tl.constexpr,
        DOT_PRECISION: tl.constexpr):
    # MASK_LAYOUT 0: causal; 1: custom_mask (extend_len x seq_len blocks at MaskIndptr);
    # 2: tree mask (bs, mask_width, mask_width) over the new tokens, the prefix always visible.
    m_block = tl.program_id(0)
    bid = tl.program_id(1)
    head = tl.program_id(2)
    extend_len = tl.load(ExtendLens + bid).to(tl.int32)
    m_start = m_block * BLOCK_M
    if m_start < extend_len:
        prefix_len = tl.load(PrefixLens + bid).to(tl.int32)
        q_start = tl.load(QStart + bid).to(tl.int64)
        row = tl.load(ReqPoolIdx + bid).to(tl.int64)
        kv_head = head // GROUP
        offs_m = m_start + tl.arange(0, BLOCK_M)
        mask_m = offs_m < extend_len
        offs_d = tl.arange(0, BLOCK_D)
        offs_dv = tl.arange(0, BLOCK_DV)
        mask_d = offs_d < HEAD_DIM
        mask_dv = offs_dv < V_HEAD_DIM
        q_tok = q_start + offs_m  # (BLOCK_M,) rows of q / out
        q = tl.load(Q + q_tok[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                    mask=mask_m[:, None] & mask_d[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
        q_pos = prefix_len + offs_m  # position of each query in its sequence

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
        k_head = KBuf + kv_head * stride_kh
        v_head = VBuf + kv_head * stride_vh
        slot_row = ReqToToken + row * stride_r2t
        # Keys before full_end: every query of this block sees all of them (unless MASK_LAYOUT 1
        # masks them); keys in [full_end, causal_end): the diagonal, causal or masked.
        full_end = prefix_len + m_start
        if MASK_LAYOUT == 1:  # row j of the request's block starts at mask_start + j * seq_len
            mask_start = tl.load(MaskIndptr + bid).to(tl.int64)
            mask_rows = CustomMask + mask_start + offs_m.to(tl.int64) * (prefix_len + extend_len)
            causal_end = prefix_len + extend_len
        elif MASK_LAYOUT == 2:  # row j: mask[bid, j, :]; offset so that key position c reads
            # column c - prefix_len (only keys >= prefix_len are looked up)
            mask_rows = (CustomMask + bid.to(tl.int64) * mask_width * mask_width
                         + offs_m.to(tl.int64) * mask_width - prefix_len)
            full_end = prefix_len
            causal_end = prefix_len + extend_len
        else:
            mask_rows = CustomMask  # unused
            causal_end = prefix_len + tl.minimum(m_start + BLOCK_M, extend_len)
        first_key = 0
        if WINDOWED:  # the first key the block's first query (position prefix_len + m_start) sees
            first_key = tl.maximum(prefix_len + m_start - window + 1, 0)
        if MASK_LAYOUT == 0:
            # Key tiles start at multiples of BLOCK_N, wherever the cached prefix or this query
            # block ends: a query's keys meet the online softmax in the same groups however its
            # prompt was split into cached prefix, chunks and query blocks (batch invariance;
            # the masks make the extra keys of a straddling tile no-ops).
            full_end = full_end // BLOCK_N * BLOCK_N
            first_key = first_key // BLOCK_N * BLOCK_N
        for n0 in range(first_key, full_end, BLOCK_N):
            acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, k_head, v_head, slot_row, mask_rows,
                                         mask_m, n0, full_end, q_pos, stride_kt, stride_vt,
                                         scale_log2, window, cap_log2, offs_d, offs_dv, mask_d,
                                         mask_dv, False, MASK_LAYOUT == 1, WINDOWED, SOFTCAP,
                                         BLOCK_N, DOT_PRECISION)
        for n0 in range(tl.maximum(full_end, first_key), causal_end, BLOCK_N):
            acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, k_head, v_head, slot_row, mask_rows,
                                         mask_m, n0, causal_end, q_pos, stride_kt, stride_vt,
                                         scale_log2, window, cap_log2, offs_d, offs_dv, mask_d,
                                         mask_dv, True, MASK_LAYOUT != 0, WINDOWED, SOFTCAP,
                                         BLOCK_N, DOT_PRECISION)
        if MASK_LAYOUT != 0 or WINDOWED:  # a row that sees no key (acc = 0, l_i = 0): zeros
            l_i = tl.where(l_i > 0, l_i, 1.0)
        out = acc * (v_scale / l_i)[:, None]  # causal: every query sees itself, l_i > 0
        tl.store(Out + q_tok[:, None] * stride_ot + head * stride_oh + offs_dv[None, :],
                 out.to(Out.dtype.element_ty), mask=mask_m[:, None] & mask_dv[None, :])


def _block_config(head_dim: int, max_extend_len: int | None) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for H100 (bench_kernels --sweep). Short extends
    (chunks of decode-like size) take 64-row query blocks so that fewer rows idle; None (batch
    invariance) takes one config whatever the batch."""
    block_m = 64 if max_extend_len is not None and max_extend_len <= 64 else 128
    if head_dim <= 128:
        return block_m, 64, 4, 2
    return 64, 32, 8, 2


def _check(q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor,
           req_to_token: torch.Tensor, index_tensors: dict[str, torch.Tensor]) -> None:
    require_cuda(q=q, k_buffer=k_buffer, v_buffer=v_buffer, req_to_token=req_to_token,
                 **index_tensors)
    require_pool_dtypes(q, k_buffer, v_buffer)
    for name, t in [("req_to_token", req_to_token), *index_tensors.items()]:
        require_dtype(name, t, (torch.int32, torch.int64))
    if q.dim() != 3 or k_buffer.dim() != 3 or v_buffer.dim() != 3:
        raise ValueError("q (T, Hq, D), k_buffer (slots, Hkv, D), v_buffer (slots, Hkv, Dv)")
    if k_buffer.shape[2] != q.shape[2] or k_buffer.shape[:2] != v_buffer.shape[:2]:
        raise ValueError(f"pool shapes {tuple(k_buffer.shape)}, {tuple(v_buffer.shape)} do not "
                         f"match q {tuple(q.shape)}")
    if q.shape[1] % k_buffer.shape[1]:
        raise ValueError(f"Hq={q.shape[1]} is not a multiple of Hkv={k_buffer.shape[1]}")
    bs = index_tensors["req_pool_indices"].shape[0]
    for name, t in index_tensors.items():
        if t.shape != (bs,):
            raise ValueError(f"{name} must be ({bs},), got {tuple(t.shape)}")
    for name, t in (("q", q), ("k_buffer", k_buffer), ("v_buffer", v_buffer),
                    ("req_to_token", req_to_token)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name}: last dim must be contiguous, strides {t.stride()}")


def _mask_indptr(custom_mask: torch.Tensor, mask_indptr: torch.Tensor | None,
                 prefix_lens: torch.Tensor, extend_lens: torch.Tensor) -> torch.Tensor:
    """Check the custom mask's layout; mask_indptr (bs + 1,), made on the device when None."""
    require_cuda(custom_mask=custom_mask, extend_lens=extend_lens,
                 **({"mask_indptr": mask_indptr} if mask_indptr is not None else {}))
    if custom_mask.dim() != 1 or custom_mask.dtype != torch.bool or custom_mask.stride(0) != 1:
        raise ValueError(f"custom_mask must be a contiguous 1-D bool tensor, got "
                         f"{custom_mask.dtype} {tuple(custom_mask.shape)}")
    bs = extend_lens.shape[0]
    if mask_indptr is None:
        block_sizes = extend_lens.long() * (prefix_lens.long() + extend_lens.long())
        return torch.nn.functional.pad(torch.cumsum(block_sizes, 0), (1, 0))
    require_dtype("mask_indptr", mask_indptr, (torch.int32, torch.int64))
    if mask_indptr.shape != (bs + 1,):
        raise ValueError(f"mask_indptr must be ({bs + 1},), got {tuple(mask_indptr.shape)}")
    return mask_indptr


def _check_tree_mask(tree_mask: torch.Tensor, bs: int, max_extend_len: int) -> None:
    require_cuda(tree_mask=tree_mask)
    if (tree_mask.dtype != torch.bool or tree_mask.dim() != 3 or not tree_mask.is_contiguous()
            or tree_mask.shape[1] != tree_mask.shape[2] or tree_mask.shape[0] < bs):
        raise ValueError(f"tree_mask must be a contiguous ({bs}, N, N) bool tensor, got "
                         f"{tree_mask.dtype} {tuple(tree_mask.shape)}")
    if max_extend_len > tree_mask.shape[1]:
        raise ValueError(f"an extend of {max_extend_len} tokens does not fit tree_mask's N = "
                         f"{tree_mask.shape[1]}")


def extend_attention(q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor,
                     req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
                     prefix_lens: torch.Tensor, extend_lens: torch.Tensor, scaling: float, *,
                     q_start: torch.Tensor | None = None, max_extend_len: int | None = None,
                     out: torch.Tensor | None = None, custom_mask: torch.Tensor | None = None,
                     mask_indptr: torch.Tensor | None = None,
                     tree_mask: torch.Tensor | None = None, sliding_window: int = 0,
                     logit_cap: float = 0.0, k_scale: float = 1.0,
                     v_scale: float = 1.0, batch_invariant: bool = False) -> torch.Tensor:
    """Causal (or custom-masked) attention of the new tokens q (T, Hq, D) (requests
    concatenated) over their requests' whole sequences, read from k_buffer (slots, Hkv, D) /
    v_buffer (slots, Hkv, Dv) at req_to_token[req_pool_indices[i], :prefix_lens[i] +
    extend_lens[i]] (new tokens' K/V already stored). New token j of request i sits at position
    prefix_lens[i] + j.
    q_start: (bs,) first row of each request in q (exclusive cumsum of extend_lens; computed on
    the device when None). max_extend_len: host int, max(extend_lens); when None it is read back
    from the device (a sync).
    custom_mask: optional 1-D bool tensor replacing the causal mask (speculative tree
    verification): request i owns custom_mask[mask_indptr[i]:mask_indptr[i + 1]], its
    (extend_lens[i], seq_len) block row-major (seq_len = prefix_lens[i] + extend_lens[i]; row j =
    new token j, column c = key position c; True = may attend). mask_indptr: (bs + 1,) block
    offsets; computed on the device as packed back to back when None.
    tree_mask: the compact alternative to custom_mask, (bs, N, N) bool over the new tokens only
    (N >= max_extend_len): new token j of request i sees new token c iff tree_mask[i, j, c], and
    always the whole cached prefix. q_start need not be packed (a padded layout, e.g. i * N).
    sliding_window: W > 0 limits a query at position p to the keys at positions > p - W.
    logit_cap: c > 0 soft-caps the scaled scores to c * tanh(s / c).
    batch_invariant: one launch config whatever max_extend_len (with the causal mask, a query's
    output then depends on its own sequence alone, not on the batch or on where its prompt was
    split; --enable-deterministic-inference).
    A row that sees no key gives zeros. Returns out (T, Hq, Dv) in q's dtype. Indices are not
    bounds-checked on the device. The pool holds q's dtype, or FP8 with per-tensor scales
    k_scale, v_scale (a stored element is value / scale)."""
    _check(q, k_buffer, v_buffer, req_to_token,
           {"req_pool_indices": req_pool_indices, "prefix_lens": prefix_lens,
            "extend_lens": extend_lens, **({"q_start": q_start} if q_start is not None else {})})
    if custom_mask is not None and tree_mask is not None:
        raise ValueError("pass custom_mask or tree_mask, not both")
    if custom_mask is not None:
        mask_indptr = _mask_indptr(custom_mask, mask_indptr, prefix_lens, extend_lens)
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads, v_head_dim = k_buffer.shape[1], v_buffer.shape[2]
    if out is None:
        out = torch.empty((num_tokens, num_q_heads, v_head_dim), dtype=q.dtype, device=q.device)
    elif out.shape != (num_tokens, num_q_heads, v_head_dim) or out.stride(-1) != 1:
        raise ValueError(f"out must be ({num_tokens}, {num_q_heads}, {v_head_dim}), "
                         "last dim contiguous")
    bs = req_pool_indices.shape[0]
    if num_tokens == 0 or bs == 0:
        return out
    if q_start is None:
        q_start = torch.cumsum(extend_lens, 0) - extend_lens
    if max_extend_len is None:
        max_extend_len = int(extend_lens.max())
    config = CONFIG_OVERRIDE or _block_config(head_dim, None if batch_invariant else max_extend_len)
    block_m, block_n, num_warps, num_stages = config
    grid = (triton.cdiv(max_extend_len, block_m), bs, num_q_heads)
    # The kernel reads a mask as bytes; without one it gets placeholders it never reads.
    mask_layout, mask_args, mask_width = 0, (q, q_start), 0
    if custom_mask is not None:
        mask_layout, mask_args = 1, (custom_mask.view(torch.uint8), mask_indptr)
    elif tree_mask is not None:
        _check_tree_mask(tree_mask, bs, max_extend_len)
        mask_layout, mask_args, mask_width = 2, (tree_mask.view(torch.uint8), q_start), tree_mask.shape[1]
    _extend_kernel[grid](
        q, k_buffer, v_buffer, out, req_to_token, req_pool_indices, prefix_lens, extend_lens,
        q_start, *mask_args, q.stride(0), q.stride(1), k_buffer.stride(0), k_buffer.stride(1),
        v_buffer.stride(0), v_buffer.stride(1), out.stride(0), out.stride(1),
        req_to_token.stride(0), mask_width, scaling * k_scale * _LOG2E, v_scale,
        int(sliding_window), float(logit_cap) * _LOG2E, HEAD_DIM=head_dim,
        V_HEAD_DIM=v_head_dim, GROUP=num_q_heads // num_kv_heads, BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_D=dot_width(head_dim), BLOCK_DV=dot_width(v_head_dim),
        MASK_LAYOUT=mask_layout, WINDOWED=sliding_window > 0, SOFTCAP=logit_cap > 0,
        DOT_PRECISION=dot_precision(q.dtype), num_warps=num_warps, num_stages=num_stages)
    return out
