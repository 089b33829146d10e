"""Activation quantization for FP8 matmuls: x (M, K) -> x_fp8 (M, K) float8_e4m3fn and a float32
scale per row (M, 1), either dynamic (scale = amax(|row|) / 448, one program per row: a pass for
the maximum, a pass to scale and round) or one static scale for every row.

What `kernels/fp8.quantize_activation_ref` computes, in one launch instead of five (abs, amax,
divide, clamp, cast); the rounding is the same (round to nearest even, saturated)."""
from __future__ import annotations

import torch

import triton
import triton.language as tl
from sgl.kernels.fp8 import FP8_MAX, MIN_SCALE
from sgl.kernels.triton._common import FLOAT_DTYPES, next_pow2, require_cuda, require_dtype

_MAX_BLOCK = 4096


@triton.jit
def _quant_kernel(X, Out, Scale, StaticScale, K, stride_x, stride_o, STATIC: tl.constexpr,
                  BLOCK: tl.constexpr, FP8MAX: tl.constexpr, MIN_SCALE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    x_row = X + row * stride_x
    if STATIC:
        scale = tl.load(StaticScale).to(tl.float32)
    else:
        amax = tl.zeros([BLOCK], tl.float32)
        for k0 in range(0, K, BLOCK):
            x = tl.load(x_row + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(x))
        scale = tl.maximum(tl.math.div_rn(tl.max(amax, 0), FP8MAX), MIN_SCALE)
    tl.store(Scale + row, scale)
    for k0 in range(0, K, BLOCK):
        mask = k0 + offs < K
        x = tl.load(x_row + k0 + offs, mask=mask, other=0.0).to(tl.float32)
        q = tl.math.div_rn(x, scale)  # IEEE division, as the reference's: the same FP8 values
        q = tl.minimum(tl.maximum(q, -FP8MAX), FP8MAX)
        tl.store(Out + row * stride_o + k0 + offs, q.to(Out.dtype.element_ty), mask=mask)


def quantize_per_token(x: torch.Tensor,
                       static_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) float, last dim contiguous -> (x_fp8 (M, K) float8_e4m3fn, scale (M, 1) float32).
    static_scale: a one-element float32 tensor used for every row (checkpoints with static
    activation scales); None computes each row's scale."""
    require_cuda(x=x)
    require_dtype("x", x, FLOAT_DTYPES)
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"quantize_per_token: x (M, K) with contiguous rows, got "
                         f"{tuple(x.shape)} strides {x.stride()}")
    if static_scale is not None:
        require_cuda(x=x, static_scale=static_scale)
        require_dtype("static_scale", static_scale, (torch.float32,))
        if static_scale.numel() != 1:
            raise ValueError(f"static_scale: one element, got {tuple(static_scale.shape)}")
    num_rows, k = x.shape
    out = torch.empty((num_rows, k), dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty((num_rows, 1), dtype=torch.float32, device=x.device)
    if num_rows == 0:
        return out, scale
    block = min(_MAX_BLOCK, next_pow2(k))
    _quant_kernel[(num_rows,)](
        x, out, scale, static_scale if static_scale is not None else scale, k, x.stride(0),
        out.stride(0), STATIC=static_scale is not None, BLOCK=block, FP8MAX=FP8_MAX,
        MIN_SCALE=MIN_SCALE, num_warps=4 if block <= 1024 else 8)
    return out, scale
