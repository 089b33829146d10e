"""The GPU benchmark suite: every figure the docs quote, in one command, against a committed baseline.

    python -m sgl.bench_suite --tokenizer-path .tok/llama3 [--only decode_bs1,sweep,...]
        [--baseline docs/bench_baseline.json] [--out suite.json] [--tree DIR] [--label NAME]

Each benchmark runs as its own process (`python -m sgl.bench_*` on the Llama-3.1-8B shape with
dummy weights, bf16) and reports named figures. Each figure is compared with the baseline entry of
the same card (`torch.cuda.get_device_name()`): one more than --tolerance (5%) worse is flagged,
and the command exits 1. `--tree DIR` runs the benchmarks on another checkout's code (the
"before" of a before/after comparison in one device call); `--update-baseline` writes the run's
figures as the card's baseline.

| benchmark  | what                                                    | figures                            |
|------------|---------------------------------------------------------|------------------------------------|
| decode_bs1 | batch 1, input 128, output 256 (bench_one_batch)        | median step tok/s, end-to-end tok/s |
| sweep      | batch 1..256, input 128, output 32                       | median decode step per batch size  |
| prefill    | batch 8 x 4096 tokens                                    | prefill seconds                    |
| offline    | 500 prompts, input U[1,4096], output U[1,2048]           | output tok/s                       |
| structured | batch 64 JSON schema; jump-forward on/off (Llama 3 vocab) | constrained fraction, jump speedup |
| ngram      | NGRAM speculation, batch 1, copy prompts                  | speedup over no speculation        |
| *_fp8      | decode_bs1, prefill, offline with FP8 weights + FP8 KV cache (`--quantization fp8 --kv-cache-dtype fp8_e4m3`) | as their bf16 rows |
| programs   | 128/512 HellaSwag-shaped select programs, 8k prompt logprobs, shared-document extraction (bench_programs_scale) | speedups vs cache off, answers vs 8 at a time, failed steps, hit rate of optimum |
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Callable

MODEL = "llama-3.1-8b-dummy"
SWEEP = [1, 8, 32, 64, 128, 256]
FP8 = ("--quantization", "fp8", "--kv-cache-dtype", "fp8_e4m3")


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    higher_is_better: bool


@dataclass
class Bench:
    name: str
    args: Callable[[argparse.Namespace], list[str]]   # the command after `python -m`
    figures: Callable[[list[dict]], list[Figure]]     # from the result lines it wrote
    timeout_s: int


def _one_batch(*extra: str) -> Callable[[argparse.Namespace], list[str]]:
    return lambda a: ["sgl.bench_one_batch", "--model-path", a.model_path, "--load-format", "dummy",
                      *extra, *a.server_flags]


def _decode_bs1(name: str) -> Callable[[list[dict]], list[Figure]]:
    def figures(rows: list[dict]) -> list[Figure]:
        r = rows[-1]
        return [Figure(f"{name}.median_step_tok_s", r["median_decode_throughput"], "tok/s", True),
                Figure(f"{name}.end_to_end_tok_s", r["output_throughput"], "tok/s", True)]
    return figures


def _sweep(rows: list[dict]) -> list[Figure]:
    return [Figure(f"sweep.bs{r['batch_size']}.median_step_ms", 1e3 * r["median_decode_latency"], "ms", False)
            for r in rows]


def _prefill(name: str) -> Callable[[list[dict]], list[Figure]]:
    return lambda rows: [Figure(f"{name}.seconds", rows[-1]["prefill_latency"], "s", False)]


def _offline(name: str) -> Callable[[list[dict]], list[Figure]]:
    return lambda rows: [Figure(f"{name}.output_tok_s", rows[-1]["output_throughput"], "tok/s", True)]


def _offline_args(*extra: str) -> Callable[[argparse.Namespace], list[str]]:
    return lambda a: ["sgl.bench_offline_throughput", "--model-path", a.model_path, "--load-format",
                      "dummy", "--skip-tokenizer-init", "--num-prompts", "500", "--random-input-len",
                      "4096", "--random-output-len", "2048", "--random-range-ratio", "0", *extra,
                      *a.server_flags]


def _structured(rows: list[dict]) -> list[Figure]:
    r = rows[-1]
    return [Figure("structured.constrained_fraction", r["constrained_fraction"], "x", True),
            Figure("structured.jump_forward_speedup", r["jump_forward_speedup"], "x", True)]


def _ngram(rows: list[dict]) -> list[Figure]:
    base = next(r for r in rows if r["num_draft_tokens"] == 0)
    best = max((r for r in rows if r["num_draft_tokens"]), key=lambda r: r["throughput_tok_s"])
    return [Figure("ngram_bs1.speedup", best["throughput_tok_s"] / base["throughput_tok_s"], "x", True)]


def _programs(rows: list[dict]) -> list[Figure]:
    f = rows[-1]["figures"]
    units = {"speedup": ("x", True), "differ": ("programs", False), "failed": ("count", False),
             "optimum": ("x", True), "ok": ("bool", True)}
    out = []
    for name, value in f.items():
        unit, higher = next((u for key, u in units.items() if key in name), ("x", True))
        out.append(Figure(f"programs.{name}", float(value if value is not None else float("nan")), unit, higher))
    return out


def _tok(a: argparse.Namespace) -> list[str]:
    if not a.tokenizer_path:
        raise SystemExit("this benchmark needs --tokenizer-path (a Llama 3 tokenizer folder)")
    return ["--tokenizer-path", a.tokenizer_path]


DECODE_BS1 = ("--batch-size", "1", "--input-len", "128", "--output-len", "256")
PREFILL = ("--batch-size", "8", "--input-len", "4096", "--output-len", "1")

BENCHES = [
    Bench("decode_bs1", _one_batch(*DECODE_BS1), _decode_bs1("decode_bs1"), 300),
    Bench("sweep", _one_batch("--batch-size", *map(str, SWEEP), "--input-len", "128", "--output-len", "32"),
          _sweep, 400),
    Bench("prefill", _one_batch(*PREFILL), _prefill("prefill_8x4096"), 300),
    Bench("offline", _offline_args(), _offline("offline_500"), 600),
    Bench("structured", lambda a: ["sgl.bench_structured", "--model-path", a.model_path, "--load-format",
                                   "dummy", *_tok(a), "--batch-size", "64", "--max-new-tokens", "128",
                                   *a.server_flags], _structured, 400),
    Bench("ngram", lambda a: ["sgl.bench_speculative", "--model-path", a.model_path, "--load-format", "dummy",
                              *_tok(a), "--speculative-algorithm", "NGRAM", "--dataset", "copy",
                              "--batch-sizes", "1", "--num-draft-tokens", "8", "16", "--max-new-tokens", "256",
                              *a.server_flags], _ngram, 400),
    # FP8 weights and FP8 KV cache (issue 18): the same workloads, each beside its bf16 row
    Bench("decode_bs1_fp8", _one_batch(*DECODE_BS1, *FP8), _decode_bs1("decode_bs1_fp8"), 300),
    Bench("prefill_fp8", _one_batch(*PREFILL, *FP8), _prefill("prefill_8x4096_fp8"), 300),
    Bench("offline_fp8", _offline_args(*FP8), _offline("offline_500_fp8"), 600),
    Bench("programs", lambda a: ["sgl.bench_programs_scale", "--model-path", a.model_path, "--load-format",
                                 "dummy", *_tok(a), "--sizes", "128,512", *a.server_flags], _programs, 1500),
]


def run_bench(bench: Bench, args: argparse.Namespace) -> tuple[list[Figure], float, str]:
    """(figures, seconds, error text or '') of one benchmark, run as its own process."""
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result.jsonl")
        cmd = [sys.executable, "-m", *bench.args(args), "--result-filename", result]
        env = dict(os.environ)
        if args.tree:
            env["PYTHONPATH"] = os.path.abspath(args.tree) + os.pathsep + env.get("PYTHONPATH", "")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=args.tree or None, env=env, capture_output=True, text=True,
                                  timeout=bench.timeout_s)
        except subprocess.TimeoutExpired:
            return [], time.perf_counter() - t0, f"timed out after {bench.timeout_s} s"
        seconds = time.perf_counter() - t0
        if proc.returncode != 0 or not os.path.exists(result):
            return [], seconds, (proc.stdout + proc.stderr)[-2000:]
        with open(result) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        return bench.figures(rows), seconds, ""


def compare(figures: list[Figure], baseline: dict[str, float], tolerance: float) -> list[str]:
    """The figures more than `tolerance` worse than their baseline value."""
    worse = []
    for f in figures:
        base = baseline.get(f.name)
        if base is None or base == 0:
            continue
        change = (f.value - base) / abs(base) * (1 if f.higher_is_better else -1)
        if change < -tolerance:
            worse.append(f"{f.name}: {f.value:.4g} {f.unit} vs baseline {base:.4g} ({100 * change:+.1f}%)")
    return worse


def _card() -> str:
    import torch
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def _commit(tree: str | None) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree or None, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="Comma-separated benchmark names (default: all).")
    parser.add_argument("--model-path", default=MODEL)
    parser.add_argument("--tokenizer-path", default=None, help="A Llama 3 tokenizer folder (structured, ngram).")
    parser.add_argument("--baseline", default="docs/bench_baseline.json")
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--out", default=None, help="Write the run (figures, card, commit) as JSON.")
    parser.add_argument("--tree", default=None, help="Run the benchmarks on this checkout's code.")
    parser.add_argument("--label", default=None, help="A name for this run in the output (e.g. before/after).")
    parser.add_argument("--commit", default=None, help="The code's commit (default: git rev-parse, where "
                        "the checkout's .git is current).")
    parser.add_argument("--update-baseline", action="store_true")
    parser.add_argument("--server-flag", dest="server_flags", action="append", default=[],
                        help="Passed to every benchmark (repeat), e.g. --server-flag=--disable-cuda-graph")
    args = parser.parse_args(argv)
    if args.tokenizer_path:  # benchmarks of another --tree run there
        args.tokenizer_path = os.path.abspath(args.tokenizer_path)
    names = [n for n in args.only.split(",") if n] or [b.name for b in BENCHES]
    unknown = set(names) - {b.name for b in BENCHES}
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; have {[b.name for b in BENCHES]}")
    card, commit = _card(), (args.label or "") + ("@" if args.label else "") + (args.commit or _commit(args.tree))
    baselines = json.load(open(args.baseline)) if os.path.exists(args.baseline) else {}
    base = baselines.get(card, {}).get("figures", {})
    figures, errors, seconds, worse = [], {}, {}, []
    run = {"card": card, "commit": commit, "date": datetime.date.today().isoformat(),
           "command": " ".join(["python -m sgl.bench_suite", *(argv if argv is not None else sys.argv[1:])]),
           "figures": [], "seconds": seconds, "errors": errors, "worse": []}
    for bench in (b for b in BENCHES if b.name in names):
        got, seconds[bench.name], err = run_bench(bench, args)
        figures += got
        if err:
            errors[bench.name] = err
        for f in got:
            print(f"{f.name:<40} {f.value:>12.4g} {f.unit:<6} (baseline {base.get(f.name, float('nan')):.4g})",
                  flush=True)
        print(f"# {bench.name}: {seconds[bench.name]:.0f} s{'  FAILED: ' + err[-500:] if err else ''}", flush=True)
        run["figures"] = [asdict(f) for f in figures]
        run["worse"] = worse = compare(figures, base, args.tolerance)
        if args.out:  # after every benchmark: a run cut short keeps what it measured
            with open(args.out, "w") as f:
                json.dump(run, f, indent=1)
    if args.update_baseline:
        entry = baselines.setdefault(card, {"figures": {}})
        entry["figures"].update({f.name: f.value for f in figures})
        entry.update(commit=commit, date=run["date"])
        with open(args.baseline, "w") as f:
            json.dump(baselines, f, indent=1, sort_keys=True)
    for line in worse:
        print(f"WORSE THAN BASELINE: {line}")
    return 1 if worse or errors else 0


if __name__ == "__main__":
    sys.exit(main())
