"""Checks shared by the Triton wrappers."""
from __future__ import annotations

import os

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def require_cuda(**tensors: torch.Tensor) -> None:
    """Raise unless every named tensor lives on one CUDA device."""
    devices = {t.device for t in tensors.values()}
    for name, t in tensors.items():
        if not t.is_cuda and not is_interpreting():
            raise ValueError(f"{name} must be a CUDA tensor (got {t.device}); "
                             "use the torch reference")
    if len(devices) > 1:
        raise ValueError(f"tensors on different devices: {sorted(map(str, devices))}")


def require_dtype(name: str, t: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    if t.dtype not in allowed:
        raise ValueError(f"{name}: dtype {t.dtype} not in {allowed}")


def require_pool_dtypes(q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor) -> None:
    """The attention kernels' pools: q's dtype (16 or 32-bit float), or one FP8 format for both."""
    require_dtype("q", q, FLOAT_DTYPES)
    if k_buffer.dtype != v_buffer.dtype or k_buffer.dtype not in (q.dtype, *FP8_DTYPES):
        raise ValueError(f"q {q.dtype}, k_buffer {k_buffer.dtype}, v_buffer {v_buffer.dtype}: "
                         "the pool holds q's dtype or FP8 (cast q to a 16/32-bit pool's dtype)")


def require_last_dim_contiguous(name: str, t: torch.Tensor) -> None:
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name}: last dim must be contiguous, strides {t.stride()}")


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def is_interpreting() -> bool:
    """TRITON_INTERPRET=1 runs the kernels on the CPU (numpy): slow, but checks them with no GPU."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_out(name: str, out: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype,
              device: torch.device) -> torch.Tensor:
    """A caller's output tensor after checks, or a new one."""
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype or not out.is_contiguous():
        raise ValueError(f"{name}: expected contiguous {tuple(shape)} {dtype}, got "
                         f"{tuple(out.shape)} {out.dtype} strides {out.stride()}")
    return out


def sm_count(device: torch.device) -> int:
    """Multiprocessors of the device (an H100's 132 under the CPU interpreter)."""
    if device.type != "cuda":
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count


def dot_width(dim: int) -> int:
    """A head-dim block for tl.dot: a power of two and at least 16, the smallest K it takes
    (tiny test models have 8-wide heads; the padding is masked)."""
    return max(16, next_pow2(dim))


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot's input_precision: float32 inputs multiply in full precision ("ieee"), as torch
    does, not in TF32 (which would make a float32 run differ from the torch backend's greedy
    choices); for 16-bit inputs the setting does not apply."""
    return "ieee" if dtype == torch.float32 else "tf32"
