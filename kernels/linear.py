"""y = x W^T (+ b). cuBLAS, except a single row (batch-1 decode) on CUDA against a weight whose
shape has a Triton GEMV entry in GEMV_CONFIGS, or an untuned weight of at least GEMV_MIN_NUMEL
elements: there the Triton GEMV (kernels/triton/gemv.py) moves the weight bytes faster than
cuBLAS's choice for M = 1 (sgl/bench_gemv.py on an H100: 78 vs 83 us for 4096 x 28672, 333
vs 377 us for the LM head, before the per-shape table)."""
from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F

from sgl.kernels.dispatch import use_triton

# Below this many weight elements an untuned shape stays with cuBLAS.
GEMV_MIN_NUMEL = 48 * 1024 * 1024
# Weight (N, K) -> the Triton GEMV's (BLOCK_N, BLOCK_K, num_warps, num_stages, SPLIT_K) at M = 1,
# or None for cuBLAS: Llama-3.1-8B at TP 1, from `sgl/bench_gemv.py --quick` on an H200 (the
# H100's SM; 2026-11-27, docs/benchmarks.md), where one layer's four linears took 110.3 us
# against cuBLAS's 117.9. Split-K won on no shape there. Not yet re-probed on an H100.
GEMV_CONFIGS: dict[tuple[int, int], tuple[int, ...] | None] = {
    (6144, 4096): (2, 1024, 4, 3, 1),    # qkv: Triton 15.3 us, F.linear 16.4 us
    (4096, 4096): (8, 512, 8, 3, 1),     # o_proj: Triton 10.5 us, F.linear 13.4 us
    (28672, 4096): (8, 256, 4, 3, 1),    # gate_up: Triton 55.9 us, F.linear 62.4 us
    (4096, 14336): (8, 512, 8, 3, 1),    # down: Triton 29.8 us, F.linear 31.6 us
    (128256, 4096): (8, 256, 4, 3, 1),   # LM head: Triton 233.7 us, F.linear 240.8 us
}
# FP8 weights (N, K) -> the GEMV's config at M = 1 (float8_e4m3fn rows, half the bytes of a bf16
# row), or None for torch._scaled_mm. Empty until probed on an H100 (`sgl/bench_gemv.py --fp8`):
# every FP8 shape takes FP8_DEFAULT_GEMV_CONFIG, wide K blocks so that a thread loads 16 bytes.
FP8_GEMV_CONFIGS: dict[tuple[int, int], tuple[int, ...] | None] = {}
FP8_DEFAULT_GEMV_CONFIG = (4, 2048, 8, 3, 1)
# SGL_GEMV_CONFIGS=PATH: entries over these, from `gemv_probe.py --table-out PATH` on this GPU.
if os.environ.get("SGL_GEMV_CONFIGS"):
    with open(os.environ["SGL_GEMV_CONFIGS"]) as _f:
        GEMV_CONFIGS.update({tuple(int(d) for d in key.split(",")): tuple(cfg) if cfg else None
                             for key, cfg in json.load(_f).items()})
# SGL_DISABLE_GEMV=1: cuBLAS everywhere (to compare the two in one run).
_GEMV = os.environ.get("SGL_DISABLE_GEMV", "0").lower() in ("", "0", "false", "no")


def gemv_config(n: int, k: int, fp8: bool = False) -> tuple[int, ...] | None:
    """The Triton GEMV's config for a weight (n, k) at M = 1, or None for cuBLAS: the tuned
    entry if there is one, else the kernel's default from GEMV_MIN_NUMEL elements up. FP8
    weights: FP8_GEMV_CONFIGS' entry, else FP8_DEFAULT_GEMV_CONFIG at every size."""
    if fp8:  # SGL_DISABLE_GEMV=1 sends FP8 rows to torch._scaled_mm
        return FP8_GEMV_CONFIGS.get((n, k), FP8_DEFAULT_GEMV_CONFIG) if _GEMV else None
    if (n, k) in GEMV_CONFIGS:
        return GEMV_CONFIGS[(n, k)]
    if n * k < GEMV_MIN_NUMEL:
        return None
    from sgl.kernels.triton.gemv import DEFAULT_CONFIG
    return DEFAULT_CONFIG


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    if (_GEMV and x.dim() == 2 and x.shape[0] == 1 and weight.dim() == 2
            and x.dtype in (torch.bfloat16, torch.float16) and weight.dtype == x.dtype
            and weight.stride(1) == 1 and use_triton(x)):
        config = gemv_config(*weight.shape)
        if config is not None:
            from sgl.kernels.triton.gemv import gemv
            return gemv(x.contiguous(), weight, bias, config=config)
    return F.linear(x, weight, bias)
