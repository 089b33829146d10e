"""The FP8 GPU paths against their torch references: activation quantization, the FP8 GEMV and
torch._scaled_mm behind `fp8_linear`, the KV store into an FP8 pool, and the decode / extend
(causal and tree-masked) attention kernels reading one. GPU only (`pytest -m gpu`); with
TRITON_INTERPRET=1 the small cases also run on the CPU through Triton's interpreter, whose FP8
rounding is not the GPU's (it can round a value next to a power of two down a binade), so
there the FP8 values themselves are compared by norm, not bit for bit."""
from __future__ import annotations

import pytest
import torch

from sgl.kernels.fp8 import fp8_gemv_ref, quantize_activation_ref, quantize_rows_ref
from sgl.kernels.kv_store import store_kv_ref, to_pool
from tests.kernels.test_triton_kernels import (
    ATTN_DTYPE,
    BF16_TOL,
    BIG,
    DEVICE,
    INTERPRET,
    _assert_close,
    _backend_batch,
    _backend_layers,
    _gen,
    _paged_setup,
    _poisoned,
    _randn,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() or INTERPRET), reason="needs a CUDA GPU"),
]
CUDA = pytest.mark.skipif(INTERPRET or not torch.cuda.is_available(), reason="needs a CUDA GPU")
FP8_KV = pytest.mark.parametrize("kv_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
# ||out - ref|| / ||ref|| of attention over an FP8 pool against a 16-bit one: the format's error
FP8_TOL = {torch.float8_e4m3fn: 6e-2, torch.float8_e5m2: 1.2e-1}


def _same_fp8(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Bit-equal FP8 tensors on a GPU; under the interpreter, close as numbers."""
    assert out.dtype == ref.dtype and out.shape == ref.shape
    if INTERPRET:
        _assert_close(out.float().cpu(), ref.float().cpu(), 0.25)
    else:
        assert torch.equal(out.view(torch.uint8).cpu(), ref.view(torch.uint8).cpu())


# ---- activation quantization -----------------------------------------------------------------

@pytest.mark.parametrize("rows,k", [(1, 64), (7, 4096), (3, 14336), (5, 300)])
@pytest.mark.parametrize("static", [False, True])
def test_quantize_per_token(rows, k, static):
    from sgl.kernels.triton.fp8_quant import quantize_per_token
    x = _randn(rows, k, gen=_gen(k), scale=3.0)
    static_scale = torch.tensor([0.02], device=DEVICE) if static else None
    q, s = quantize_per_token(x, static_scale)
    ref_q, ref_s = quantize_activation_ref(x.cpu(), static_scale.cpu() if static else None)
    torch.testing.assert_close(s.cpu(), ref_s, rtol=0, atol=0)
    _same_fp8(q, ref_q)


# ---- FP8 linear ------------------------------------------------------------------------------

def _fp8_weight(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.randn(n, k, generator=_gen(seed)) * 0.02
    q, s = quantize_rows_ref(w)
    return q.to(DEVICE), s.view(-1).to(DEVICE)


@pytest.mark.parametrize("n,k,bias,config", [
    (64, 512, False, (4, 256, 4, 2)), (50, 300, True, (8, 128, 4, 2)),
    (33, 1000, True, (16, 256, 4, 2, 8)),  # split-K, slices past K
    pytest.param(6144, 4096, False, None, marks=BIG), pytest.param(4096, 14336, True, None, marks=BIG),
    pytest.param(4096, 4096, False, (2, 1024, 4, 3, 2), marks=BIG),
])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp8_gemv_matches_reference(n, k, bias, config, dtype):
    from sgl.kernels.triton.gemv import gemv
    if INTERPRET and dtype is torch.bfloat16:
        pytest.skip("the interpreter mishandles bf16")
    w, s = _fp8_weight(n, k, seed=n + k)
    x = _randn(1, k, dtype=dtype, gen=_gen(k))
    b = _randn(n, dtype=dtype, gen=_gen(n)) if bias else None
    out = torch.full((1, n), float("nan"), dtype=dtype, device=DEVICE)
    gemv(x, w, b, out=out, config=config, weight_scale=s)
    ref = fp8_gemv_ref(x.float().cpu(), w.cpu(), s.cpu(), b.float().cpu() if bias else None)
    _assert_close(out.float().cpu(), ref, 1e-2)


@CUDA
@pytest.mark.parametrize("m,n,k", [(1, 4096, 4096), (5, 6144, 4096), (64, 28672, 4096),
                                   (300, 4096, 14336), (3, 40, 24)])
def test_fp8_linear_paths(m, n, k, monkeypatch):
    """One row: the GEMV (weight-only numerics); more rows: torch._scaled_mm on sm89+ (the
    reference's per-token numerics), the reference itself for shapes it cannot take."""
    from sgl.kernels import fp8 as fp8_mod
    from sgl.kernels.fp8 import fp8_linear, fp8_linear_ref, has_fp8_matmul
    calls = []
    real_mm = fp8_mod.fp8_scaled_mm
    monkeypatch.setattr(fp8_mod, "fp8_scaled_mm", lambda *a: calls.append("mm") or real_mm(*a))
    w, s = _fp8_weight(n, k, seed=m)
    x = _randn(m, k, dtype=torch.bfloat16, gen=_gen(m), scale=0.5)
    b = _randn(n, dtype=torch.bfloat16, gen=_gen(n))
    out = fp8_linear(x, w, s, b)
    assert out.dtype == torch.bfloat16 and out.shape == (m, n)
    if m == 1:
        ref = fp8_gemv_ref(x.float().cpu(), w.cpu(), s.cpu(), b.float().cpu())
    else:
        ref = fp8_linear_ref(x.float().cpu(), w.cpu(), s.cpu(), b.float().cpu())
    _assert_close(out.float().cpu(), ref, 1e-2)
    uses_mm = m > 1 and n % 16 == 0 and k % 16 == 0 and has_fp8_matmul(x.device)
    assert calls == (["mm"] if uses_mm else [])


@CUDA
def test_fp8_linear_static_scale_and_cuda_graph():
    from sgl.kernels.fp8 import fp8_linear, fp8_linear_ref
    w, s = _fp8_weight(512, 256, seed=3)
    input_scale = torch.tensor([0.01], device=DEVICE)
    for m in (1, 8):
        x = _randn(m, 256, dtype=torch.bfloat16, gen=_gen(m))
        fp8_linear(x, w, s, None, input_scale)  # compile outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fp8_linear(x, w, s, None, input_scale)
        x.copy_(_randn(m, 256, dtype=torch.bfloat16, gen=_gen(m + 10)))
        graph.replay()
        ref = (fp8_linear_ref(x.float().cpu(), w.cpu(), s.cpu(), None, input_scale.cpu())
               if m > 1 else fp8_gemv_ref(x.float().cpu(), w.cpu(), s.cpu()))
        _assert_close(out.float().cpu(), ref, 1e-2)


@CUDA
def test_fp8_scaled_mm_keeps_a_float32_model_in_float32():
    """float32 activations: the reference's product to float32 rounding. Row-wise scaling
    would round the output to bf16 (~2e-3 here), which the next layer's FP8 quantization
    amplifies (test_gpu_fp8's float32 engine: prompt logprobs 0.08 apart)."""
    from sgl.kernels.fp8 import fp8_linear_ref, fp8_scaled_mm
    w, s = _fp8_weight(256, 512, seed=5)
    x = _randn(64, 512, dtype=torch.float32, gen=_gen(5), scale=0.5)
    out = fp8_scaled_mm(x, w, s, None, None)
    assert out.dtype == torch.float32
    _assert_close(out.cpu(), fp8_linear_ref(x.cpu(), w.cpu(), s.cpu()), 1e-5)


# ---- KV store and attention over an FP8 pool ---------------------------------------------------

@FP8_KV
@pytest.mark.parametrize("num_tokens,hkv,head_dim", [(1, 8, 128), (200, 8, 128), (37, 3, 64)])
def test_store_kv_fp8(kv_dtype, num_tokens, hkv, head_dim):
    from sgl.kernels.triton.kv_store import store_kv
    num_slots = 4 * num_tokens + 8
    k_buf = torch.zeros((num_slots, hkv, head_dim), dtype=kv_dtype, device=DEVICE)
    v_buf = torch.zeros_like(k_buf)
    loc = (torch.randperm(num_slots - 1, generator=_gen(1))[:num_tokens] + 1).to(DEVICE)
    kv = _randn(num_tokens, 3 * hkv * head_dim, gen=_gen(num_tokens), scale=20.0)
    k = kv[:, :hkv * head_dim].view(num_tokens, hkv, head_dim)  # strided, as in the model
    v = kv[:, hkv * head_dim:2 * hkv * head_dim].contiguous()
    store_kv(k_buf, v_buf, loc, k, v, 0.05, 0.003)  # some values saturate
    ref_k, ref_v = k_buf.cpu().clone(), v_buf.cpu().clone()
    store_kv_ref(ref_k, ref_v, loc.cpu(), k.cpu(), v.cpu(), 0.05, 0.003)
    _same_fp8(k_buf, ref_k)
    _same_fp8(v_buf, ref_v)


# Sliding window and soft-cap (issue #20) over an FP8 pool: the K scale must be folded into the
# scores before they are capped (stored K is value / k_scale, ~50x the value here).
WINDOW_CAP = [(0, 0.0), (16, 2.0)]


def _fp8_pool(k_buf: torch.Tensor, v_buf: torch.Tensor, kv_dtype: torch.dtype, k_scale: float,
              v_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return to_pool(k_buf, kv_dtype, k_scale), to_pool(v_buf, kv_dtype, v_scale)


@FP8_KV
@pytest.mark.parametrize("seq_lens,hq,hkv,head_dim", [([1], 32, 8, 128), ([65, 1, 129], 32, 8, 128),
                                                      ([40, 3], 8, 2, 8),
                                                      pytest.param([4095, 17], 9, 3, 64, marks=BIG)])
@pytest.mark.parametrize("max_splits", [1, 3])
@pytest.mark.parametrize("window,cap", WINDOW_CAP)
def test_decode_attention_fp8_pool(kv_dtype, seq_lens, hq, hkv, head_dim, max_splits, window, cap):
    from sgl.kernels.attention.torch_ref import decode_attention_ref
    from sgl.kernels.triton.decode_attention import decode_attention
    bs, k_scale, v_scale = len(seq_lens), 0.01, 0.02
    k_f, v_f, req_to_token, rows = _paged_setup(seq_lens, hkv, head_dim, ATTN_DTYPE, seed=bs)
    k_buf, v_buf = _fp8_pool(k_f, v_f, kv_dtype, k_scale, v_scale)
    q = _randn(bs, hq, head_dim, dtype=ATTN_DTYPE, gen=_gen(7))
    out = decode_attention(q, k_buf, v_buf, req_to_token, rows, torch.tensor(seq_lens, device=DEVICE),
                           head_dim ** -0.5, out=_poisoned((bs, hq, head_dim), ATTN_DTYPE),
                           max_splits=max_splits, k_scale=k_scale, v_scale=v_scale,
                           sliding_window=window, logit_cap=cap)
    ref = decode_attention_ref(q.float(), k_buf, v_buf, req_to_token, rows, seq_lens,
                               head_dim ** -0.5, k_scale=k_scale, v_scale=v_scale,
                               sliding_window=window, logit_cap=cap)
    _assert_close(out, ref, BF16_TOL)  # the same FP8 values on both sides: bf16's error only


@FP8_KV
@pytest.mark.parametrize("prefix_lens,extend_lens,hq,hkv,head_dim,tree",
                         [([0], [130], 9, 3, 64, False), ([5, 0, 70], [3, 64, 129], 32, 8, 128, False),
                          ([9, 0], [5, 33], 8, 2, 8, False), ([70, 0, 3], [7, 9, 2], 9, 3, 64, True)])
@pytest.mark.parametrize("window,cap", WINDOW_CAP)
def test_extend_attention_fp8_pool(kv_dtype, prefix_lens, extend_lens, hq, hkv, head_dim, tree,
                                   window, cap):
    from sgl.kernels.attention.torch_ref import extend_attention_ref
    from sgl.kernels.triton.extend_attention import extend_attention
    k_scale, v_scale, bs = 0.02, 0.01, len(prefix_lens)
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    k_f, v_f, req_to_token, rows = _paged_setup(seq_lens, hkv, head_dim, ATTN_DTYPE, seed=bs + 3)
    k_buf, v_buf = _fp8_pool(k_f, v_f, kv_dtype, k_scale, v_scale)
    num_tokens = sum(extend_lens)
    q = _randn(num_tokens, hq, head_dim, dtype=ATTN_DTYPE, gen=_gen(bs))
    tree_mask = None
    if tree:  # the speculative verify layout (compact (bs, N, N) mask)
        n = max(extend_lens)
        tree_mask = torch.tril(torch.ones(n, n, dtype=torch.bool)).repeat(bs, 1, 1)
        tree_mask[:, 3:, 1] = False  # a branch
    to_dev = lambda x: torch.tensor(x, device=DEVICE)
    out = extend_attention(q, k_buf, v_buf, req_to_token, rows, to_dev(prefix_lens),
                           to_dev(extend_lens), head_dim ** -0.5, max_extend_len=max(extend_lens),
                           out=_poisoned((num_tokens, hq, head_dim), ATTN_DTYPE), k_scale=k_scale,
                           v_scale=v_scale, sliding_window=window, logit_cap=cap,
                           tree_mask=tree_mask.to(DEVICE) if tree else None)
    ref = extend_attention_ref(q.float(), k_buf, v_buf, req_to_token, rows, prefix_lens,
                               extend_lens, head_dim ** -0.5, tree_mask=tree_mask,
                               k_scale=k_scale, v_scale=v_scale, sliding_window=window,
                               logit_cap=cap)
    _assert_close(out, ref, BF16_TOL)


@FP8_KV
@pytest.mark.parametrize("prefix_lens,extend_lens", [([0, 17, 300], [40, 1, 129]),
                                                     ([5, 200, 1000, 1], [1, 1, 1, 1])])
def test_triton_backend_fp8_pool_matches_torch_native(kv_dtype, prefix_lens, extend_lens):
    """Both backends store into an FP8 pool and attend over it: the same stored bytes, the same
    attention up to bf16 rounding, and close to the 16-bit pool's attention."""
    from sgl.runtime.cache.memory_pool import MHATokenToKVPool
    hq, hkv, head_dim, scales = 32, 8, 128, [0.02, 0.05]
    outs, pools = {}, {}
    for name, fp8 in (("triton", True), ("torch_native", True), ("triton", False)):
        batch = _backend_batch(prefix_lens, extend_lens, hkv, head_dim, seed=0)
        if fp8:
            pool = MHATokenToKVPool(batch.kv_pool.size, hkv, head_dim, 2, kv_dtype, DEVICE)
            pool.set_scales(scales, scales[::-1])
            for layer in range(2):
                k_scale, v_scale = pool.get_scales(layer)
                pool.k_buffer[layer].copy_(to_pool(batch.kv_pool.k_buffer[layer], kv_dtype, k_scale))
                pool.v_buffer[layer].copy_(to_pool(batch.kv_pool.v_buffer[layer], kv_dtype, v_scale))
            batch.kv_pool = pool
        outs[name, fp8] = _backend_layers(name, batch, hq, hkv, head_dim)
        pools[name, fp8] = batch.kv_pool
    for layer_id in range(2):
        _assert_close(outs["triton", True][layer_id].float(), outs["torch_native", True][layer_id].float(),
                      BF16_TOL)
        _assert_close(outs["triton", True][layer_id].float(), outs["triton", False][layer_id].float(),
                      FP8_TOL[kv_dtype])
        for which in ("k_buffer", "v_buffer"):
            _same_fp8(getattr(pools["triton", True], which)[layer_id],
                      getattr(pools["torch_native", True], which)[layer_id])
