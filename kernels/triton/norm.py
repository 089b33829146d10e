"""RMSNorm and fused residual-add + RMSNorm: one program per row, the whole row in registers.

Bytes: read x (+ residual) and the weight, write the output (+ the new residual); float32 math.
Out of place, like the references in `sgl.kernels.norm`."""
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
)

_MAX_HIDDEN = 65536


@triton.jit
def _rms_norm_kernel(X, R, W, Out, NewR, stride_x, stride_r, stride_out, stride_new_r,
                     n_cols, eps, HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        x += tl.load(R + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(NewR + row * stride_new_r + cols, x.to(NewR.dtype.element_ty), mask=mask)
    inv_rms = tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Out + row * stride_out + cols, (x * inv_rms * w).to(Out.dtype.element_ty), mask=mask)


def _rows(name: str, t: torch.Tensor, hidden: int) -> torch.Tensor:
    if t.shape[-1] != hidden:
        raise ValueError(f"{name}: last dim {t.shape[-1]} != hidden {hidden}")
    t2 = t.reshape(-1, hidden)  # a view when possible
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _launch(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
            out: torch.Tensor | None, residual_out: torch.Tensor | None
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    hidden = weight.shape[0]
    tensors = {"x": x, "weight": weight} | ({"residual": residual} if residual is not None else {})
    require_cuda(**tensors)
    for name, t in tensors.items():
        require_dtype(name, t, FLOAT_DTYPES)
    if weight.dim() != 1 or not weight.is_contiguous():
        raise ValueError("weight must be a contiguous (hidden,) tensor")
    if hidden > _MAX_HIDDEN:
        raise ValueError(f"hidden {hidden} > {_MAX_HIDDEN}: one row must fit in one program")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")
    x2 = _rows("x", x, hidden)
    out = check_out("out", out, x.shape, x.dtype, x.device)
    new_residual = None
    if residual is not None:
        r2 = _rows("residual", residual, hidden)
        new_residual = check_out("residual_out", residual_out, x.shape, residual.dtype, x.device)
    num_rows = x2.shape[0]
    if num_rows == 0:
        return out, new_residual
    block = next_pow2(hidden)
    r_arg = r2 if residual is not None else x2
    nr_arg = new_residual.view(-1, hidden) if residual is not None else out.view(-1, hidden)
    _rms_norm_kernel[(num_rows,)](
        x2, r_arg, weight, out.view(-1, hidden), nr_arg, x2.stride(0), r_arg.stride(0),
        hidden, hidden, hidden, float(eps), HAS_RESIDUAL=residual is not None, BLOCK=block,
        num_warps=min(16, max(1, block // 512)))
    return out, new_residual


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """x: (..., hidden), weight: (hidden,) -> (..., hidden) in x's dtype (into `out` if given)."""
    return _launch(x, None, weight, eps, out, None)[0]


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                       out: torch.Tensor | None = None, residual_out: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual); the sum stays float32 until both stores.
    `out` / `residual_out` may be x / residual themselves (each row is read before written)."""
    out, new_residual = _launch(x, residual, weight, eps, out, residual_out)
    return out, new_residual
