"""The command-line tools run end to end on the bundled model (subprocesses, like a user)."""
from __future__ import annotations

import json
import subprocess
import sys


def run(*args: str, timeout: int = 300) -> str:
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def test_sgl_generate_prints_a_completion():
    out = run("-m", "sgl.runtime.cli", "generate", "The capital of France is", "--max-new-tokens", "8", "--json")
    result = json.loads(out)
    assert result["meta_info"]["completion_tokens"] == 8
    assert "Paris" in result["text"]


def test_bench_one_batch_runs(tmp_path):
    path = tmp_path / "r.jsonl"
    out = run("-m", "sgl.bench_one_batch", "--batch-size", "2", "--input-len", "16", "--output-len", "4",
              "--result-filename", str(path))
    assert "Decode.  median latency" in out
    r = json.loads(path.read_text().splitlines()[0])
    assert r["batch_size"] == 2 and r["output_throughput"] > 0


def test_bench_offline_throughput_runs():
    out = run("-m", "sgl.bench_offline_throughput", "--num-prompts", "6", "--random-input-len", "32",
              "--random-output-len", "8", "--random-range-ratio", "0.5")
    assert "output_throughput" in out


def test_bench_transformers_runs_the_offline_workload(tmp_path):
    # A tiny Llama config with random weights; three prompts in static batches of 2.
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32,
           "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
           "num_key_value_heads": 1, "vocab_size": 97, "max_position_embeddings": 128}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    out = run("-m", "sgl.bench_transformers", "--model-path", str(tmp_path), "--num-prompts", "3",
              "--batch-size", "2", "--random-input-len", "12", "--random-output-len", "5",
              "--random-range-ratio", "0.5")
    r = json.loads(out.strip().splitlines()[-1])
    from sgl.bench_offline_throughput import random_workload
    work = random_workload(3, 12, 5, 0.5, 97, 1)  # the prompts sgl's offline benchmark draws
    assert r["num_prompts"] == 3 and r["total_output_tokens"] == sum(ol for _, ol in work)
    assert r["total_input_tokens"] == sum(len(ids) for ids, _ in work) and r["output_throughput"] > 0
