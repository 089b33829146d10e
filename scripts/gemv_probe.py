"""Batch-1 matrix-vector products of the Llama-3.1-8B shape on this GPU: cuBLAS (F.linear, torch.mv)
against the Triton gemv (kernels/triton/gemv.py) over a grid of configs, each timed over weights
that do not fit in L2 (a ring of copies, as consecutive layers read different weights).

    python scripts/gemv_probe.py [--out probe.json]"""
from __future__ import annotations

import argparse
import itertools
import json

import torch
import torch.nn.functional as F

from sgl.kernels.triton.gemv import gemv

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336),
          "lm_head": (128256, 4096)}
GRID = list(itertools.product((4, 8, 16, 32), (256, 512, 1024), (4, 8), (2, 3, 4)))


def time_us(fn, weights, reps: int = 50) -> float:
    for w in weights[:2]:
        fn(w)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(reps):
        fn(weights[i % len(weights)])
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / reps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    report = {}
    for name, (n, k) in SHAPES.items():
        copies = max(2, int(400e6 // (n * k * 2)))  # > 8x the L2
        weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        ideal_us = n * k * 2 / 3.35e12 * 1e6
        row = {"ideal_us_at_3.35TBps": ideal_us,
               "F.linear": time_us(lambda w, x=x: F.linear(x, w), weights),
               "torch.mv": time_us(lambda w, x=x: torch.mv(w, x[0]), weights)}
        ref = F.linear(x, weights[0]).float()
        best = None
        for cfg in GRID:
            try:
                got = gemv(x, weights[0], config=cfg).float()
                if not torch.allclose(got, ref, atol=2e-2, rtol=2e-2):
                    row[f"bad {cfg}"] = float((got - ref).abs().max())
                    continue
                t = time_us(lambda w, x=x, cfg=cfg: gemv(x, w, config=cfg), weights)
            except Exception as e:  # a config the compiler refuses (registers, shared memory)
                row[f"fail {cfg}"] = type(e).__name__
                continue
            if best is None or t < best[1]:
                best = (cfg, t)
        row["triton_best"] = best
        report[name] = row
        print(name, {k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()
                     if not k.startswith(("bad", "fail"))}, flush=True)
        del weights
        torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
