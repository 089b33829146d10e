"""Time every Triton kernel at Llama-3.1-8B shapes against the roofline of an H100.

    python -m sgl.bench_kernels [--sweep] [--only norm,silu,rotary,kv,decode,extend]

How a row is timed: `make()` builds one call on its own fresh buffers; enough copies to overflow
the 50 MB L2 (at most 16) are captured back to back into one CUDA graph, as the model's layers run
under CUDA graphs; the median of triton.testing.do_bench over replays (L2 cleared before each),
divided by the copies, is the time of one call. So the numbers carry neither launch gaps nor a
hot cache. Achieved GB/s or TFLOP/s count the fewest bytes (each input read once, each output
written once) and the useful FLOPs; `% roof` = max(bytes / HBM rate, FLOPs / matrix rate) over
the time. --sweep also tries other launch configurations of the attention kernels.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import triton.testing

from sgl.kernels import activation, norm, rotary
from sgl.kernels.kv_store import store_kv_ref
from sgl.kernels.triton import decode_attention as decode_mod
from sgl.kernels.triton import extend_attention as extend_mod
from sgl.kernels.triton.kv_store import store_kv

HBM_BYTES_PER_S = 3.0e12     # device-to-device copy measured on this workplace's H100
BF16_FLOPS_PER_S = 790e12    # 8192^3 bf16 matmul measured there
FLUSH_BYTES = 200e6          # copies of a call's buffers together exceed the L2 by this much
MAX_COPIES = 16
# Llama-3.1-8B, one rank
HIDDEN, INTER, HQ, HKV, HEAD_DIM = 4096, 14336, 32, 8, 128
DT = torch.bfloat16
BF16 = 2

Maker = Callable[[], Callable[[], object]]


@dataclass
class Row:
    kernel: str
    shape: str
    ms: float
    nbytes: float = 0.0
    flops: float = 0.0

    def floor_ms(self) -> float:
        return 1e3 * max(self.nbytes / HBM_BYTES_PER_S, self.flops / BF16_FLOPS_PER_S)

    def line(self) -> str:
        rate = (f"{self.flops / self.ms / 1e9:8.1f} TFLOP/s" if self.flops
                else f"{self.nbytes / self.ms / 1e6:8.0f} GB/s   ")
        pct = 100 * self.floor_ms() / self.ms
        return f"{self.kernel:<22} {self.shape:<34} {self.ms * 1e3:9.1f} us {rate} {pct:6.1f}% roof"


def _time(make: Maker, nbytes: float) -> float:
    """Median ms of one call (see the module docstring)."""
    copies = max(1, min(MAX_COPIES, math.ceil(FLUSH_BYTES / max(nbytes, 1.0))))
    calls = [make() for _ in range(copies)]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # compile and warm up outside the capture
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    ms = triton.testing.do_bench(graph.replay, warmup=25, rep=100, return_mode="median")
    del graph, calls
    return ms / copies


def _row(kernel: str, shape: str, make: Maker, nbytes: float = 0.0, flops: float = 0.0) -> Row:
    return Row(kernel, shape, _time(make, nbytes), nbytes, flops)


def _randn(*shape: int, dtype: torch.dtype = DT) -> torch.Tensor:
    return (torch.randn(*shape, device="cuda") + 0.1).to(dtype)


# ---- elementwise ------------------------------------------------------------------------------

def _norm_call(t: int, fused: bool, fn: Callable) -> Callable[[], object]:
    x, r, w = _randn(t, HIDDEN), _randn(t, HIDDEN), _randn(HIDDEN)
    return partial(fn, x, r, w, 1e-5) if fused else partial(fn, x, w, 1e-5)


def bench_norm(tokens: list[int]) -> list[Row]:
    rows = []
    for t in tokens:
        shape, nbytes = f"T={t} h={HIDDEN}", 2 * t * HIDDEN * BF16
        for name, fn, fused in [("rms_norm", norm.rms_norm, False),
                                ("  torch ref", norm.rms_norm_ref, False),
                                ("fused_add_rms_norm", norm.fused_add_rms_norm, True),
                                ("  torch ref", norm.fused_add_rms_norm_ref, True)]:
            rows.append(_row(name, shape, partial(_norm_call, t, fused, fn),
                             2 * nbytes if fused else nbytes))
    return rows


def _silu_call(t: int, fn: Callable) -> Callable[[], object]:
    return partial(fn, _randn(t, 2 * INTER))


def bench_silu(tokens: list[int]) -> list[Row]:
    rows = []
    for t in tokens:
        shape, nbytes = f"T={t} d={INTER}", 3 * t * INTER * BF16
        for name, fn in [("silu_and_mul", activation.silu_and_mul),
                         ("  torch ref", activation.silu_and_mul_ref)]:
            rows.append(_row(name, shape, partial(_silu_call, t, fn), nbytes))
    return rows


def _rotary_call(t: int, fn: Callable, cache: torch.Tensor) -> Callable[[], object]:
    q, k = _randn(t, HQ, HEAD_DIM), _randn(t, HKV, HEAD_DIM)
    return partial(fn, q, k, torch.randint(0, cache.shape[0], (t,), device="cuda"), cache)


def bench_rotary(tokens: list[int]) -> list[Row]:
    cache = rotary.compute_cos_sin_cache(rotary.compute_inv_freq(HEAD_DIM, 500000.0), 131072).cuda()
    rows = []
    for t in tokens:
        nbytes = 2 * t * (HQ + HKV) * HEAD_DIM * BF16 + t * HEAD_DIM * 4
        shape = f"T={t} {HQ}/{HKV}x{HEAD_DIM}"
        for name, fn in [("rotary", rotary.apply_rotary), ("  torch ref", rotary.apply_rotary_ref)]:
            rows.append(_row(name, shape, partial(_rotary_call, t, fn, cache), nbytes))
    return rows


def _kv_call(t: int, fn: Callable, k_buf: torch.Tensor,
             v_buf: torch.Tensor) -> Callable[[], object]:
    loc = torch.randperm(k_buf.shape[0] - 1, device="cuda")[:t] + 1
    return partial(fn, k_buf, v_buf, loc, _randn(t, HKV, HEAD_DIM), _randn(t, HKV, HEAD_DIM))


def bench_kv_store(tokens: list[int]) -> list[Row]:
    k_buf, v_buf = _randn(200_000, HKV, HEAD_DIM), _randn(200_000, HKV, HEAD_DIM)
    rows = []
    for t in tokens:
        nbytes, shape = 4 * t * HKV * HEAD_DIM * BF16 + 8 * t, f"T={t} {HKV}x{HEAD_DIM}"
        for name, fn in [("store_kv", store_kv), ("  torch index_put", store_kv_ref)]:
            rows.append(_row(name, shape, partial(_kv_call, t, fn, k_buf, v_buf), nbytes))
    return rows


# ---- attention --------------------------------------------------------------------------------

def _paged(seq_lens: list[int]) -> tuple[torch.Tensor, ...]:
    """A pool with each request's tokens at scrambled slots, and its request -> token table."""
    total = sum(seq_lens)
    k_buf, v_buf = _randn(total + 1, HKV, HEAD_DIM), _randn(total + 1, HKV, HEAD_DIM)
    slots = (torch.randperm(total, device="cuda") + 1).to(torch.int32)
    table = torch.zeros(len(seq_lens), max(seq_lens), dtype=torch.int32, device="cuda")
    start = 0
    for i, n in enumerate(seq_lens):
        table[i, :n] = slots[start:start + n]
        start += n
    return k_buf, v_buf, table, torch.arange(len(seq_lens), device="cuda")


def _decode_call(bs: int, ctx: int, splits: int) -> Callable[[], object]:
    k_buf, v_buf, table, rows = _paged([ctx] * bs)
    q, seq_lens = _randn(bs, HQ, HEAD_DIM), torch.full((bs,), ctx, device="cuda")
    ws = torch.empty(max(1, decode_mod.workspace_numel(bs, HQ, HEAD_DIM, splits)),
                     dtype=torch.float32, device="cuda")
    return partial(decode_mod.decode_attention, q, k_buf, v_buf, table, rows, seq_lens,
                   HEAD_DIM ** -0.5, max_splits=splits, workspace=ws)


def bench_decode(batch_sizes: list[int], contexts: list[int],
                 label: str = "decode_attn") -> list[Row]:
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for ctx in contexts:
        for bs in batch_sizes:
            splits = decode_mod.num_kv_splits(bs, HKV, sms)
            nbytes = bs * ctx * (2 * HKV * HEAD_DIM * BF16 + 4) + 2 * bs * HQ * HEAD_DIM * BF16
            rows.append(_row(label, f"bs={bs} ctx={ctx} splits={splits}",
                             partial(_decode_call, bs, ctx, splits), nbytes))
    return rows


def _extend_call(bs: int, prefix: int, ext: int) -> Callable[[], object]:
    k_buf, v_buf, table, rows = _paged([prefix + ext] * bs)
    lens = [torch.full((bs,), n, device="cuda") for n in (prefix, ext)]
    return partial(extend_mod.extend_attention, _randn(bs * ext, HQ, HEAD_DIM), k_buf, v_buf,
                   table, rows, *lens, HEAD_DIM ** -0.5, max_extend_len=ext)


def _sdpa_call(bs: int, ext: int) -> Callable[[], object]:
    q = _randn(bs, HQ, ext, HEAD_DIM)
    k, v = _randn(bs, HKV, ext, HEAD_DIM), _randn(bs, HKV, ext, HEAD_DIM)
    return partial(torch.nn.functional.scaled_dot_product_attention, q, k, v, is_causal=True,
                   enable_gqa=True)


def bench_extend(cases: list[tuple[int, int, int]], label: str = "extend_attn",
                 with_sdpa: bool = True) -> list[Row]:
    """cases: (bs, prefix_len, extend_len), all requests alike."""
    rows = []
    for bs, prefix, ext in cases:
        flops = 4 * HQ * HEAD_DIM * bs * sum(prefix + j + 1 for j in range(ext))
        nbytes = bs * ((prefix + ext) * 2 * HKV + 2 * ext * HQ) * HEAD_DIM * BF16
        shape = f"bs={bs} prefix={prefix} new={ext}"
        rows.append(_row(label, shape, partial(_extend_call, bs, prefix, ext), nbytes, flops))
        if with_sdpa and prefix == 0:  # torch SDPA (flash) on contiguous K/V, the same work
            rows.append(_row("  torch sdpa (dense)", shape, partial(_sdpa_call, bs, ext), nbytes,
                             flops))
    return rows


def sweep() -> list[Row]:
    rows = []
    base_decode = dict(decode_mod.CONFIG)
    for block_n, warps, stages in [(32, 4, 2), (64, 4, 2), (64, 4, 3), (128, 4, 2), (128, 8, 3)]:
        decode_mod.CONFIG.update(BLOCK_N=block_n, num_warps=warps, num_stages=stages)
        rows += bench_decode([1, 128], [4096], label=f"decode N{block_n} w{warps} s{stages}")
    decode_mod.CONFIG.update(base_decode)
    for cfg in [(128, 64, 4, 2), (64, 64, 4, 2), (128, 64, 4, 3), (128, 128, 8, 2), (64, 64, 4, 3)]:
        extend_mod.CONFIG_OVERRIDE = cfg
        rows += bench_extend([(1, 0, 4096), (4, 3072, 1024), (64, 1000, 64)],
                             label="extend M{}N{}w{}s{}".format(*cfg), with_sdpa=False)
    extend_mod.CONFIG_OVERRIDE = None
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", action="store_true", help="also try other attention configs")
    parser.add_argument("--only", default="", help="comma list: norm,silu,rotary,kv,decode,extend")
    args = parser.parse_args()
    torch.manual_seed(0)
    tokens = [1, 256, 8192]
    benches = {
        "norm": lambda: bench_norm(tokens), "silu": lambda: bench_silu(tokens),
        "rotary": lambda: bench_rotary(tokens), "kv": lambda: bench_kv_store(tokens),
        "decode": lambda: bench_decode([1, 32, 128], [1024, 4096]),
        "extend": lambda: bench_extend([(1, 0, 4096), (4, 3072, 1024), (16, 0, 512),
                                        (64, 1000, 64)]),
    }
    chosen = [n for n in args.only.split(",") if n] or list(benches)
    print(f"{torch.cuda.get_device_name()}; roofline {HBM_BYTES_PER_S / 1e12:.1f} TB/s, "
          f"{BF16_FLOPS_PER_S / 1e12:.0f} TFLOP/s bf16; Llama-3.1-8B shapes", flush=True)
    rows = [row for name in chosen for row in benches[name]()]
    if args.sweep:
        rows += sweep()
    print(f"{'kernel':<22} {'shape':<34} {'median':>12} {'achieved':>16} {'':>6}")
    for row in rows:
        print(row.line())


if __name__ == "__main__":
    main()
