"""Gated activations: out = act(gate) * up with x = cat[gate, up] on the last dim; act is SiLU
(SwiGLU) or tanh-approximated GELU (GeGLU).

Grid (rows, column blocks); each element read once and written once, float32 math."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from sgl.kernels.triton._common import FLOAT_DTYPES, check_out, require_cuda, require_dtype

_BLOCK = 1024
_SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)  # a jit function reads only constexpr globals


@triton.jit
def _gated_kernel(X, Out, stride_x, stride_out, d, GELU: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < d
    gate = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(X + row * stride_x + d + cols, mask=mask, other=0.0).to(tl.float32)
    if GELU:  # 0.5 x (1 + tanh(y)) = x * sigmoid(2y), y = sqrt(2 / pi) (x + 0.044715 x^3)
        inner = _SQRT_2_OVER_PI * (gate + 0.044715 * gate * gate * gate)
        act = gate * tl.sigmoid(2.0 * inner)
    else:
        act = gate / (1.0 + tl.exp(-gate))
    tl.store(Out + row * stride_out + cols, (act * up).to(Out.dtype.element_ty), mask=mask)


def _gated(x: torch.Tensor, out: torch.Tensor | None, gelu: bool) -> torch.Tensor:
    require_cuda(x=x)
    require_dtype("x", x, FLOAT_DTYPES)
    if x.shape[-1] % 2:
        raise ValueError(f"last dim {x.shape[-1]} must be even (gate and up halves)")
    d = x.shape[-1] // 2
    x2 = x.reshape(-1, 2 * d)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = check_out("out", out, (*x.shape[:-1], d), x.dtype, x.device)
    if x2.shape[0] == 0 or d == 0:
        return out
    grid = (x2.shape[0], triton.cdiv(d, _BLOCK))
    _gated_kernel[grid](x2, out.view(-1, d), x2.stride(0), d, d, GELU=gelu, BLOCK=_BLOCK,
                        num_warps=4)
    return out


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x: (..., 2 * d) -> (..., d) in x's dtype (into `out` if given)."""
    return _gated(x, out, gelu=False)


def gelu_tanh_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x: (..., 2 * d) -> (..., d): gelu(gate, approximate="tanh") * up."""
    return _gated(x, out, gelu=True)
