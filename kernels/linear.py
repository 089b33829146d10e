"""y = x W^T (+ b). cuBLAS, except a single row (batch-1 decode) on CUDA against a weight whose
shape has a Triton GEMV entry in the device's table, or an untuned weight of at least
GEMV_MIN_NUMEL elements: there the Triton GEMV (kernels/triton/gemv.py) moves the weight bytes
faster than cuBLAS's choice for M = 1 (sgl/bench_gemv.py on an H100: 78 vs 83 us for
4096 x 28672, 333 vs 377 us for the LM head, before the per-shape table).

The per-shape tables are data files picked by device name (kernels/gemv_tables.py); the runner
applies --disable-gemv and --gemv-configs through `configure_gemv`. A device's table is resolved
at its first batch-1 linear, never at import.

--enable-deterministic-inference (`configure_batch_invariance`) replaces all of that with
`invariant_linear`: fixed-size row chunks, one GEMM shape per weight, whatever the batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sgl.kernels.dispatch import use_triton
from sgl.kernels.gemv_tables import GemvConfig, GemvTable, read_table, shipped_table

# Below this many weight elements an untuned shape stays with cuBLAS.
GEMV_MIN_NUMEL = 48 * 1024 * 1024
# FP8 weights (N, K) -> the GEMV's config at M = 1 (float8_e4m3fn rows, half the bytes of a bf16
# row), or None for torch._scaled_mm. Empty until probed on an H100 (`sgl/bench_gemv.py --fp8`
# prints entries to paste here): every FP8 shape takes FP8_DEFAULT_GEMV_CONFIG, wide K blocks so
# that a thread loads 16 bytes. --gemv-configs tables are for 16-bit weights and do not apply.
FP8_GEMV_CONFIGS: GemvTable = {}
FP8_DEFAULT_GEMV_CONFIG = (4, 2048, 8, 3, 1)

# Batch-invariant mode (--enable-deterministic-inference): every GEMM call has this many rows.
# One fixed (rows, K) x (K, N) shape per weight means one cuBLAS (or MKL) kernel, so a row's
# result depends on that row alone, never on how many rows the step had. Enough rows to keep
# the H100's matrix units busy on a chunk of a long prompt; few on the CPU, where every padded
# row costs its FLOPs.
INVARIANT_ROWS = {"cuda": 256, "cpu": 16}

# Process-wide settings: defaults until a runner calls configure_gemv.
_invariant = False
_enabled = True
_overrides: GemvTable = {}           # --gemv-configs entries
_tables: dict[int, GemvTable] = {}   # CUDA device index -> its table, filled at first use


def configure_gemv(enabled: bool = True, configs_file: str | None = None) -> None:
    """Apply --disable-gemv (`enabled=False`: cuBLAS for every linear, e.g. to compare the two in
    one run) and --gemv-configs (a table file whose entries go over the device's shipped table).
    Raises ValueError for a malformed file. The last runner configured in a process sets it."""
    global _enabled, _overrides
    _overrides = read_table(configs_file) if configs_file else {}
    _enabled = enabled
    _tables.clear()


def configure_batch_invariance(enabled: bool) -> None:
    """--enable-deterministic-inference: `linear` runs every input as chunks of
    INVARIANT_ROWS[device] rows (the last one zero-padded), never the GEMV; set per process,
    as configure_gemv is."""
    global _invariant
    _invariant = enabled


def batch_invariant() -> bool:
    return _invariant


def gemv_enabled() -> bool:
    return _enabled


def gemv_table_for(device_name: str) -> GemvTable:
    """The table used on a device of this name: the shipped one, --gemv-configs entries over it."""
    return {**shipped_table(device_name), **_overrides}


def _device_table(device: torch.device) -> GemvTable:
    index = torch.cuda.current_device() if device.index is None else device.index
    table = _tables.get(index)
    if table is None:
        table = _tables[index] = gemv_table_for(torch.cuda.get_device_name(index))
    return table


def gemv_config(n: int, k: int, table: GemvTable) -> GemvConfig:
    """The Triton GEMV's config for a weight (n, k) at M = 1, or None for cuBLAS: the table's
    entry if there is one, else the kernel's default from GEMV_MIN_NUMEL elements up."""
    if (n, k) in table:
        return table[(n, k)]
    if n * k < GEMV_MIN_NUMEL:
        return None
    from sgl.kernels.triton.gemv import DEFAULT_CONFIG
    return DEFAULT_CONFIG


def fp8_gemv_config(n: int, k: int) -> GemvConfig:
    """The GEMV's config for an FP8 weight (n, k) at M = 1 (every size), or None for
    torch._scaled_mm: always None under --disable-gemv."""
    return FP8_GEMV_CONFIGS.get((n, k), FP8_DEFAULT_GEMV_CONFIG) if _enabled else None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    if _invariant:
        return invariant_linear(x, weight, bias)
    if (_enabled and x.dim() == 2 and x.shape[0] == 1 and weight.dim() == 2
            and x.dtype in (torch.bfloat16, torch.float16) and weight.dtype == x.dtype
            and weight.stride(1) == 1 and use_triton(x)):
        config = gemv_config(*weight.shape, _device_table(x.device))
        if config is not None:
            from sgl.kernels.triton.gemv import gemv
            return gemv(x.contiguous(), weight, bias, config=config)
    return F.linear(x, weight, bias)


def invariant_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     rows: int | None = None) -> torch.Tensor:
    """x W^T (+ b) whose every row is what that row alone would give: the rows go through the
    GEMM in chunks of `rows` (default INVARIANT_ROWS for x's device), the last one padded with
    zeros, so every call has one shape. The bias is added after, element by element."""
    rows = rows or INVARIANT_ROWS.get(x.device.type, INVARIANT_ROWS["cpu"])
    x2 = x.reshape(-1, x.shape[-1])
    m = x2.shape[0]
    padded = -(-m // rows) * rows
    # Always a fresh buffer: every chunk then has the same alignment as well as the same shape
    # (a view's offset could steer cuBLAS to another kernel).
    xp = x2.new_zeros(padded, x2.shape[1])
    xp[:m] = x2
    out = x2.new_empty(padded, weight.shape[0])
    weight_t = weight.t()
    for start in range(0, padded, rows):
        torch.mm(xp[start:start + rows], weight_t, out=out[start:start + rows])
    out = out[:m]
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])
