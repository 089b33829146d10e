"""`python -m sgl.bench_suite`: the comparison with the baseline (which direction is worse, the
tolerance), and the figures read from each benchmark's result lines. The benchmarks themselves
run on a GPU (scripts/device_run.sh suite)."""
from __future__ import annotations

import argparse
import json

import pytest

from sgl import bench_suite
from sgl.bench_suite import BENCHES, Figure, compare


def test_compare_flags_only_figures_worse_than_the_tolerance():
    figures = [Figure("tok_s", 94.0, "tok/s", True), Figure("tok_s_ok", 96.0, "tok/s", True),
               Figure("step_ms", 10.6, "ms", False), Figure("step_ms_ok", 10.4, "ms", False),
               Figure("faster", 200.0, "tok/s", True), Figure("new", 1.0, "x", True)]
    base = {"tok_s": 100.0, "tok_s_ok": 100.0, "step_ms": 10.0, "step_ms_ok": 10.0, "faster": 100.0}
    worse = compare(figures, base, 0.05)
    assert [w.split(":")[0] for w in worse] == ["tok_s", "step_ms"]


def test_each_benchmark_reads_its_figures_from_result_lines():
    by_name = {b.name: b for b in BENCHES}
    rows = [{"batch_size": bs, "median_decode_latency": 0.01 * bs, "median_decode_throughput": 100.0 / bs,
             "output_throughput": 90.0, "prefill_latency": 0.8} for bs in (1, 8)]
    assert [f.name for f in by_name["sweep"].figures(rows)] == ["sweep.bs1.median_step_ms", "sweep.bs8.median_step_ms"]
    assert by_name["decode_bs1"].figures(rows[:1])[0].value == 100.0
    spec = [{"num_draft_tokens": 0, "throughput_tok_s": 50.0}, {"num_draft_tokens": 8, "throughput_tok_s": 150.0},
            {"num_draft_tokens": 16, "throughput_tok_s": 120.0}]
    assert by_name["ngram"].figures(spec)[0].value == pytest.approx(3.0)
    assert [f.name for f in by_name["decode_bs1_fp8"].figures(rows[:1])] == [
        "decode_bs1_fp8.median_step_tok_s", "decode_bs1_fp8.end_to_end_tok_s"]
    assert by_name["prefill_fp8"].figures(rows)[0].name == "prefill_8x4096_fp8.seconds"
    programs = by_name["programs"].figures([{"figures": {
        "hellaswag_128_speedup_vs_cache_off": 6.5, "hellaswag_128_differ_from_8_at_a_time": 0,
        "hellaswag_128_failed_steps": None, "logprobs_8k_top20_ok": True}}])
    got = {f.name: (f.value, f.higher_is_better) for f in programs}
    assert got["programs.hellaswag_128_speedup_vs_cache_off"] == (6.5, True)
    assert got["programs.hellaswag_128_differ_from_8_at_a_time"] == (0.0, False)
    assert got["programs.logprobs_8k_top20_ok"] == (1.0, True)


def test_programs_benchmark_trie_optimum_and_workload_shapes():
    from sgl.bench_programs_scale import extraction_args, hellaswag_args, trie_optimum
    # 2 prompts sharing 3 of their 4 tokens, and one alone: 3 of 12 tokens need not be computed
    assert trie_optimum([[1, 2, 3, 4], [1, 2, 3, 5], [9, 8, 7, 6]]) == pytest.approx(3 / 12)
    progs = hellaswag_args(5)
    assert len({p["prefix"] for p in progs}) == 1 and all(len(p["endings"]) == 4 for p in progs)
    assert all(len(e.split()) == 15 for e in progs[0]["endings"])
    assert len(progs[0]["prefix"].split()) == 16 * (25 + 1 + 15)  # 16 shots: context, "Answer:", ending
    docs = extraction_args(num_docs=8, per_doc=16)
    assert len(docs) == 128 and len({d["doc"] for d in docs}) == 8


def test_fp8_benchmarks_pass_the_fp8_flags():
    args = argparse.Namespace(model_path="m", server_flags=["--disable-cuda-graph"],
                              tokenizer_path=None)
    by_name = {b.name: b for b in BENCHES}
    for name in ("decode_bs1_fp8", "prefill_fp8", "offline_fp8"):
        cmd = by_name[name].args(args)
        assert cmd[cmd.index("--quantization") + 1] == "fp8" and "fp8_e4m3" in cmd
        assert cmd[-1] == "--disable-cuda-graph"
        plain = by_name[name.removesuffix("_fp8")].args(args)
        assert [c for c in cmd if c not in bench_suite.FP8] == plain  # otherwise the bf16 run


def test_a_failing_benchmark_is_reported_and_fails_the_run(tmp_path, monkeypatch):
    """A benchmark whose process fails gives no figures, its error in the run's JSON, exit 1."""
    fake = bench_suite.Bench("broken", lambda a: ["sgl.no_such_benchmark"], lambda rows: [], 60)
    monkeypatch.setattr(bench_suite, "BENCHES", [fake])
    out = tmp_path / "run.json"
    assert bench_suite.main(["--only", "broken", "--out", str(out), "--baseline", str(tmp_path / "none.json")]) == 1
    run = json.loads(out.read_text())
    assert "broken" in run["errors"] and "No module named" in run["errors"]["broken"]
