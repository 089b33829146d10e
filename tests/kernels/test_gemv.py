"""The batch-1 Triton GEMV (whole rows and split-K) against a float32 reference, and the `linear`
dispatcher. GPU only (`pytest -m gpu`); with TRITON_INTERPRET=1 the small cases run on the CPU
through Triton's interpreter. The dispatcher's CPU path and its table lookup run in CI."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from sgl.kernels import linear as linear_mod
from sgl.kernels.gemv_tables import write_table

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON = pytest.mark.skipif(not (torch.cuda.is_available() or INTERPRET), reason="needs a CUDA GPU")
LARGE = pytest.mark.skipif(INTERPRET, reason="large")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref).norm() / ref.norm())


def _inputs(n: int, k: int, bias: bool, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(n * 7 + k)
    x = (torch.randn(1, k, generator=gen) + 0.1).to(DEVICE, dtype)
    w = (torch.randn(n, k, generator=gen) * 0.02).to(DEVICE, dtype)
    b = (torch.randn(n, generator=gen)).to(DEVICE, dtype) if bias else None
    ref = x.float() @ w.float().T + (b.float() if bias else 0)
    return x, w, b, ref


def _check(n: int, k: int, bias: bool, config, dtype: torch.dtype) -> torch.Tensor:
    """Run gemv into a NaN-poisoned output and compare it with the float32 reference."""
    if INTERPRET and dtype is torch.bfloat16:
        pytest.skip("the interpreter mishandles bf16")
    from sgl.kernels.triton.gemv import gemv
    x, w, b, ref = _inputs(n, k, bias, dtype)
    out = torch.full((1, n), float("nan"), dtype=dtype, device=DEVICE)
    gemv(x, w, b, out=out, config=config)
    assert out.dtype == dtype and out.shape == (1, n)
    assert _rel_err(out, ref) < (1e-2 if dtype is not torch.float32 else 1e-5)
    return out


DTYPES = pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])


@pytest.mark.gpu
@TRITON
@pytest.mark.parametrize("n,k,bias,config", [
    (64, 512, False, (4, 256, 4, 2)),     # even N and K
    (50, 300, True, (8, 128, 4, 2)),      # ragged N and K, bias
    (33, 1024, False, (16, 1024, 4, 3)),  # ragged N, one K block
    pytest.param(28672, 4096, False, None, marks=LARGE),
    pytest.param(4096, 14336, True, None, marks=LARGE),
])
@DTYPES
def test_gemv_matches_reference(n, k, bias, config, dtype):
    _check(n, k, bias, config, dtype)


@pytest.mark.gpu
@TRITON
@pytest.mark.parametrize("n,k,bias,config", [
    (64, 1024, False, (4, 128, 4, 2, 4)),   # even: 4 whole slices of 2 blocks
    (50, 300, True, (8, 64, 4, 2, 3)),      # ragged N and K (the last slice short), bias
    (33, 1000, True, (16, 256, 4, 2, 8)),   # slices of one block: 4 of 8 lie past K (zeros)
    pytest.param(4096, 4096, False, (2, 1024, 4, 3, 2), marks=LARGE),
    pytest.param(4096, 14336, True, (4, 512, 8, 3, 4), marks=LARGE),
    pytest.param(6144, 4096, False, (1, 2048, 8, 2, 8), marks=LARGE),
])
@DTYPES
@pytest.mark.parametrize("last_program_reduces", [True, False])
def test_split_k_matches_reference(n, k, bias, config, dtype, last_program_reduces, monkeypatch):
    from sgl.kernels.triton import gemv as gemv_mod
    monkeypatch.setattr(gemv_mod, "LAST_PROGRAM_REDUCES", last_program_reduces)
    _check(n, k, bias, config, dtype)
    if last_program_reduces:  # every counter back at zero for the next call
        assert gemv_mod._counters and not any(c.any() for c in gemv_mod._counters.values())


@pytest.mark.gpu
@TRITON
def test_split_k_is_deterministic_and_reduction_independent(monkeypatch):
    """The counter and the second-kernel reductions add the partials in the same order."""
    from sgl.kernels.triton import gemv as gemv_mod
    x, w, b, _ = _inputs(40, 700, True, torch.float16)
    config = (8, 64, 4, 2, 4)
    first = gemv_mod.gemv(x, w, b, config=config)
    again = gemv_mod.gemv(x, w, b, config=config)
    monkeypatch.setattr(gemv_mod, "LAST_PROGRAM_REDUCES", False)
    two_kernels = gemv_mod.gemv(x, w, b, config=config)
    assert torch.equal(first, again) and torch.equal(first, two_kernels)


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("config", [(4, 1024, 8, 3, 1), (2, 1024, 4, 3, 2), (4, 512, 8, 3, 4)])
def test_gemv_replays_under_cuda_graph(config):
    """Captured once, replayed on new inputs: the split-K counters stay consistent."""
    from sgl.kernels.triton.gemv import gemv
    x, w, b, _ = _inputs(4096, 4096, True, torch.bfloat16)
    gemv(x, w, b, config=config)  # compile (and allocate the counters) outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = gemv(x, w, b, config=config)
    for seed in range(3):
        x.copy_(torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(x))
        graph.replay()
        torch.cuda.synchronize()
        assert _rel_err(y, x.float() @ w.float().T + b.float()) < 1e-2


def _table_file(tmp_path, table: dict) -> str:
    path = str(tmp_path / "gemv.json")
    write_table(path, table, "test", "tests/kernels/test_gemv.py")
    return path


@pytest.mark.gpu
@CUDA
def test_linear_dispatch_takes_gemv_per_table(monkeypatch, tmp_path, gemv_settings):
    calls = []
    from sgl.kernels.triton import gemv as gemv_mod
    real = gemv_mod.gemv
    monkeypatch.setattr(gemv_mod, "gemv",
                        lambda *a, **kw: calls.append(kw["config"]) or real(*a, **kw))
    gemv_settings(True, _table_file(tmp_path, {(1024, 512): (2, 256, 4, 3, 2), (2048, 512): None}))
    x = torch.randn(1, 512, device="cuda", dtype=torch.bfloat16)
    big = torch.randn(linear_mod.GEMV_MIN_NUMEL // 512, 512, device="cuda", dtype=torch.bfloat16)
    tuned = torch.randn(1024, 512, device="cuda", dtype=torch.bfloat16) * 0.02
    y = linear_mod.linear(x, tuned)
    assert calls == [(2, 256, 4, 3, 2)]
    assert _rel_err(y, x.float() @ tuned.float().T) < 1e-2
    linear_mod.linear(x, big)  # untuned but large: the kernel's default
    assert calls[1:] == [gemv_mod.DEFAULT_CONFIG]
    for n in (2048, 512):  # tuned to cuBLAS; small and untuned
        linear_mod.linear(x, torch.randn(n, 512, device="cuda", dtype=torch.bfloat16))
    linear_mod.linear(torch.randn(2, 512, device="cuda", dtype=torch.bfloat16), tuned)  # batch 2
    gemv_settings(enabled=False)  # --disable-gemv
    torch.testing.assert_close(linear_mod.linear(x, tuned), F.linear(x, tuned), rtol=0, atol=0)
    assert len(calls) == 2


def test_gemv_config_lookup():
    table = {(1024, 512): (2, 512, 4, 3, 2), (linear_mod.GEMV_MIN_NUMEL, 1): None}
    from sgl.kernels.triton.gemv import DEFAULT_CONFIG
    assert linear_mod.gemv_config(1024, 512, table) == (2, 512, 4, 3, 2)  # tuned, though small
    assert linear_mod.gemv_config(linear_mod.GEMV_MIN_NUMEL, 1, table) is None  # tuned to cuBLAS
    assert linear_mod.gemv_config(linear_mod.GEMV_MIN_NUMEL // 2, 2, table) == DEFAULT_CONFIG
    assert linear_mod.gemv_config(2048, 512, table) is None  # small and untuned


def test_linear_on_cpu_is_f_linear():
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(1, 64, generator=gen), torch.randn(32, 64, generator=gen), torch.randn(32, generator=gen)
    torch.testing.assert_close(linear_mod.linear(x, w, b), F.linear(x, w, b), rtol=0, atol=0)
