"""bench_pd's figures (the 2-GPU run itself is on a lent machine): only stream tokens inside the
window of the long prompts count, percentiles and throughput follow numpy's, failures are
counted with their errors."""
from __future__ import annotations

import numpy as np
import pytest

from sgl.bench_pd import parse_args, summarize
from sgl.bench_serving import RequestResult


def test_summarize_counts_the_window_only() -> None:
    rng = np.random.default_rng(0)
    when = np.sort(rng.uniform(0, 30, 400))
    itl = rng.uniform(0.01, 0.2, 400)
    longs = [(11.0, 12.0, RequestResult(True, 8192, 8, ttft=0.5, latency=1.0)),
             (13.0, 15.0, RequestResult(True, 8192, 8, ttft=1.5, latency=2.0)),
             (14.0, 14.1, RequestResult(False, error="HTTP 502: prefill died"))]
    got = summarize(list(zip(when, itl)), longs, 10.0, 20.0, ["stream broke"])
    inside = itl[(when >= 10.0) & (when <= 20.0)] * 1000
    assert got["stream_itl_p50_ms"] == pytest.approx(np.percentile(inside, 50))
    assert got["stream_itl_p99_ms"] == pytest.approx(np.percentile(inside, 99))
    assert got["long_ttft_p50_ms"] == pytest.approx(1000.0)
    assert got["output_throughput"] == pytest.approx((len(inside) + 16) / 10.0)
    assert (got["long_failed"], got["stream_failed"]) == (1, 1)
    assert got["errors"] == ["HTTP 502: prefill died", "stream broke"]


def test_defaults_are_the_documented_workload() -> None:
    a = parse_args([])
    assert (a.num_streams, a.stream_input_len, a.stream_output_len) == (64, 256, 256)
    assert (a.num_long, a.long_input_len, a.long_rate, a.setups) == (24, 8192, 0.5, "pd,dp")
    assert a.model_path.endswith("llama-3.1-8b-dummy") and a.load_format == "dummy"
