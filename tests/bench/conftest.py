"""Engines on the bundled model shared by the workload tests (one with the radix cache, one
without), and the recording backend over each."""
from __future__ import annotations

import pytest

from sgl.bench_programs.recorder import RecordingBackend
from sgl.bench_programs.systems import EngineSystem

# a pool that holds every test's tokens: no eviction, so misses are the scheduler's alone
ENGINE_ARGS = {"log_level": "error", "max_total_tokens": 16384}


@pytest.fixture(scope="session")
def system():
    s = EngineSystem(ENGINE_ARGS)
    yield s
    s.shutdown()


@pytest.fixture(scope="session")
def system_off():
    s = EngineSystem({**ENGINE_ARGS, "disable_radix_cache": True})
    yield s
    s.shutdown()


@pytest.fixture
def recorder(system):
    return RecordingBackend(system.backend)


@pytest.fixture
def recorder_off(system_off):
    return RecordingBackend(system_off.backend)
