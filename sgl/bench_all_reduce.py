"""`python -m sgl.bench_all_reduce --tp-size 2`: the tensor-parallel all-reduce at decode and
prefill sizes, NCCL against the one-shot over peer memory (layers/custom_all_reduce.py). One
process per GPU. Each size is checked first (the one-shot sum equals NCCL's on integer-valued
float32 data, exactly), then timed as a CUDA graph of `--graph-iters` all-reduces, the way a
decode step replays them, so launch overhead is out of the figure. Rank 0 prints a table and
appends one JSON line per size to --result-filename.

The roofline a one-shot all-reduce of n bytes is held against: each rank reads (tp - 1) * n bytes
from its peers over NVLink."""
from __future__ import annotations

import argparse
from typing import Any

import torch

from sgl.bench_utils import append_jsonl

DEFAULT_SIZES = [8 << 10, 32 << 10, 128 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20, 16 << 20]


def _graph_time_us(fn: Any, x: torch.Tensor, iters: int, repeats: int = 5) -> float:
    """Median microseconds per call of fn(x), captured `iters` times in one CUDA graph. A fixed
    number of replays, not sgl/bench_kernels.py's time-based `do_bench`: every rank must
    replay its collectives as often as the others, or the fastest waits forever."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(iters):
            fn(x)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / iters)
    graph.reset()
    return sorted(times)[len(times) // 2]


def run_rank(rank: int, world: int, port: int, sizes: list[int], dtype_name: str, iters: int,
             result_filename: str | None) -> None:
    import torch.distributed as dist

    from sgl.runtime.layers import custom_all_reduce

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    dist.all_reduce(torch.zeros(1, device="cuda"))
    one_shot = custom_all_reduce.install(dist.group.WORLD, max_bytes=max(sizes))
    if one_shot is None:
        raise SystemExit("this PyTorch has no symmetric-memory one-shot all-reduce")
    dtype = getattr(torch, dtype_name)
    rows = []
    for nbytes in sizes:
        # Correctness, eager and replayed in a CUDA graph: integers are exact in any summation order.
        gen = torch.Generator("cuda").manual_seed(rank)
        x = torch.randint(-64, 64, (nbytes // 4,), device="cuda", generator=gen).to(torch.float32)
        ref = x.clone()
        dist.all_reduce(ref)
        static = torch.zeros_like(x)
        graph = torch.cuda.CUDAGraph()
        one_shot(static)  # warm up outside the capture
        with torch.cuda.graph(graph):
            captured = one_shot(static)
        static.copy_(x)
        graph.replay()
        exact = bool(torch.equal(one_shot(x), ref)) and bool(torch.equal(captured, ref))
        graph.reset()
        n = nbytes // dtype.itemsize
        x = torch.randn(n, device="cuda", dtype=dtype)

        def nccl(t: torch.Tensor) -> torch.Tensor:
            dist.all_reduce(t)
            return t

        t_nccl = _graph_time_us(nccl, x, iters)
        t_one = _graph_time_us(one_shot, x, iters)
        rows.append({"tp_size": world, "dtype": dtype_name, "bytes": nbytes, "exact": exact,
                     "nccl_us": round(t_nccl, 2), "one_shot_us": round(t_one, 2),
                     "peer_read_GBps": round((world - 1) * nbytes / t_one / 1e3, 1)})
    custom_all_reduce.uninstall()
    dist.barrier()
    if rank == 0:
        print(f"tp {world}, {dtype_name}, {iters} all-reduces per graph replay (median of 5)")
        print(f"{'bytes':>10} {'exact':>6} {'nccl us':>9} {'one-shot us':>12} {'speedup':>8} {'peer GB/s':>10}")
        for r in rows:
            print(f"{r['bytes']:>10} {r['exact']!s:>6} {r['nccl_us']:>9.2f} {r['one_shot_us']:>12.2f} "
                  f"{r['nccl_us'] / r['one_shot_us']:>7.2f}x {r['peer_read_GBps']:>10.1f}")
            append_jsonl(result_filename, r)
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tp-size", type=int, default=2)
    p.add_argument("--sizes", type=int, nargs="+", default=DEFAULT_SIZES, help="Bytes per all-reduce.")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--graph-iters", type=int, default=50)
    p.add_argument("--result-filename", default=None)
    args = p.parse_args(argv)
    if torch.cuda.device_count() < args.tp_size:
        raise SystemExit(f"--tp-size {args.tp_size} needs that many GPUs; {torch.cuda.device_count()} visible")
    from sgl.runtime.executor.tensor_parallel import free_port

    port = free_port()
    torch.multiprocessing.spawn(run_rank, args=(args.tp_size, port, args.sizes, args.dtype, args.graph_iters,
                                                args.result_filename), nprocs=args.tp_size)


if __name__ == "__main__":
    main()
