"""The driver's pieces end to end: the command line (full system only, so one engine), the
independent-calls replay on the engine, and both on a real server on loopback (programs through
RuntimeEndpoint, the replay through /v1/completions)."""
from __future__ import annotations

import json

import pytest

from sgl.bench_programs.__main__ import main
from sgl.bench_programs.recorder import RecordingBackend
from sgl.bench_programs.runs import replay_independent, run_programs
from sgl.bench_programs.systems import HttpSystem
from sgl.bench_programs.workload import Sizes
from sgl.bench_programs.workloads import WORKLOADS

from .conftest import ENGINE_ARGS

SIZES = Sizes(scale=0.05, output_scale=0.05, seed=0)
RAG = WORKLOADS["rag_pipeline"]
# Per program, the calls a client without the language sends: the rationale, the answer and one
# echo request scoring both choices (two prompts); the requests that only fill the cache are not.
REPLAYED_PROMPTS = 4


def test_command_line_writes_runs_summary_and_targets(tmp_path):
    path = tmp_path / "programs.json"
    main(["--workload", "mmlu", "--num-programs", "2", "--parallel", "1", "--scale", "0.05",
          "--baselines", "--max-total-tokens", "8192", "--result-file", str(path)])
    result = json.loads(path.read_text())
    assert result["meta"]["workloads"] == ["mmlu"] and result["meta"]["server_args"]["max_total_tokens"] == 8192
    body = result["backends"]["engine"]
    (run,) = body["runs"]
    assert run["config"] == "full" and run["num_programs"] == 2 and run["num_requests"] == 2
    assert run["output_tokens"] == 2 and 0 < run["hit_rate"] == run["optimal_hit_rate"]  # one at a time
    summary = body["summary"]["mmlu"]
    assert summary["speedup_vs_independent"] is None  # not run, so no figure
    assert [t["met"] for t in body["targets"] if "x " in t["target"]] == [None, None]


def _check_replay(full, independent, num_programs: int) -> None:
    assert independent.num_requests == REPLAYED_PROMPTS * num_programs
    assert independent.cached_tokens == independent.counter_cached_tokens == 0
    assert independent.output_tokens == full.output_tokens  # greedy: the same tokens come out
    assert len(independent.latencies_s) == num_programs


def test_engine_replay_sends_each_programs_calls_with_full_prompts(system, recorder, system_off):
    full, calls = run_programs(system, recorder, RAG, RAG.make_batch(SIZES, 2), 2, "full")
    assert 0 < full.cached_tokens <= full.optimal_cached_tokens
    _check_replay(full, replay_independent(system_off, RAG.name, calls, 2, 2), 2)


@pytest.fixture(scope="module")
def http_off():
    s = HttpSystem({**ENGINE_ARGS, "disable_radix_cache": True})
    yield s
    s.shutdown()


def test_server_runs_programs_and_the_completions_replay(http_off):
    # one program: the wire formats are under test here; concurrency is the engine test's
    recorder = RecordingBackend(http_off.backend)
    radix_off, calls = run_programs(http_off, recorder, RAG, RAG.make_batch(SIZES, 1), 1, "radix_off")
    assert radix_off.cached_tokens == radix_off.counter_cached_tokens == 0  # /get_server_info's counters
    assert radix_off.optimal_cached_tokens > 0  # what the cache would have given
    _check_replay(radix_off, replay_independent(http_off, RAG.name, calls, 1, 1), 1)
