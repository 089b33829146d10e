"""Runs the workloads and their baselines on one backend kind, in two system lifetimes: first
with the given server arguments (the full system, then one batch thread), then the same
arguments with the radix cache off (radix off, then the independent calls recorded in the full
run, replayed). Each run starts from a flushed cache, after one warm-up program."""
from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sgl.bench_programs.recorder import Call, RecordingBackend
from sgl.bench_programs.runs import RunResult, replay_independent, run_programs
from sgl.bench_programs.systems import start_system
from sgl.bench_programs.workload import Batch, Sizes, Workload

BASELINES = ("no_parallel", "radix_off", "independent")


@dataclass(frozen=True)
class Plan:
    workloads: tuple[Workload, ...]
    sizes: Sizes
    num_programs: int
    parallel: int
    num_sequential: int               # programs of the one-thread baseline
    baselines: tuple[str, ...] = BASELINES
    overhead_repeats: int = 3         # runs of each no-sharing configuration (median reported)


Log = Callable[[str], None]
OnRun = Callable[[RunResult], None]


def run_backend(kind: str, server_args: dict[str, Any], plan: Plan, log: Log = print,
                on_run: OnRun | None = None) -> list[RunResult]:
    """Every run of the plan on `kind`; `on_run` sees each result as soon as it is measured."""
    batches = {w.name: w.make_batch(plan.sizes, plan.num_programs) for w in plan.workloads}
    recorded: dict[str, list[Call]] = {}  # the full runs' calls, which the baseline replays

    def cache_on(system: Any, recorder: RecordingBackend, w: Workload, batch: Batch) -> Iterator[RunResult]:
        for _ in range(_repeats(w, plan)):
            result, recorded[w.name] = run_programs(system, recorder, w, batch, plan.parallel, "full")
            yield result
        if "no_parallel" in plan.baselines:
            yield run_programs(system, recorder, w, batch.head(plan.num_sequential), 1, "no_parallel")[0]

    def cache_off(system: Any, recorder: RecordingBackend, w: Workload, batch: Batch) -> Iterator[RunResult]:
        if "radix_off" in plan.baselines:
            for _ in range(_repeats(w, plan)):
                yield run_programs(system, recorder, w, batch, plan.parallel, "radix_off")[0]
        if "independent" in plan.baselines:
            yield replay_independent(system, w.name, recorded[w.name], len(batch.each), plan.parallel)

    def report(result: RunResult) -> RunResult:
        _log_result(result, log)
        if on_run is not None:
            on_run(result)
        return result

    results = _per_workload(kind, server_args, plan, batches, cache_on, report, log)
    if {"radix_off", "independent"} & set(plan.baselines):
        off_args = {**server_args, "disable_radix_cache": True}
        results += _per_workload(kind, off_args, plan, batches, cache_off, report, log)
    return results


def _per_workload(kind: str, server_args: dict[str, Any], plan: Plan, batches: dict[str, Batch],
                  runs: Callable[..., Iterator[RunResult]], report: Callable[[RunResult], RunResult],
                  log: Log) -> list[RunResult]:
    """One system for its lifetime: each workload warmed up, then `runs` of it."""
    out = []
    with _started(kind, server_args, log) as system:
        recorder = RecordingBackend(system.backend)
        for w in plan.workloads:
            _warm_up(system, recorder, w, batches[w.name])
            out += [report(r) for r in runs(system, recorder, w, batches[w.name])]
    return out


def _repeats(w: Workload, plan: Plan) -> int:
    return 1 if w.shares_prefix else max(plan.overhead_repeats, 1)


def _warm_up(system: Any, recorder: RecordingBackend, w: Workload, batch: Batch) -> None:
    """One program first, so compiling (grammars, kernels) is not timed; its cache is flushed."""
    run_programs(system, recorder, w, batch.head(1), 1, "warm_up")


def _log_result(result: RunResult, log: Log) -> None:
    d = result.to_dict()
    optimal = f"{d['optimal_hit_rate']:.3f}" if "optimal_hit_rate" in d else "-"
    log(f"  {result.workload:<20} {result.config:<12} {d['programs_per_s']:9.3f} programs/s  "
        f"{d['output_tok_per_s']:9.1f} out tok/s  hit {d['hit_rate']:.3f} (optimal {optimal})")


class _started:
    """A system for the length of a `with`; its memory is given back before the next starts."""

    def __init__(self, kind: str, server_args: dict[str, Any], log: Log) -> None:
        self.kind, self.server_args, self.log = kind, server_args, log

    def __enter__(self) -> Any:
        radix = "off" if self.server_args.get("disable_radix_cache") else "on"
        self.log(f"starting the {self.kind} backend, radix cache {radix}")
        self.system = start_system(self.kind, self.server_args)
        return self.system

    def __exit__(self, *exc: object) -> None:
        self.system.shutdown()
        del self.system
        gc.collect()
        try:
            import torch
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
