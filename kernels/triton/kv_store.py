"""Write the K and V of new tokens into one layer's pool at their slots, in one launch.

The torch path (`k_buffer[loc] = k; v_buffer[loc] = v`) is two index_put launches per layer; this
is one, and casts on the fly. Grid (tokens, row blocks); each program copies one token's K row and
V row (Hkv * D contiguous elements each). An FP8 pool stores value / scale (a per-tensor scale
for K, one for V), saturated to the format's range, rounded to nearest as the reference does."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from sgl.kernels.triton._common import (FLOAT_DTYPES, FP8_DTYPES, next_pow2, require_cuda,
                                         require_dtype)

_MAX_BLOCK = 4096


@triton.jit
def _to_fp8(x, scale, FP8_MAX: tl.constexpr):
    x = tl.math.div_rn(x.to(tl.float32), scale)  # IEEE division, as the reference's
    return tl.minimum(tl.maximum(x, -FP8_MAX), FP8_MAX)


@triton.jit
def _store_kv_kernel(K, V, KBuf, VBuf, Loc, stride_kt, stride_vt, stride_kbt, stride_vbt,
                     row_size, k_scale, v_scale, FP8_MAX: tl.constexpr, BLOCK: tl.constexpr):
    # FP8_MAX: the pool format's largest value when it is FP8, else 0 (a plain cast)
    token = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < row_size
    slot = tl.load(Loc + token).to(tl.int64)
    k = tl.load(K + token * stride_kt + offs, mask=mask)
    v = tl.load(V + token * stride_vt + offs, mask=mask)
    if FP8_MAX > 0:
        k = _to_fp8(k, k_scale, FP8_MAX)
        v = _to_fp8(v, v_scale, FP8_MAX)
    tl.store(KBuf + slot * stride_kbt + offs, k.to(KBuf.dtype.element_ty), mask=mask)
    tl.store(VBuf + slot * stride_vbt + offs, v.to(VBuf.dtype.element_ty), mask=mask)


def _token_rows(name: str, t: torch.Tensor, num_tokens: int, row_size: int) -> torch.Tensor:
    """(T, ...) with a packed row of row_size elements per token -> a (T, row_size) view."""
    t2 = t.reshape(num_tokens, -1)
    if t2.shape[1] != row_size:
        raise ValueError(f"{name}: {t2.shape[1]} elements per token, pool rows hold {row_size}")
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def store_kv(k_buffer: torch.Tensor, v_buffer: torch.Tensor, loc: torch.Tensor, k: torch.Tensor,
             v: torch.Tensor, k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    """k_buffer, v_buffer: (slots, Hkv, D) contiguous; loc: (T,) int slots (in range, not
    bounds-checked on the device); k, v: (T, Hkv, D) or (T, Hkv * D), cast to the pool dtype.
    An FP8 pool stores k / k_scale and v / v_scale (the scales are ignored otherwise)."""
    require_cuda(k_buffer=k_buffer, v_buffer=v_buffer, loc=loc, k=k, v=v)
    for name, t in (("k_buffer", k_buffer), ("v_buffer", v_buffer)):
        require_dtype(name, t, FLOAT_DTYPES + FP8_DTYPES)
    for name, t in (("k", k), ("v", v)):
        require_dtype(name, t, FLOAT_DTYPES)
    if k_buffer.dtype != v_buffer.dtype:
        raise ValueError(f"k_buffer {k_buffer.dtype} and v_buffer {v_buffer.dtype} differ")
    require_dtype("loc", loc, (torch.int32, torch.int64))
    if not (k_buffer.is_contiguous() and v_buffer.is_contiguous()):
        raise ValueError("k_buffer and v_buffer must be contiguous (slots, Hkv, D)")
    num_tokens = loc.shape[0]
    if loc.dim() != 1 or k.shape[0] != num_tokens or v.shape[0] != num_tokens:
        raise ValueError(f"loc (T,) and k, v (T, ...) expected; got {tuple(loc.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if num_tokens == 0:
        return
    k_row, v_row = k_buffer[0].numel(), v_buffer[0].numel()
    if k_row != v_row:
        raise ValueError("this kernel stores K and V rows of one size")
    k2 = _token_rows("k", k, num_tokens, k_row)
    v2 = _token_rows("v", v, num_tokens, v_row)
    block = min(_MAX_BLOCK, next_pow2(k_row))
    grid = (num_tokens, triton.cdiv(k_row, block))
    fp8_max = float(torch.finfo(k_buffer.dtype).max) if k_buffer.dtype in FP8_DTYPES else 0.0
    _store_kv_kernel[grid](k2, v2, k_buffer, v_buffer, loc, k2.stride(0), v2.stride(0),
                           k_row, v_row, k_row, float(k_scale), float(v_scale), FP8_MAX=fp8_max,
                           BLOCK=block, num_warps=4)
