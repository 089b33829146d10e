"""`python -m sgl.bench_speculative` on the bundled model (CPU, float32): the sweep's rows, the
running-batch cap when more prompts than the batch size are given, and lossless outputs."""
from __future__ import annotations

import json

from sgl import bench_speculative
from sgl.runtime.scheduler.planner import Planner


def test_sweep_caps_the_running_batch_and_is_lossless(tmp_path, monkeypatch):
    seen: list[int] = []
    plan = Planner.plan

    def spy(self, running, waiting):
        out = plan(self, running, waiting)
        seen.append(len(running))
        return out
    monkeypatch.setattr(Planner, "plan", spy)
    result = tmp_path / "spec.jsonl"
    rows = bench_speculative.main([
        "--speculative-algorithm", "NGRAM", "--dataset", "copy", "--batch-sizes", "2",
        "--num-prompts", "3", "--num-draft-tokens", "4", "--max-new-tokens", "12",
        "--dtype", "float32", "--result-filename", str(result)])
    assert [(r["batch_size"], r["num_draft_tokens"]) for r in rows] == [(2, 0), (2, 4)]
    base, spec = rows
    assert spec["identical_outputs"] == 1.0 and spec["output_tokens"] == base["output_tokens"]
    assert base["output_tokens"] > 2 * 12  # all three prompts ran, not just the batch size
    assert spec["accept_len"] >= 1.0 and base["accept_len"] == 1.0
    assert max(seen) == 2 and seen.count(2) > 0  # never more than the batch size at once
    assert [json.loads(line)["batch_size"] for line in result.read_text().splitlines()] == [2, 2]
