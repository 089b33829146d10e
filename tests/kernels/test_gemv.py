"""The batch-1 Triton GEMV against a float32 reference, and the `linear` dispatcher. GPU only
(`pytest -m gpu`); with TRITON_INTERPRET=1 the small cases run on the CPU through Triton's
interpreter. The dispatcher's CPU path runs in CI."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from sgl.kernels import linear as linear_mod

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON = pytest.mark.skipif(not (torch.cuda.is_available() or INTERPRET), reason="needs a CUDA GPU")


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref).norm() / ref.norm())


@pytest.mark.gpu
@TRITON
@pytest.mark.parametrize("n,k,bias,config", [
    (64, 512, False, (4, 256, 4, 2)),     # even N and K
    (50, 300, True, (8, 128, 4, 2)),      # ragged N and K, bias
    (33, 1024, False, (16, 1024, 4, 3)),  # ragged N, one K block
    pytest.param(28672, 4096, False, None, marks=pytest.mark.skipif(INTERPRET, reason="large")),
    pytest.param(4096, 14336, True, None, marks=pytest.mark.skipif(INTERPRET, reason="large")),
])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gemv_matches_reference(n, k, bias, config, dtype):
    if INTERPRET and dtype is torch.bfloat16:
        pytest.skip("the interpreter mishandles bf16")
    from sgl.kernels.triton.gemv import gemv
    gen = torch.Generator().manual_seed(n * 7 + k)
    x = (torch.randn(1, k, generator=gen) + 0.1).to(DEVICE, dtype)
    w = (torch.randn(n, k, generator=gen) * 0.02).to(DEVICE, dtype)
    b = (torch.randn(n, generator=gen)).to(DEVICE, dtype) if bias else None
    out = torch.full((1, n), float("nan"), dtype=dtype, device=DEVICE)
    gemv(x, w, b, out=out, config=config)
    ref = x.float() @ w.float().T + (b.float() if bias else 0)
    assert out.dtype == dtype and out.shape == (1, n)
    assert _rel_err(out, ref) < (1e-2 if dtype is not torch.float32 else 1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_linear_dispatch_takes_gemv_for_large_single_rows(monkeypatch):
    calls = []
    from sgl.kernels.triton import gemv as gemv_mod
    real = gemv_mod.gemv
    monkeypatch.setattr(gemv_mod, "gemv", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    w = torch.randn(linear_mod.GEMV_MIN_NUMEL // 1024, 1024, device="cuda", dtype=torch.bfloat16) * 0.02
    x = torch.randn(1, 1024, device="cuda", dtype=torch.bfloat16)
    y = linear_mod.linear(x, w)
    assert calls == [1]
    assert _rel_err(y, x.float() @ w.float().T) < 1e-2
    linear_mod.linear(torch.randn(2, 1024, device="cuda", dtype=torch.bfloat16), w)  # batch 2: cuBLAS
    assert calls == [1]


def test_linear_on_cpu_is_f_linear():
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(1, 64, generator=gen), torch.randn(32, 64, generator=gen), torch.randn(32, generator=gen)
    torch.testing.assert_close(linear_mod.linear(x, w, b), F.linear(x, w, b), rtol=0, atol=0)
