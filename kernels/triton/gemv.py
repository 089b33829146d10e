"""Matrix-vector product for one-token decode: y = x W^T (+ b) with x of shape (1, K) and W
(N, K) row-major, the layout of every linear layer's weight. At batch 1 a decode step is a
stream of weight bytes; this kernel reads each weight row once with wide contiguous loads and
keeps (BLOCK_N, BLOCK_K) float32 partial products in registers, summing them once at the end.

Grid: one program per BLOCK_N output rows."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from sgl.kernels.triton._common import FLOAT_DTYPES, check_out, require_cuda, require_dtype

# (BLOCK_N, BLOCK_K, num_warps, num_stages): within 3% of the best per shape on an H100 for
# the large matrices of the 8B shape (scripts/gemv_probe.py).
DEFAULT_CONFIG = (4, 1024, 8, 3)


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, N, K, stride_wn, HAS_BIAS: tl.constexpr,
                 EVEN_N: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_n = offs_n < N
    w_ptrs = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            x = tl.load(x_ptr + k0 + offs_k)
            if EVEN_N:
                w = tl.load(w_ptrs)
            else:
                w = tl.load(w_ptrs, mask=mask_n[:, None], other=0.0)
        else:
            mask_k = k0 + offs_k < K
            x = tl.load(x_ptr + k0 + offs_k, mask=mask_k, other=0.0)
            w = tl.load(w_ptrs, mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
        w_ptrs += BLOCK_K
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=mask_n)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         out: torch.Tensor | None = None,
         config: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """x (1, K), weight (N, K) with contiguous rows, bias (N,) or None -> (1, N) in x's dtype."""
    require_cuda(x=x, weight=weight)
    require_dtype("x", x, FLOAT_DTYPES)
    if x.dim() != 2 or x.shape[0] != 1 or weight.dim() != 2 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"gemv: x (1, K) and weight (N, K), got {tuple(x.shape)} and {tuple(weight.shape)}")
    if weight.stride(1) != 1 or not x.is_contiguous():
        raise ValueError("gemv: weight rows and x must be contiguous")
    N, K = weight.shape
    y = check_out("out", out, (1, N), x.dtype, x.device)
    block_n, block_k, num_warps, num_stages = config or DEFAULT_CONFIG
    _gemv_kernel[(triton.cdiv(N, block_n),)](
        x, weight, bias if bias is not None else weight, y, N, K, weight.stride(0),
        HAS_BIAS=bias is not None, EVEN_N=N % block_n == 0, EVEN_K=K % block_k == 0,
        BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps, num_stages=num_stages)
    return y
