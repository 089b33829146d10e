"""FP8 (e4m3) linear layers: y = x W^T (+ b) with W stored in FP8 with one float32 scale per
output row (W ~= W_fp8 * w_scale[:, None]) and x quantized per token on the fly (dynamic scales,
x ~= x_fp8 * x_scale[:, None]) or with one static scale from the checkpoint.

Paths, picked per call by `fp8_linear`:
  - the torch reference (`fp8_linear_ref`): quantize x, dequantize both operands to float32 and
    multiply. The CPU path (so CI checks the numerics of the GPU paths) and every kernel's oracle.
  - one row on CUDA (batch-1 decode): the Triton GEMV of kernels/triton/gemv.py reading the FP8
    weight and scaling each output row. x is not quantized there (weight-only, the more exact of
    the two): at M = 1 the step is a stream of weight bytes, and FP8 halves them.
  - more rows on CUDA with FP8 matrix units (sm89+): x quantized per token by a Triton kernel,
    then `torch._scaled_mm` with row-wise scales (x_scale per row, w_scale per column of W^T).
  - anything else on CUDA (older GPUs, K or N not a multiple of 16): the reference.
"""
from __future__ import annotations

import functools

import torch

from sgl.kernels.dispatch import use_triton

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
# A row of zeros gets this scale (any positive value would do: its quantized values are 0).
MIN_SCALE = 1e-12
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in FP8_DTYPES


def fp8_max(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).max)


def quantize_to_fp8(x: torch.Tensor, scale: torch.Tensor | float,
                    dtype: torch.dtype = FP8_DTYPE) -> torch.Tensor:
    """x / scale, saturated to the format's range and rounded to FP8 (scale broadcasts)."""
    limit = fp8_max(dtype)
    return (x.float() / scale).clamp_(-limit, limit).to(dtype)


def quantize_rows_ref(x: torch.Tensor, dtype: torch.dtype = FP8_DTYPE) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row quantization of x (..., K): (x_fp8, scale (..., 1) float32) with
    scale = amax(|row|) / max: the largest element of every row maps to the format's largest
    value. Weights at load time (per output channel) and activations (per token) alike."""
    amax = x.abs().amax(dim=-1, keepdim=True).float()
    scale = (amax / fp8_max(dtype)).clamp_(min=MIN_SCALE)
    return quantize_to_fp8(x, scale, dtype), scale


def quantize_activation_ref(x: torch.Tensor,
                            input_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) -> (x_fp8 (M, K), scale (M, 1) float32): per token, or the static scale."""
    if input_scale is None:
        return quantize_rows_ref(x)
    scale = input_scale.float().reshape(1, 1).expand(x.shape[0], 1)
    return quantize_to_fp8(x, scale), scale


def fp8_linear_ref(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                   bias: torch.Tensor | None = None,
                   input_scale: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K), weight (N, K) FP8, weight_scale (N,) float32 -> (..., N) in x's dtype: x is
    quantized as `quantize_activation_ref` does, then both sides are dequantized to float32."""
    x2 = x.reshape(-1, x.shape[-1])
    x_fp8, x_scale = quantize_activation_ref(x2, input_scale)
    y = (x_fp8.float() @ weight.float().T) * x_scale * weight_scale.float()[None, :]
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])


def fp8_gemv_ref(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """The batch-1 GEMV's numerics: x (1, K) unquantized against the dequantized weight."""
    y = (x.float() @ weight.float().T) * weight_scale.float()[None, :]
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


@functools.lru_cache(maxsize=8)
def has_fp8_matmul(device: torch.device) -> bool:
    """FP8 matrix units (compute capability 8.9+) behind torch._scaled_mm."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
               bias: torch.Tensor | None = None,
               input_scale: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) in a float dtype, weight (N, K) float8_e4m3fn with contiguous rows,
    weight_scale (N,) float32, bias (N,) or None, input_scale: () float32 for a static
    activation scale, None for per-token scales. Returns (..., N) in x's dtype."""
    if weight.dtype != FP8_DTYPE or weight_scale.shape != (weight.shape[0],):
        raise ValueError(f"fp8_linear: weight (N, K) {FP8_DTYPE} and weight_scale (N,), got "
                         f"{weight.dtype} {tuple(weight.shape)}, {tuple(weight_scale.shape)}")
    if not use_triton(x):
        return fp8_linear_ref(x, weight, weight_scale, bias, input_scale)
    x2 = x.reshape(-1, x.shape[-1])
    config = _gemv_config(x2, weight)
    if config is not None:
        from sgl.kernels.triton.gemv import gemv
        y = gemv(x2.contiguous(), weight, bias, config=config, weight_scale=weight_scale)
    elif _fits_scaled_mm(x2, weight):
        y = fp8_scaled_mm(x2, weight, weight_scale, bias, input_scale)
    else:
        return fp8_linear_ref(x, weight, weight_scale, bias, input_scale)
    return y.reshape(*x.shape[:-1], weight.shape[0])


def _gemv_config(x: torch.Tensor, weight: torch.Tensor) -> tuple[int, ...] | None:
    """The FP8 GEMV's config for one row of x, None for the other paths."""
    if x.shape[0] != 1 or weight.stride(1) != 1 or x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return None
    from sgl.kernels.linear import fp8_gemv_config
    return fp8_gemv_config(*weight.shape)


def _fits_scaled_mm(x: torch.Tensor, weight: torch.Tensor) -> bool:
    n, k = weight.shape
    return has_fp8_matmul(x.device) and n % 16 == 0 and k % 16 == 0 and weight.is_contiguous()


@functools.lru_cache(maxsize=8)
def _unit_scale(device: torch.device) -> torch.Tensor:
    return torch.ones((), dtype=torch.float32, device=device)


def fp8_scaled_mm(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                  bias: torch.Tensor | None, input_scale: torch.Tensor | None) -> torch.Tensor:
    """x (M, K) quantized per token (or by input_scale) by the Triton kernel, then cuBLAS's FP8
    GEMM with row-wise scales; CUDA, sm89+, K and N multiples of 16."""
    from sgl.kernels.triton.fp8_quant import quantize_per_token
    x_fp8, x_scale = quantize_per_token(x.contiguous(), input_scale)  # (M, K), (M, 1)
    # cuBLAS wants W^T column-major, which W (N, K) row-major is.
    if x.dtype == torch.float32:
        # Row-wise scaling writes bfloat16 only, and bf16's rounding of one layer's output moves
        # values across the next layer's FP8 rounding boundaries (a tiny float32 model's prompt
        # logprobs: 0.08 apart from the reference). A float32 model takes the unscaled product
        # in float32 (unit tensor-wise scales) and applies both scales after, as the reference.
        one = _unit_scale(x.device)
        y = torch._scaled_mm(x_fp8, weight.t(), scale_a=one, scale_b=one, out_dtype=torch.float32)
        y = y * x_scale * weight_scale.view(1, -1)
    else:  # row-wise scaling: scale_a (M, 1) and scale_b (1, N), float32
        y = torch._scaled_mm(x_fp8, weight.t(), scale_a=x_scale, scale_b=weight_scale.view(1, -1),
                             out_dtype=torch.bfloat16)
    if bias is not None:
        y = y + bias
    return y if y.dtype == x.dtype else y.to(x.dtype)
