"""Batch-1 matrix-vector products of the Llama-3.1-8B shape on this GPU: cuBLAS (F.linear) against
the Triton gemv (kernels/triton/gemv.py) over a grid of configs, split-K included.

How a candidate is timed: after a warm-up (Triton compiles, workspaces are allocated) its calls
are captured into one CUDA graph, cycling through a ring of weight copies larger than the L2 (as
consecutive layers read different weights), and the graph is replayed; the median replay over the
number of calls is the time of one call, with no Python launch cost in it, as under the model's
decode graphs. It prints a table per shape; --table-out FILE writes the probed table in the format
of kernels/configs/gemv/ (kernels/gemv_tables.py): pass it to the server as --gemv-configs FILE,
or ship it as kernels/configs/gemv/<device>.json.

    python -m sgl.bench_gemv [--out probe.json] [--table-out table.json] [--shapes qkv,o] [--fused]

--fused also times one decoder layer's linears (qkv, o, gate_up, down) back to back in one graph,
through kernels/linear.py with cuBLAS, with this device's shipped table and with the probed table
over it.

--fp8 probes FP8 weights (float8_e4m3fn, a scale per row) instead: the Triton GEMV with
weight_scale against torch._scaled_mm behind a per-token activation quantization (the path
kernels/fp8.py takes for more rows), and prints entries for FP8_GEMV_CONFIGS in kernels/linear.py
(None: _scaled_mm). FP8 tables are code, not --gemv-configs files (those are for 16-bit weights)."""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from sgl.kernels import linear as linear_mod
from sgl.kernels.gemv_tables import GemvTable, find_table, write_table
from sgl.kernels.triton.gemv import gemv

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336),
          "lm_head": (128256, 4096)}
LAYER = ("qkv", "o", "gate_up", "down")
HBM_BYTES_PER_S = 3.35e12  # H100 SXM datasheet
RING_BYTES = 400e6         # weight copies per shape: > 8x the 50 MB L2
GRAPH_BYTES = 1.5e9        # weight bytes one replay streams (sets the calls per graph)
REPLAYS = 7
# (BLOCK_N, BLOCK_K, num_warps) holding 8 to 64 weights per thread per K step: one to eight
# 16-byte loads in flight per thread, at most 64 float32 accumulators.
BLOCKS = [(bn, bk, w) for bn, bk, w in itertools.product((1, 2, 4, 8, 16),
                                                         (256, 512, 1024, 2048, 4096), (4, 8))
          if 8 <= bn * bk // (32 * w) <= 64]
# --quick: a few shapes of thread block from the grid above (Triton compiles every config: the
# full grid takes several minutes)
QUICK_BLOCKS = [(1, 2048, 4), (2, 1024, 4), (4, 512, 4), (4, 1024, 8), (8, 256, 4), (8, 512, 8),
                (16, 256, 8)]
SPLITS = (1, 2, 4, 8)
MAX_SPLIT_BLOCKS = 4096  # more row blocks than this keep every SM busy without split-K
WIN = 0.98               # Triton must beat F.linear by 2% to get a table entry


def configs(n: int, k: int, stages: tuple[int, ...], quick: bool = False) -> list[tuple[int, ...]]:
    """The grid for a weight (n, k): split-K only where row blocks are few and each slice holds a
    K block at least. num_stages does not change this loop's code on Triton 3.x (no dot to
    pipeline), so one value is the default."""
    out = []
    for (bn, bk, w), s, split in itertools.product(QUICK_BLOCKS if quick else BLOCKS, stages, SPLITS):
        if bk > k or (split > 1 and (math.ceil(n / bn) > MAX_SPLIT_BLOCKS or k // split < bk)):
            continue
        out.append((bn, bk, w, s, split))
    return out


def graph_us(call: Callable[[object], object], weights: list, nbytes: float) -> float:
    """Median microseconds of one call(w), over CUDA-graph replays of calls cycling through the
    ring `weights`, each call reading nbytes."""
    calls = len(weights) * math.ceil(max(8, GRAPH_BYTES / nbytes) / len(weights))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # compile, pick cuBLAS kernels, allocate outside the capture
        for w in weights:
            call(w)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            call(weights[i % len(weights)])
    graph.replay()
    times = []
    for _ in range(REPLAYS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    del graph
    return statistics.median(times)


def _weights(n: int, k: int, copies: int) -> list[torch.Tensor]:
    return [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]


class _Fp8Weight:
    """An FP8 weight and its per-row scale, passed around the ring as one item."""

    def __init__(self, w: torch.Tensor) -> None:
        from sgl.kernels.fp8 import quantize_rows_ref
        q, s = quantize_rows_ref(w)
        self.weight, self.scale = q, s.view(-1)


def _calls(fp8: bool, x: torch.Tensor) -> tuple[Callable, Callable]:
    """(baseline call(w), Triton call(w, cfg)) for bf16 or FP8 weights."""
    if not fp8:
        return (lambda w: F.linear(x, w)), (lambda w, cfg: gemv(x, w, config=cfg))
    from sgl.kernels.fp8 import fp8_scaled_mm
    return ((lambda w: fp8_scaled_mm(x, w.weight, w.scale, None, None)),
            (lambda w, cfg: gemv(x, w.weight, config=cfg, weight_scale=w.scale)))


def probe_shape(n: int, k: int, stages: tuple[int, ...], quick: bool = False,
                fp8: bool = False) -> dict:
    nbytes = n * k * (1 if fp8 else 2)
    weights = _weights(n, k, max(2, int(RING_BYTES // nbytes)))
    if fp8:
        weights = [_Fp8Weight(w) for w in weights]
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    w0 = weights[0].weight.float() * weights[0].scale[:, None] if fp8 else weights[0].float()
    ref = x.float() @ w0.T
    baseline, triton_call = _calls(fp8, x)
    row = {"n": n, "k": k, "ideal_us": nbytes / HBM_BYTES_PER_S * 1e6,
           "f_linear_us": graph_us(baseline, weights, nbytes),
           "triton": [], "rejected": {}}
    for cfg in configs(n, k, stages, quick):
        try:
            got = triton_call(weights[0], cfg).float()
            err = float((got - ref).norm() / ref.norm())
            if not err < 1e-2:
                row["rejected"][str(cfg)] = f"rel err {err:.3g}"
                continue
            us = graph_us(lambda w, cfg=cfg: triton_call(w, cfg), weights, nbytes)
            row["triton"].append((cfg, us))
        except Exception as e:  # noqa: BLE001 - a config the compiler refuses (registers, smem)
            row["rejected"][str(cfg)] = f"{type(e).__name__}: {str(e)[:200]}"
    row["triton"].sort(key=lambda c: c[1])
    del weights
    torch.cuda.empty_cache()
    return row


def table_entry(row: dict) -> tuple[int, ...] | None:
    """The best Triton config if it beats F.linear, else None (cuBLAS)."""
    if row["triton"] and row["triton"][0][1] < WIN * row["f_linear_us"]:
        return tuple(row["triton"][0][0])
    return None


def print_rows(report: dict) -> None:
    print(f"\n{'shape':<8} {'N x K':^15} {'F.linear':>9} {'Triton':>8} {'ideal':>7}  "
          f"{'% roof':>10}  best (BLOCK_N, BLOCK_K, warps, stages, SPLIT_K); next two")
    for name, row in report.items():
        (best, best_us), *rest = row["triton"] or [(None, math.nan)]
        nxt = ", ".join(f"{tuple(c)} {us:.1f}" for c, us in rest[:2])
        print(f"{name:<8} {row['n']:>6} x {row['k']:<6} {row['f_linear_us']:8.1f}u {best_us:7.1f}u "
              f"{row['ideal_us']:6.1f}u  {100 * row['ideal_us'] / best_us:9.0f}%  "
              f"{tuple(best) if best else None}; {nxt}")


def print_table(report: dict, device: str, fp8: bool = False) -> None:
    where = ("entries for FP8_GEMV_CONFIGS in kernels/linear.py (F.linear: torch._scaled_mm)" if fp8
             else f"--table-out FILE writes it as JSON; shipped table for this device: {find_table(device)}")
    print(f"\n# sgl/bench_gemv.py{' --fp8' if fp8 else ''} on {device} ({where})")
    for name, row in report.items():
        entry, f_us = table_entry(row), row["f_linear_us"]
        best_us = row["triton"][0][1] if row["triton"] else math.nan
        key = f"({row['n']}, {row['k']}):" if fp8 else f"\"{row['n']},{row['k']}\":"
        value = f"{entry}," if fp8 else str(list(entry) if entry else None)
        print(f"    {key:<15} {value:<22} # {name}: Triton {best_us:.1f} us, "
              f"F.linear {f_us:.1f} us, ideal {row['ideal_us']:.1f} us")


def time_layer(tables: dict[str, GemvTable | None]) -> dict:
    """us of one layer's four linears through linear_mod.linear, per table of entries over the
    shipped one (None: cuBLAS), each applied as the server applies --gemv-configs."""
    nbytes = sum(n * k * 2 for n, k in (SHAPES[s] for s in LAYER))
    layers = [[torch.randn(*SHAPES[s], device="cuda", dtype=torch.bfloat16) * 0.02 for s in LAYER]
              for _ in range(max(2, math.ceil(RING_BYTES / nbytes)))]
    xs = {k: torch.randn(1, k, device="cuda", dtype=torch.bfloat16) for k in (4096, 14336)}

    def layer(ws: list[torch.Tensor]) -> None:
        for w in ws:
            linear_mod.linear(xs[w.shape[1]], w)

    out = {"ideal_us": nbytes / HBM_BYTES_PER_S * 1e6}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for name, table in tables.items():
                path = None
                if table:
                    path = os.path.join(tmp, f"{len(out)}.json")
                    write_table(path, table, torch.cuda.get_device_name(), "gemv_probe --fused")
                linear_mod.configure_gemv(table is not None, path)
                out[name] = graph_us(layer, layers, nbytes)  # cycling through the layers
        finally:
            linear_mod.configure_gemv()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None, help="the full report (every config's time) as JSON")
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated names from SHAPES")
    p.add_argument("--stages", default="3", help="num_stages values to try, comma-separated")
    p.add_argument("--quick", action="store_true", help="a small grid (QUICK_BLOCKS)")
    p.add_argument("--fused", action="store_true", help="also time a layer's linears back to back")
    p.add_argument("--fp8", action="store_true",
                   help="FP8 weights: the GEMV with weight_scale against torch._scaled_mm")
    p.add_argument("--table-out", default=None,
                   help="write the probed table as JSON, for --gemv-configs FILE or kernels/configs/gemv/")
    args = p.parse_args()
    if args.fp8 and args.table_out:
        p.error("--table-out writes a 16-bit --gemv-configs table; --fp8 entries go into "
                "FP8_GEMV_CONFIGS in kernels/linear.py")
    torch.manual_seed(0)
    device = torch.cuda.get_device_name()
    stages = tuple(int(s) for s in args.stages.split(","))
    report, t0 = {}, time.time()
    for name in filter(None, args.shapes.split(",")):
        report[name] = probe_shape(*SHAPES[name], stages, args.quick, args.fp8)
        row = report[name]
        print(f"{name}: {len(row['triton'])} configs timed, {len(row['rejected'])} rejected, "
              f"{time.time() - t0:.0f} s so far", flush=True)
    result = {"device": device, "shapes": report}
    if report:
        print_rows(report)
        print_table(report, device, args.fp8)
    if args.fused and not args.fp8:
        probed = {(r["n"], r["k"]): table_entry(r) for r in report.values()}
        tables = {"cuBLAS": None, "shipped table": {}}
        if probed:
            tables["probed table"] = probed
        result["layer"] = time_layer(tables)
        print("\none layer (qkv, o, gate_up, down) in one graph: "
              + ", ".join(f"{k} {v:.1f} us" for k, v in result["layer"].items()))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    if args.table_out:
        source = f"python -m sgl.bench_gemv{' --quick' if args.quick else ''} on {device}, {time.strftime('%Y-%m-%d')}"
        write_table(args.table_out, {(r["n"], r["k"]): table_entry(r) for r in report.values()},
                    device, source)


if __name__ == "__main__":
    main()
