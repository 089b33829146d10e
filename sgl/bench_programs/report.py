"""Summaries of a benchmark's runs: per workload, the full system against each baseline, the
hit rate against its optimum, the no-sharing overhead, the targets, and a Markdown table."""
from __future__ import annotations

import statistics
from typing import Any

# Targets of issue 19 (H100, 8B shape); checked in every report, met or not.
MIN_SPEEDUP_FEW_SHOT_VS_INDEPENDENT = 5.0
MIN_SPEEDUP_FEW_SHOT_VS_RADIX_OFF = 3.0
MIN_HIT_RATIO = 0.97
MAX_OVERHEAD = 0.005


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(runs: list[dict[str, Any]], few_shot: set[str], no_sharing: set[str]) -> dict[str, dict[str, Any]]:
    """Per workload: the full system's figures (medians over repeats), its speedup in programs/s
    over each baseline, and for the no-sharing workloads the radix tree's overhead."""
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["workload"] for r in runs):
        by = {c: [r for r in runs if r["workload"] == name and r["config"] == c]
              for c in ("full", "no_parallel", "radix_off", "independent")}
        full = by["full"]
        s: dict[str, Any] = {"few_shot": name in few_shot}
        for key in ("programs_per_s", "output_tok_per_s", "latency_p50_s", "latency_p99_s",
                    "hit_rate", "optimal_hit_rate", "hit_ratio", "counter_hit_rate"):
            s[key] = _median(full, key)
        for config in ("no_parallel", "radix_off", "independent"):
            base = _median(by[config], "programs_per_s")
            s[f"{config}_programs_per_s"] = base
            s[f"speedup_vs_{config}"] = s["programs_per_s"] / base if base and s["programs_per_s"] else None
        if name in no_sharing and s["radix_off_programs_per_s"]:
            # the cache's cost: how much slower the full system is than radix off
            s["radix_overhead"] = s["radix_off_programs_per_s"] / s["programs_per_s"] - 1
        out[name] = s
    return out


def targets(summary: dict[str, dict[str, Any]]) -> list[tuple[str, bool | None]]:
    """(target, met?) for every target that applies; None where a figure is missing."""
    checks: list[tuple[str, bool | None]] = []
    for name, s in summary.items():
        if s["few_shot"]:
            for config, floor in (("independent", MIN_SPEEDUP_FEW_SHOT_VS_INDEPENDENT),
                                  ("radix_off", MIN_SPEEDUP_FEW_SHOT_VS_RADIX_OFF)):
                x = s[f"speedup_vs_{config}"]
                checks.append((f"{name}: >= {floor:g}x {config} (got {_fmt(x, 'x')})",
                               None if x is None else x >= floor))
        if s["optimal_hit_rate"]:  # nothing to reuse (no sharing): no ratio to hold
            ratio = s["hit_ratio"]
            checks.append((f"{name}: hit rate >= {MIN_HIT_RATIO:.0%} of optimal (got {_fmt(ratio, '%')})",
                           None if ratio is None else ratio >= MIN_HIT_RATIO))
        if "radix_overhead" in s:
            o = s["radix_overhead"]
            checks.append((f"{name}: radix overhead < {MAX_OVERHEAD:.1%} (got {o:+.2%})", o < MAX_OVERHEAD))
    return checks


def _fmt(x: float | None, kind: str) -> str:
    if x is None:
        return "-"
    return f"{x:.2f}x" if kind == "x" else f"{x:.1%}"


def markdown_table(summary: dict[str, dict[str, Any]]) -> str:
    head = ("| workload | programs/s | vs independent calls | vs radix off | vs one thread | output tok/s "
            "| latency p50 / p99 (s) | hit rate | optimal | measured / optimal |")
    lines = [head, "|" + "---|" * 10]
    for name, s in summary.items():
        lat = f"{_num(s['latency_p50_s'])} / {_num(s['latency_p99_s'])}"
        lines.append(
            f"| {name} | {_num(s['programs_per_s'])} | {_fmt(s['speedup_vs_independent'], 'x')} "
            f"| {_fmt(s['speedup_vs_radix_off'], 'x')} | {_fmt(s['speedup_vs_no_parallel'], 'x')} "
            f"| {_num(s['output_tok_per_s'], 1)} | {lat} | {_num(s['hit_rate'])} "
            f"| {_num(s['optimal_hit_rate'])} | {_fmt(s['hit_ratio'], '%')} |")
    return "\n".join(lines)


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"
