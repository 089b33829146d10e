"""Store new tokens' K/V into one layer of the KV pool: the Triton kernel (one launch for K and
V) on CUDA tensors, the index_put reference elsewhere (and as the kernel's oracle). An FP8 pool
(float8_e4m3fn / float8_e5m2) stores value / scale with one scale for K and one for V of the
layer, saturated to the format's range; readers multiply by the scale."""
from __future__ import annotations

import torch

from sgl.kernels.dispatch import use_triton
from sgl.kernels.fp8 import is_fp8, quantize_to_fp8


def store_kv(k_buffer: torch.Tensor, v_buffer: torch.Tensor, loc: torch.Tensor,
             k: torch.Tensor, v: torch.Tensor, k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    """k_buffer, v_buffer: (slots, Hkv, D); loc: (T,) slot of each new token; k, v: (T, Hkv, D)
    (or (T, Hkv * D)), cast to the pool dtype (FP8: k / k_scale, v / v_scale)."""
    if use_triton(k_buffer):
        from sgl.kernels.triton import kv_store
        kv_store.store_kv(k_buffer, v_buffer, loc, k, v, k_scale, v_scale)
        return
    store_kv_ref(k_buffer, v_buffer, loc, k, v, k_scale, v_scale)


def store_kv_ref(k_buffer: torch.Tensor, v_buffer: torch.Tensor, loc: torch.Tensor,
                 k: torch.Tensor, v: torch.Tensor, k_scale: float = 1.0,
                 v_scale: float = 1.0) -> None:
    num_tokens = loc.shape[0]
    k_buffer[loc] = to_pool(k.reshape(num_tokens, *k_buffer.shape[1:]), k_buffer.dtype, k_scale)
    v_buffer[loc] = to_pool(v.reshape(num_tokens, *v_buffer.shape[1:]), v_buffer.dtype, v_scale)


def to_pool(x: torch.Tensor, dtype: torch.dtype, scale: float) -> torch.Tensor:
    """x as the pool stores it: x / scale in FP8, else x cast."""
    return quantize_to_fp8(x, scale, dtype) if is_fp8(dtype) else x.to(dtype)


def from_pool(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Stored K or V back in float32 (x * scale for FP8)."""
    return x.float() * scale if is_fp8(x.dtype) else x.float()
