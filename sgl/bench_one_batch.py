"""Static-batch latency: one prefill of batch_size x input_len tokens, then output_len decode
steps, straight through the scheduler and runner (no HTTP, no tokenizer).

    python -m sgl.bench_one_batch --batch-size 1 8 --input-len 128 --output-len 256 [server flags]
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import statistics
import time
from typing import Any

import torch

from sgl.bench_utils import append_jsonl
from sgl.runtime.config import ServerArgs
from sgl.runtime.executor.model_runner import ModelRunner
from sgl.runtime.executor.tensor_parallel import start_tp_workers
from sgl.runtime.io_struct import TokenizedGenerateReq
from sgl.runtime.sampling.params import SamplingParams
from sgl.runtime.scheduler.scheduler import Scheduler


def _sync(runner: ModelRunner) -> None:
    if runner.device.type == "cuda":
        torch.cuda.synchronize()


def run_once(sched: Scheduler, runner: ModelRunner, bs: int, input_len: int, output_len: int,
             seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    for i in range(bs):
        ids = torch.randint(0, runner.vocab_size, (input_len,), generator=g).tolist()
        params = SamplingParams(max_new_tokens=output_len, temperature=0, ignore_eos=True)
        sched.add_request(TokenizedGenerateReq(f"b{seed}-{i}", ids, params))
    _sync(runner)
    t0 = time.perf_counter()
    while any(r.num_computed < r.prompt_len for r in sched.running) or sched.waiting:
        sched.step()
    _sync(runner)
    prefill = time.perf_counter() - t0
    decode_times = []
    t_decode = time.perf_counter()
    while sched.has_work:
        t = time.perf_counter()
        sched.step()
        if not sched.overlap:  # with overlap each step already waits for the one before it
            _sync(runner)
        decode_times.append(time.perf_counter() - t)
    _sync(runner)
    total = prefill + time.perf_counter() - t_decode
    med = statistics.median(decode_times) if decode_times else float("nan")
    return {"batch_size": bs, "input_len": input_len, "output_len": output_len,
            "prefill_latency": prefill, "prefill_throughput": bs * input_len / prefill,
            "median_decode_latency": med, "median_decode_throughput": bs / med,
            "total_latency": total, "output_throughput": bs * output_len / total}


def _start_profile():
    import cProfile
    prof = cProfile.Profile()
    prof.enable()
    return prof


def _print_profile(prof) -> None:
    import pstats
    prof.disable()
    stats = pstats.Stats(prof)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(r"sgl|runtime/(scheduler|executor|sampling)", 30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1])
    parser.add_argument("--input-len", type=int, nargs="+", default=[128])
    parser.add_argument("--output-len", type=int, nargs="+", default=[16])
    parser.add_argument("--result-filename", default=None, help="Append results as JSON lines.")
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument("--profile", action="store_true", help="cProfile the last run's steps (host time).")
    parser.add_argument("--profile-kernels", type=int, default=0, metavar="STEPS",
                        help="After the timed runs, run the first shape again for STEPS decode steps "
                             "under torch.profiler and print the kernel table (device time per step).")
    ServerArgs.add_cli_args(parser)
    args = parser.parse_args(argv)
    server_args = ServerArgs.from_cli_args(args)
    need = max(args.batch_size) * (max(args.input_len) + max(args.output_len))
    runner_args = dataclasses.replace(
        server_args, max_total_tokens=server_args.max_total_tokens or None,
        chunked_prefill_size=max(server_args.chunked_prefill_size or 0, need),
        max_running_requests=max(server_args.max_running_requests or 0, max(args.batch_size)))
    runner_args, tp_workers = start_tp_workers(runner_args, multiprocessing.get_context("spawn"))
    runner = ModelRunner(runner_args)
    try:
        _run(args, runner_args, runner)
    finally:
        runner.shutdown()  # releases the other tensor-parallel ranks
        for proc in tp_workers.values():
            proc.join(timeout=30)


def _run(args: argparse.Namespace, runner_args: ServerArgs, runner: ModelRunner) -> None:
    need = max(args.batch_size) * (max(args.input_len) + max(args.output_len))
    if runner.max_total_tokens < need:
        raise SystemExit(f"KV pool holds {runner.max_total_tokens} tokens, the largest batch needs {need}")
    sched = Scheduler(runner_args, runner)
    if not args.no_warmup:
        run_once(sched, runner, min(args.batch_size), min(args.input_len), min(min(args.output_len), 4), seed=-1)
    for bs in args.batch_size:
        for il in args.input_len:
            for ol in args.output_len:
                sched.flush_cache()
                prof = _start_profile() if args.profile else None
                r = run_once(sched, runner, bs, il, ol, seed=bs * 1000 + il)
                if prof is not None:
                    _print_profile(prof)
                r["device"] = torch.cuda.get_device_name() if runner.device.type == "cuda" else "cpu"
                r["tp_size"] = runner.tp_size
                print(f"Prefill. latency: {r['prefill_latency']:.5f} s, throughput: {r['prefill_throughput']:.2f} token/s")
                print(f"Decode.  median latency: {r['median_decode_latency']:.5f} s, median throughput: "
                      f"{r['median_decode_throughput']:.2f} token/s")
                print(f"Total. latency: {r['total_latency']:.3f} s, throughput: {r['output_throughput']:.2f} token/s "
                      f"(batch {bs}, input {il}, output {ol})")
                append_jsonl(args.result_filename, r)
    if args.profile_kernels:
        _profile_kernels(sched, runner, args.batch_size[0], args.input_len[0], args.profile_kernels)


def _profile_kernels(sched: Scheduler, runner: ModelRunner, bs: int, input_len: int, steps: int) -> None:
    """Where a step's device time goes, kernel by kernel (inside CUDA graphs too)."""
    from torch.profiler import ProfilerActivity, profile
    cuda = runner.device.type == "cuda"
    sched.flush_cache()
    run_once(sched, runner, bs, input_len, 1, seed=11)  # the same shapes compiled and captured
    sched.flush_cache()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        run_once(sched, runner, bs, input_len, steps, seed=12)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = prof.key_averages()
    print(events.table(sort_by=key, row_limit=30))
    total = sum(getattr(e, key) for e in events)  # microseconds, prefill included
    print(f"kernel profile: batch {bs}, input {input_len}, {steps} decode steps: "
          f"{total / 1e3:.2f} ms of {'device' if cuda else 'CPU'} time in total")


if __name__ == "__main__":
    main()
