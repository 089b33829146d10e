"""The FP8 references (kernels/fp8.py, the FP8 side of kernels/kv_store.py and of the paged
attention reference) against independent float computations: the CPU path of --quantization
fp8 and --kv-cache-dtype fp8_*, and the oracles the GPU kernels are tested against."""
from __future__ import annotations

import pytest
import torch

from sgl.kernels.attention.torch_ref import decode_attention_ref, extend_attention_ref
from sgl.kernels.fp8 import (
    FP8_DTYPE,
    FP8_MAX,
    fp8_gemv_ref,
    fp8_linear,
    fp8_linear_ref,
    quantize_activation_ref,
    quantize_rows_ref,
)
from sgl.kernels.kv_store import from_pool, store_kv, store_kv_ref

E4M3_REL = 2 ** -4  # half a unit in the last place of a 3-bit mantissa, relative
E5M2_REL = 2 ** -3


def _randn(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) + 0.1) * scale  # shifted: never all zero


@pytest.mark.parametrize("scale", [1e-3, 1.0, 300.0])
def test_quantize_rows_maps_each_row_max_to_448(scale):
    x = _randn(7, 96, scale=scale)
    q, s = quantize_rows_ref(x)
    assert q.dtype == FP8_DTYPE and s.shape == (7, 1) and s.dtype == torch.float32
    torch.testing.assert_close(s, x.abs().amax(-1, keepdim=True) / FP8_MAX)
    assert (q.float().abs().amax(-1) == FP8_MAX).all()  # the largest element lands on 448
    back = q.float() * s
    normal = back.abs() >= 2 ** -6 * s  # e4m3 normals: relative error of the rounding only
    rel = ((back - x).abs() / x.abs())[normal]
    assert rel.max() <= E4M3_REL + 1e-6
    assert (back - x).abs().max() <= 2 ** -9 * s.max() + (E4M3_REL * x.abs()).max()


def test_quantize_rows_of_zeros_is_zeros():
    q, s = quantize_rows_ref(torch.zeros(2, 16))
    assert (q.float() == 0).all() and (s > 0).all()


def test_static_activation_scale_saturates():
    x = torch.tensor([[1.0, -2.0, 1000.0]])
    q, s = quantize_activation_ref(x, torch.tensor(0.5))
    assert s.item() == 0.5
    assert q.float().tolist() == [[2.0, -4.0, FP8_MAX]]  # 2000 saturates, never inf or NaN


@pytest.mark.parametrize("m,n,k,bias", [(1, 32, 64, False), (5, 48, 96, True), (3, 7, 5, True)])
def test_fp8_linear_ref_is_the_dequantized_product(m, n, k, bias):
    x, w = _randn(m, k, seed=1), _randn(n, k, seed=2, scale=0.05)
    b = _randn(n, seed=3) if bias else None
    wq, ws = quantize_rows_ref(w)
    ws = ws.view(-1)
    out = fp8_linear_ref(x, wq, ws, b)
    xq, xs = quantize_rows_ref(x)  # per token, independently of the code under test
    expected = (xq.double() * xs.double()) @ (wq.double() * ws.double()[:, None]).T
    if bias:
        expected += b.double()
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    exact = x.double() @ w.double().T + (b.double() if bias else 0)
    rel = (out.double() - exact).norm() / exact.norm()
    assert 1e-4 < rel < 0.05, rel  # FP8's error: there, and a few percent at most


def test_fp8_linear_keeps_leading_dims_and_dtype():
    x, w = _randn(2, 3, 32).bfloat16(), _randn(16, 32, seed=1, scale=0.1)
    wq, ws = quantize_rows_ref(w)
    out = fp8_linear(x, wq, ws.view(-1))
    assert out.shape == (2, 3, 16) and out.dtype == torch.bfloat16
    torch.testing.assert_close(out, fp8_linear_ref(x, wq, ws.view(-1)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="weight_scale"):
        fp8_linear(x, wq, ws)  # (N, 1): not a per-row vector


def test_fp8_gemv_ref_does_not_quantize_x():
    x, w = _randn(1, 64, seed=4), _randn(24, 64, seed=5, scale=0.1)
    wq, ws = quantize_rows_ref(w)
    expected = x.double() @ (wq.double() * ws.double()).T
    torch.testing.assert_close(fp8_gemv_ref(x, wq, ws.view(-1)).double(), expected,
                               atol=1e-6, rtol=1e-6)


def test_fp8_gemv_config_follows_disable_gemv(gemv_settings, tmp_path):
    """One-row FP8 linears take the FP8 GEMV at every size, _scaled_mm under --disable-gemv; a
    --gemv-configs table (16-bit weights) leaves them alone."""
    from sgl.kernels import linear as linear_mod
    from sgl.kernels.gemv_tables import write_table
    table = tmp_path / "t.json"
    write_table(table, {(64, 32): None}, "test", "test")
    gemv_settings(True, str(table))
    assert linear_mod.fp8_gemv_config(64, 32) == linear_mod.FP8_DEFAULT_GEMV_CONFIG
    gemv_settings(False)
    assert linear_mod.fp8_gemv_config(64, 32) is None


@pytest.mark.parametrize("dtype,rel", [(torch.float8_e4m3fn, E4M3_REL), (torch.float8_e5m2, E5M2_REL)])
def test_store_kv_ref_fp8_round_trips_within_precision(dtype, rel):
    k_buf = torch.zeros(20, 2, 8, dtype=dtype)
    v_buf = torch.zeros(20, 2, 8, dtype=dtype)
    loc = torch.tensor([3, 17, 5])
    k, v = _randn(3, 2, 8, seed=6, scale=4.0), _randn(3, 16, seed=7, scale=0.02)
    store_kv(k_buf, v_buf, loc, k, v, k_scale=0.5, v_scale=1e-3)  # CPU: the reference
    k_back, v_back = from_pool(k_buf[loc], 0.5), from_pool(v_buf[loc], 1e-3)
    v = v.view(3, 2, 8)
    assert ((k_back - k).abs() <= rel * k.abs() + 1e-6).all()
    assert ((v_back - v).abs() <= rel * v.abs() + 1e-9).all()
    assert (k_buf[[0, 1, 4]].float() == 0).all()  # other slots untouched
    huge = torch.full((1, 2, 8), 1e9)
    store_kv_ref(k_buf, v_buf, loc[:1], huge, -huge)
    assert from_pool(k_buf[3], 1.0).max() == torch.finfo(dtype).max  # saturated, not inf/NaN
    assert from_pool(v_buf[3], 1.0).min() == -torch.finfo(dtype).max


def test_attention_ref_reads_an_fp8_pool_through_its_scales():
    g = torch.Generator().manual_seed(8)
    num_slots, hkv, hq, d = 40, 2, 4, 16
    k_float = torch.randn(num_slots, hkv, d, generator=g)
    v_float = torch.randn(num_slots, hkv, d, generator=g) * 0.1
    k_scale, v_scale = 0.02, 2e-3  # |K|, |V| / scale stay below 448: nothing saturates
    k_buf = (k_float / k_scale).to(torch.float8_e4m3fn)
    v_buf = (v_float / v_scale).to(torch.float8_e4m3fn)
    req_to_token = torch.randperm(num_slots, generator=g)[:30].view(2, 15).int()
    q = torch.randn(6, hq, d, generator=g)
    rows, prefix_lens, extend_lens = torch.tensor([1, 0]), [9, 12], [3, 3]
    out = extend_attention_ref(q, k_buf, v_buf, req_to_token, rows, prefix_lens, extend_lens,
                               d ** -0.5, k_scale=k_scale, v_scale=v_scale)
    dequant = extend_attention_ref(q, k_buf.float() * k_scale, v_buf.float() * v_scale,
                                   req_to_token, rows, prefix_lens, extend_lens, d ** -0.5)
    torch.testing.assert_close(out, dequant, atol=1e-6, rtol=1e-6)
    exact = extend_attention_ref(q, k_float, v_float, req_to_token, rows, prefix_lens,
                                 extend_lens, d ** -0.5)
    assert 1e-4 < ((out - exact).norm() / exact.norm()).item() < 0.08
    dec = decode_attention_ref(q[[2, 5]], k_buf, v_buf, req_to_token, rows, [12, 15], d ** -0.5,
                               k_scale=k_scale, v_scale=v_scale)
    torch.testing.assert_close(dec, out[[2, 5]], atol=1e-6, rtol=1e-6)
