"""Matrix-vector product for one-token decode: y = x W^T (+ b) with x of shape (1, K) and W
(N, K) row-major, the layout of every linear layer's weight. W may be FP8 (float8_e4m3fn) with a
float32 scale per row (y = (x W_fp8^T) * w_scale + b): the loop is the same, the rows are half
the bytes, and the scale is applied to each row's sum. At batch 1 a decode step is a
stream of weight bytes; this kernel reads each weight row once with wide contiguous loads and
keeps (BLOCK_N, BLOCK_K) float32 partial products in registers, summing them once at the end.

Grid: (cdiv(N, BLOCK_N), SPLIT_K). With SPLIT_K = 1 one program owns BLOCK_N whole rows. With
SPLIT_K > 1 (more programs in flight for a matrix of few rows, e.g. 4096 x 4096) program (i, s)
sums the s-th of SPLIT_K contiguous K slices into a (SPLIT_K, N) float32 buffer, and the last
program of row block i to finish (an atomic counter per row block) adds the SPLIT_K partials in
slice order, so the result does not depend on which program finished last: it is deterministic,
and equal to the two-kernel reduction used where the counters are not at hand.

CUDA graphs: the partial buffer is a torch.empty of each call (the graph's pool serves it); the
counters are one zeroed buffer per device, allocated at the first eager call and left at zero by
every call (the last program resets its counter), so a replay finds them as a capture saw them.
A call captured before any eager call on its device reduces with the second kernel instead."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from sgl.kernels.triton._common import FLOAT_DTYPES, check_out, require_cuda, require_dtype

# (BLOCK_N, BLOCK_K, num_warps, num_stages, SPLIT_K); a 4-tuple means SPLIT_K = 1. Within 3% of
# the best per shape on an H100 for the large matrices of the 8B shape (sgl/bench_gemv.py);
# kernels/linear.py holds the per-shape choices.
GemvConfig = tuple[int, ...]
DEFAULT_CONFIG: GemvConfig = (4, 1024, 8, 3, 1)
# The last program of a row block reduces the split-K partials (False: a second kernel does).
LAST_PROGRAM_REDUCES = True
_NUM_COUNTERS = 1 << 16  # row blocks a split-K call may have (more: the second kernel reduces)
_REDUCE_BLOCK = 1024
_counters: dict[torch.device, torch.Tensor] = {}


@triton.jit
def _sum_partials(part_ptr, b_ptr, y_ptr, offs_n, mask_n, N, num_splits, HAS_BIAS: tl.constexpr,
                  BLOCK: tl.constexpr):
    """y[offs_n] = sum over s in order of part[s, offs_n] (+ b), in float32 until the store."""
    y = tl.zeros([BLOCK], tl.float32)
    for s in range(num_splits):
        # .cg: read at the L2, where the other programs' stores are, never a stale L1 line
        y += tl.load(part_ptr + s * N + offs_n, mask=mask_n, other=0.0, cache_modifier=".cg")
    if HAS_BIAS:
        y += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=mask_n)


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, part_ptr, count_ptr, N, K, stride_wn,
                 k_split, num_splits, HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
                 EVEN_N: tl.constexpr, EVEN_K: tl.constexpr, SPLIT: tl.constexpr,
                 LAST_REDUCES: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n, pid_k = tl.program_id(0), tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = pid_k * k_split + tl.arange(0, BLOCK_K)  # this program's K slice: k_split wide
    mask_n = offs_n < N
    w_ptrs = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]
    x_ptrs = x_ptr + offs_k
    acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    for k0 in range(0, k_split, BLOCK_K):
        if EVEN_K:  # every slice is whole and a multiple of BLOCK_K
            x = tl.load(x_ptrs)
            if EVEN_N:
                w = tl.load(w_ptrs)
            else:
                w = tl.load(w_ptrs, mask=mask_n[:, None], other=0.0)
        else:
            mask_k = offs_k + k0 < K
            x = tl.load(x_ptrs, mask=mask_k, other=0.0)
            w = tl.load(w_ptrs, mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
    y = tl.sum(acc, axis=1)  # (BLOCK_N,)
    if HAS_SCALE:  # per-row weight scale; linear, so each split-K partial takes it
        y *= tl.load(s_ptr + offs_n, mask=mask_n, other=0.0)
    if SPLIT:
        tl.store(part_ptr + pid_k * N + offs_n, y, mask=mask_n)
        if LAST_REDUCES:
            tl.debug_barrier()  # every warp's partial is stored before the release below
            arrived = tl.atomic_add(count_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
            if arrived == num_splits - 1:
                _sum_partials(part_ptr, b_ptr, y_ptr, offs_n, mask_n, N, num_splits, HAS_BIAS,
                              BLOCK_N)
                tl.store(count_ptr + pid_n, 0)  # zero again for the next call (or replay)
    else:
        if HAS_BIAS:
            y += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=mask_n)


@triton.jit
def _reduce_kernel(part_ptr, b_ptr, y_ptr, N, num_splits, HAS_BIAS: tl.constexpr,
                   BLOCK: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    _sum_partials(part_ptr, b_ptr, y_ptr, offs_n, offs_n < N, N, num_splits, HAS_BIAS, BLOCK)


def _counter_buffer(device: torch.device, num_blocks: int) -> torch.Tensor | None:
    """The device's zeroed split-K counters, or None where the second kernel must reduce: turned
    off, too many row blocks, or none allocated yet and a CUDA graph capturing (allocating them
    there would leave them unzeroed until the first replay)."""
    if not LAST_PROGRAM_REDUCES or num_blocks > _NUM_COUNTERS:
        return None
    counters = _counters.get(device)
    if counters is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None
        counters = _counters[device] = torch.zeros(_NUM_COUNTERS, dtype=torch.int32, device=device)
    return counters


def _unpack(config: GemvConfig | None) -> tuple[int, int, int, int, int]:
    config = tuple(config or DEFAULT_CONFIG)
    if len(config) == 4:
        config += (1,)
    if len(config) != 5 or min(config) < 1:
        raise ValueError(f"gemv: config (BLOCK_N, BLOCK_K, num_warps, num_stages[, SPLIT_K]), "
                         f"got {config}")
    return config


def _check_weight(x: torch.Tensor, weight: torch.Tensor,
                  weight_scale: torch.Tensor | None) -> None:
    if weight_scale is None:
        require_dtype("weight", weight, (x.dtype,))
        return
    require_cuda(x=x, weight_scale=weight_scale)
    require_dtype("weight", weight, (torch.float8_e4m3fn, torch.float8_e5m2))
    require_dtype("weight_scale", weight_scale, (torch.float32,))
    if weight_scale.shape != (weight.shape[0],) or not weight_scale.is_contiguous():
        raise ValueError(f"gemv: weight_scale must be contiguous ({weight.shape[0]},), "
                         f"got {tuple(weight_scale.shape)}")


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         out: torch.Tensor | None = None, config: GemvConfig | None = None,
         weight_scale: torch.Tensor | None = None) -> torch.Tensor:
    """x (1, K), weight (N, K) with contiguous rows, bias (N,) or None -> (1, N) in x's dtype.
    weight is x's dtype, or FP8 with weight_scale (N,) float32 (a scale per row).
    config: (BLOCK_N, BLOCK_K, num_warps, num_stages[, SPLIT_K]), DEFAULT_CONFIG if None."""
    require_cuda(x=x, weight=weight)
    require_dtype("x", x, FLOAT_DTYPES)
    _check_weight(x, weight, weight_scale)
    if x.dim() != 2 or x.shape[0] != 1 or weight.dim() != 2 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"gemv: x (1, K) and weight (N, K), got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    if weight.stride(1) != 1 or not x.is_contiguous():
        raise ValueError("gemv: weight rows and x must be contiguous")
    if bias is not None and (bias.shape != (weight.shape[0],) or not bias.is_contiguous()):
        raise ValueError(f"gemv: bias must be contiguous ({weight.shape[0]},), "
                         f"got {tuple(bias.shape)}")
    N, K = weight.shape
    y = check_out("out", out, (1, N), x.dtype, x.device)
    block_n, block_k, num_warps, num_stages, split_k = _unpack(config)
    # each slice a whole number of K blocks; slices past K (if any) add zeros
    k_split = triton.cdiv(triton.cdiv(K, split_k), block_k) * block_k if split_k > 1 else K
    num_blocks = triton.cdiv(N, block_n)
    part = counters = None
    if split_k > 1:
        part = torch.empty((split_k, N), dtype=torch.float32, device=x.device)
        counters = _counter_buffer(x.device, num_blocks)
    b = bias if bias is not None else weight  # a valid pointer, never read
    _gemv_kernel[(num_blocks, split_k)](
        x, weight, weight_scale if weight_scale is not None else y, b, y,
        part if part is not None else y, counters if counters is not None else y,
        N, K, weight.stride(0), k_split, split_k, HAS_SCALE=weight_scale is not None,
        HAS_BIAS=bias is not None,
        EVEN_N=N % block_n == 0, EVEN_K=k_split * split_k == K and k_split % block_k == 0,
        SPLIT=split_k > 1, LAST_REDUCES=counters is not None, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=num_warps, num_stages=num_stages)
    if split_k > 1 and counters is None:
        _reduce_kernel[(triton.cdiv(N, _REDUCE_BLOCK),)](
            part, b, y, N, split_k, HAS_BIAS=bias is not None, BLOCK=_REDUCE_BLOCK, num_warps=4)
    return y
