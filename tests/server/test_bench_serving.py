"""`python -m sgl.bench_serving` against the live server."""
from __future__ import annotations

import json

import pytest

from sgl import bench_serving


@pytest.mark.parametrize("backend", ["sgl", "sgl-oai"])
def test_bench_serving_reports_and_appends_jsonl(server, tmp_path, backend, capsys):
    out = tmp_path / "bench.jsonl"
    argv = ["--backend", backend, "--base-url", server.url, "--dataset-name", "random",
            "--num-prompts", "6", "--random-input-len", "16", "--random-output-len", "4",
            "--random-range-ratio", "1", "--request-rate", "50", "--max-concurrency", "3",
            "--output-file", str(out)]
    bench_serving.main(argv)
    bench_serving.main(argv)
    lines = out.read_text().splitlines()
    assert len(lines) == 2
    result = json.loads(lines[0])
    assert result["completed"] == 6 and result["failed"] == 0
    assert result["total_input_tokens"] == 6 * 16 and result["total_output_tokens"] == 6 * 4
    assert 0 < result["mean_ttft_ms"] <= result["mean_e2e_latency_ms"]
    assert result["p99_itl_ms"] >= result["median_itl_ms"] > 0
    assert result["mean_tpot_ms"] > 0 and result["request_throughput"] > 0
    assert "Serving Benchmark Result" in capsys.readouterr().out


def test_generated_shared_prefix_workload_reports_the_cache_hits(server):
    # 2 groups x 3 prompts sharing a 48-token system prompt (random ids no other test sends), one
    # at a time: each group's first prompt misses, the other two find the system prompt cached.
    argv = ["--base-url", server.url, "--dataset-name", "generated-shared-prefix",
            "--gsp-num-groups", "2", "--gsp-prompts-per-group", "3", "--gsp-system-prompt-len", "48",
            "--gsp-question-len", "8", "--gsp-output-len", "2", "--max-concurrency", "1",
            "--warmup-requests", "0"]
    result = bench_serving.main(argv)
    assert result["completed"] == 6 and result["total_input_tokens"] == 6 * 56
    assert result["total_cached_tokens"] >= 4 * 48
    assert result["cache_hit_rate"] == result["total_cached_tokens"] / (6 * 56)
