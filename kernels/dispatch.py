"""Which path the kernels take. Each Triton kernel (`sgl.kernels.triton.*`) sits beside the pure-torch
reference it is tested against; the public functions of `norm`, `activation`, `rotary`, `kv_store`
and `moe` dispatch:
Triton when the tensor lives on a CUDA device and Triton is usable, the reference otherwise.

`SGL_DISABLE_TRITON=1` in the environment (or `set_triton_enabled(False)`) forces the references
everywhere, e.g. to bisect a numerical difference. A debugging aid, so an environment variable
rather than a server argument; it is read at the first dispatch, not at import.
"""
from __future__ import annotations

import functools
import os

import torch

_enabled: bool | None = None  # None: SGL_DISABLE_TRITON not read yet


@functools.lru_cache(maxsize=1)
def is_triton_available() -> bool:
    """Triton imports and a CUDA device exists (checked once per process)."""
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def set_triton_enabled(enabled: bool) -> None:
    global _enabled
    _enabled = enabled


def triton_enabled() -> bool:
    """False when SGL_DISABLE_TRITON is set (read once, at the first call) or after
    set_triton_enabled(False)."""
    global _enabled
    if _enabled is None:
        _enabled = os.environ.get("SGL_DISABLE_TRITON", "0").lower() in ("", "0", "false", "no")
    return _enabled


def use_triton(x: torch.Tensor) -> bool:
    """Whether the dispatching kernels take their Triton path for tensors like `x`."""
    return x.is_cuda and triton_enabled() and is_triton_available()
