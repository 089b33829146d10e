"""`python -m sgl.bench_programs`: what prompt-sharing call graphs buy. Runs `@sgl.function`
programs shaped like the SGLang paper's workloads on the full system and on three baselines
(radix cache off; one batch thread; the programs' calls sent as independent completions with
their full prompts to a server with the cache off), and reports programs/s, output tok/s,
latency p50/p99, and the measured cache hit rate beside the optimum computed from the requests
the run sent.

    python -m sgl.bench_programs --workload all --num-programs 64 --parallel 64 \\
        --backend engine http --result-file programs.json \\
        [--model-path llama-3.1-8b-dummy --load-format dummy --tokenizer-path DIR]

Any server argument (`--schedule-policy`, `--disable-radix-cache`, ...) configures the system
under test; see docs/benchmarks.md for the figures and docs/data/plot_programs.py for the chart."""
from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from typing import Any

from sgl.bench_programs import report
from sgl.bench_programs.driver import BASELINES, Plan, run_backend
from sgl.bench_programs.meta import run_metadata
from sgl.bench_programs.runs import RunResult
from sgl.bench_programs.workload import Sizes
from sgl.bench_programs.workloads import WORKLOADS
from sgl.runtime.config import ServerArgs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sgl.bench_programs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", nargs="+", default=["all"], help=f"all, or any of: {', '.join(WORKLOADS)}")
    p.add_argument("--num-programs", type=int, default=64, help="Programs per workload run.")
    p.add_argument("--parallel", type=int, default=64, help="run_batch threads (programs in flight).")
    p.add_argument("--backend", nargs="+", default=["engine"], choices=("engine", "http"),
                   help="In-process Engine, and/or an sgl server on loopback (each run in turn).")
    p.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=BASELINES)
    p.add_argument("--num-sequential-programs", type=int, default=16,
                   help="Programs of the one-thread baseline (throughput is per program).")
    p.add_argument("--overhead-repeats", type=int, default=3,
                   help="Runs of each no-sharing configuration; the median is reported.")
    p.add_argument("--scale", type=float, default=1.0, help="Prompt text lengths times this.")
    p.add_argument("--output-scale", type=float, default=1.0, help="gen max_tokens times this.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the synthetic content.")
    p.add_argument("--result-file", default=None, help="Write runs, summaries and targets here (JSON).")
    ServerArgs.add_cli_args(p)
    p.set_defaults(log_level="warning")
    return p


def plan_from_args(args: argparse.Namespace) -> Plan:
    names = list(WORKLOADS) if "all" in args.workload else args.workload
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ValueError(f"--workload: unknown {unknown}; choose from {list(WORKLOADS)}")
    if args.num_programs < 1 or args.parallel < 1 or args.num_sequential_programs < 1:
        raise ValueError("--num-programs, --parallel and --num-sequential-programs must be >= 1")
    return Plan(tuple(WORKLOADS[n] for n in names), Sizes(args.scale, args.output_scale, args.seed),
                args.num_programs, args.parallel, min(args.num_sequential_programs, args.num_programs),
                tuple(args.baselines), args.overhead_repeats)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    plan = plan_from_args(args)
    server_args = vars(ServerArgs.from_cli_args(args))
    few_shot = {w.name for w in plan.workloads if w.is_few_shot}
    no_sharing = {w.name for w in plan.workloads if not w.shares_prefix}
    out: dict[str, Any] = {"meta": run_metadata(argv if argv is not None else sys.argv[1:], plan, server_args),
                           "backends": {}}

    def save() -> None:  # after every run: a run cut short keeps what it measured
        if args.result_file:
            with open(args.result_file, "w") as f:
                json.dump(out, f, indent=1)

    for kind in args.backend:
        body: dict[str, Any] = {"runs": []}
        out["backends"][kind] = body
        run_backend(kind, server_args, plan, on_run=functools.partial(_keep, body["runs"], save))
        body["summary"] = report.summarize(body["runs"], few_shot, no_sharing)
        checks = report.targets(body["summary"])
        body["targets"] = [{"target": t, "met": met} for t, met in checks]
        save()
        print(f"\n### backend: {kind}\n\n{report.markdown_table(body['summary'])}\n")
        for target, met in checks:
            print(f"  [{'met' if met else 'MISSED' if met is False else '?'}] {target}")
    return out


def _keep(runs: list[dict[str, Any]], save: Callable[[], None], result: RunResult) -> None:
    runs.append(result.to_dict())
    save()


if __name__ == "__main__":
    main()
