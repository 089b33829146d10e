"""The workloads on a CUDA GPU (run with `pytest -m gpu` on the device): with CUDA-graph decode
and the overlap schedule, the hit rate the runtime reports is still the optimum the driver
computes, per workload, at a larger scale than the CPU tests (the bundled model, bf16)."""
from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from sgl.bench_programs.recorder import RecordingBackend  # noqa: E402
from sgl.bench_programs.runs import run_programs  # noqa: E402
from sgl.bench_programs.systems import EngineSystem  # noqa: E402
from sgl.bench_programs.workload import Sizes  # noqa: E402
from sgl.bench_programs.workloads import WORKLOADS  # noqa: E402

from .test_workloads import TOLERANCE  # noqa: E402

SIZES = Sizes(scale=0.5, output_scale=0.25, seed=0)


@pytest.fixture(scope="module")
def gpu_system():
    s = EngineSystem({"device": "cuda", "dtype": "bfloat16", "log_level": "error"})
    yield s
    s.shutdown()


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_gpu_sequential_hit_rate_is_the_optimum(gpu_system, name):
    w = WORKLOADS[name]
    recorder = RecordingBackend(gpu_system.backend)
    result, _ = run_programs(gpu_system, recorder, w, w.make_batch(SIZES, 4), 1, "full")
    assert TOLERANCE * result.optimal_cached_tokens <= result.cached_tokens <= result.optimal_cached_tokens
    assert result.counter_cached_tokens == result.cached_tokens
