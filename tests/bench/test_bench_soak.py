"""bench_soak end to end on the bundled model with a small pool: every kind of the mix is sent,
and every check passes (no 5xx, bad inputs 4xx, the pool idle, the same greedy outputs);
and its figures: RSS growth per 100 requests and the mix's share of kinds."""
from __future__ import annotations

import json
import random

import pytest

from sgl.bench_soak import main, parse_args, rss_growth
from sgl.bench_soak_mix import MIX, MixConfig, send_one


@pytest.mark.slow
def test_small_soak_passes_its_checks(tmp_path) -> None:
    out = tmp_path / "soak.json"
    rc = main(["--num-requests", "30", "--concurrency", "4", "--max-new-tokens", "2",
               "--num-phases", "1", "--rss-tolerance-mb", "1000", "--max-total-tokens", "2048",
               "--result-file", str(out), "--log-file", str(tmp_path / "server.log")])
    result = json.loads(out.read_text())
    assert rc == 0, result["checks"]
    assert all(result["checks"].values())
    assert sum(k["sent"] for k in result["kinds"].values()) == 30
    assert result["pool_after_flush"]["free_kv_tokens"] == 2048
    assert {"parent", "scheduler", "detokenizer"} <= set(result["rss_growth"])
    assert result["references_before"] == result["references_after"]
    assert all(len(ids) == 16 for ids in result["references_before"])


def test_a_bad_input_answered_200_fails_the_soak() -> None:
    class Answer:  # what a server that accepted the bad input would answer
        status_code, text = 200, "{}"

    class Session:
        def post(self, *args, **kwargs) -> Answer:
            return Answer()
    out = send_one(Session(), random.Random(0), MixConfig("http://x", "m", 2), "bad_input")
    assert (out.ok, out.status) == (False, 200)


def test_rss_growth_per_100_requests() -> None:
    samples = [{"num_done": 100, "rss_mb": {"scheduler": 1000.0}},
               {"num_done": 300, "rss_mb": {"scheduler": 1010.0}},
               {"num_done": 500, "rss_mb": {"scheduler": 1010.0}}]
    got = rss_growth(samples, tolerance_mb=2.0)["scheduler"]
    assert got["mb_per_100_requests"] == pytest.approx(2.5)
    assert got["second_half_mb_per_100"] == pytest.approx(0.0)
    assert got["flat"] is False
    assert rss_growth(samples, tolerance_mb=3.0)["scheduler"]["flat"] is True


def test_defaults_are_the_issue_workload() -> None:
    a, flags = parse_args([])
    assert (a.num_requests, a.warmup_requests) == (2000, 200)
    assert flags == {}
    a, flags = parse_args(["--num-requests", "50", "--max-total-tokens", "1024"])
    assert (a.num_requests, a.warmup_requests, flags) == (50, 5, {"max_total_tokens": 1024})
    assert {"abort", "bad_input", "generate_n", "regex", "json_schema", "chat_stream"} <= set(MIX)
