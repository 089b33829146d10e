"""Sliding-window attention and logit soft-capping (Mistral, Gemma 2/3, Phi-3): the torch
reference against an explicit float64 formula on CPU, and the Triton extend/decode kernels
against the reference (GPU, or TRITON_INTERPRET=1 on the CPU for the small cases)."""
from __future__ import annotations

import math

import pytest
import torch
from sgl.kernels.attention.torch_ref import decode_attention_ref, extend_attention_ref

from tests.kernels.test_refs import _paged_case
from tests.kernels.test_triton_kernels import (
    ATTN_DTYPE,
    BF16_TOL,
    BIG,
    DEVICE,
    INTERPRET,
    _assert_close,
    _gen,
    _paged_setup,
    _poisoned,
    _randn,
)

NEEDS_TRITON = pytest.mark.skipif(not (torch.cuda.is_available() or INTERPRET),
                                  reason="needs a CUDA GPU or TRITON_INTERPRET=1")


def _dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix_len: int, scaling: float,
           window: int, cap: float) -> torch.Tensor:
    """float64 attention of new tokens at positions prefix_len + j over keys 0..S-1: causal,
    keys at positions <= p - window hidden (window > 0), scores soft-capped (cap > 0)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(group, 1), v.double().repeat_interleave(group, 1)
    scores = torch.einsum("ehd,shd->hes", q.double(), k) * scaling  # (Hq, E, S)
    if cap:
        scores = cap * torch.tanh(scores / cap)
    query_pos = torch.arange(q.shape[0])[:, None] + prefix_len
    key_pos = torch.arange(k.shape[0])[None, :]
    visible = key_pos <= query_pos
    if window:
        visible &= key_pos > query_pos - window
    scores = scores.masked_fill(~visible, -math.inf)
    return torch.einsum("hes,shd->ehd", scores.softmax(-1), v)


@pytest.mark.parametrize("window,cap", [(3, 0.0), (0, 2.0), (5, 1.5), (1, 0.0), (100, 0.0)])
def test_reference_window_and_softcap_match_formula(window, cap):
    prefix_lens, extend_lens = [0, 6, 11], [9, 1, 4]
    q, k_buffer, v_buffer, req_to_token, rows, seqs = _paged_case(prefix_lens, extend_lens, 4, 2, 16,
                                                                  seed=5)
    q = q * 3  # scores well past the cap, so that capping changes them
    out = extend_attention_ref(q, k_buffer, v_buffer, req_to_token, rows, prefix_lens, extend_lens,
                               0.25, sliding_window=window, logit_cap=cap)
    plain = extend_attention_ref(q, k_buffer, v_buffer, req_to_token, rows, prefix_lens,
                                 extend_lens, 0.25)
    if window < 15:
        assert not torch.allclose(out, plain, atol=1e-3)  # the window or the cap mattered
    start = 0
    for (k, v), prefix_len, extend_len in zip(seqs, prefix_lens, extend_lens):
        expected = _dense(q[start:start + extend_len], k, v, prefix_len, 0.25, window, cap)
        torch.testing.assert_close(out[start:start + extend_len].double(), expected,
                                   atol=1e-5, rtol=1e-5)
        start += extend_len


def test_decode_reference_window_is_the_last_keys():
    seq_lens = [1, 6, 13]
    q, k_buffer, v_buffer, req_to_token, rows, seqs = _paged_case(
        [s - 1 for s in seq_lens], [1, 1, 1], 4, 2, 16, seed=3)
    out = decode_attention_ref(q, k_buffer, v_buffer, req_to_token, rows, seq_lens, 0.25,
                               sliding_window=4, logit_cap=3.0)
    for i, ((k, v), seq_len) in enumerate(zip(seqs, seq_lens)):
        expected = _dense(q[i:i + 1], k, v, seq_len - 1, 0.25, 4, 3.0)
        torch.testing.assert_close(out[i:i + 1].double(), expected, atol=1e-5, rtol=1e-5)


# ---- Triton ---------------------------------------------------------------------------------

EXTEND_CASES = [  # (prefix_lens, extend_lens, Hq, Hkv, D, window, cap)
    ([0], [130], 8, 2, 64, 16, 0.0),        # windows inside one query block and across blocks
    ([70, 0, 5], [9, 64, 129], 8, 2, 64, 40, 0.0),
    ([9, 0], [5, 33], 8, 2, 8, 7, 50.0),     # tiny heads, window + soft-cap (Gemma 2)
    ([200], [1], 8, 8, 64, 64, 30.0),        # a decode-sized extend far past its window
    ([0, 3], [20, 70], 4, 1, 32, 200, 5.0),  # a window longer than every sequence
    pytest.param([3000, 0], [1096, 4096], 32, 8, 128, 4096, 50.0, marks=BIG),
    pytest.param([5000], [300], 16, 8, 256, 1024, 50.0, marks=BIG),  # Gemma 2's head size
]


@pytest.mark.gpu
@NEEDS_TRITON
@pytest.mark.parametrize("prefix_lens,extend_lens,hq,hkv,head_dim,window,cap", EXTEND_CASES)
@pytest.mark.parametrize("small_blocks", [False, True])
def test_triton_extend_window_softcap(prefix_lens, extend_lens, hq, hkv, head_dim, window, cap,
                                      small_blocks, monkeypatch):
    from sgl.kernels.triton import extend_attention as module
    if small_blocks:  # several query blocks per request: windows start mid-block, tiles skip
        monkeypatch.setattr(module, "CONFIG_OVERRIDE", (16, 16, 4, 1))
    dtype, bs = ATTN_DTYPE, len(prefix_lens)
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    k_buf, v_buf, req_to_token, rows = _paged_setup(seq_lens, hkv, head_dim, dtype, seed=bs + 5)
    num_tokens = sum(extend_lens)
    q = _randn(num_tokens, hq, head_dim, dtype=dtype, gen=_gen(bs), scale=3.0)
    to_dev = lambda x: torch.tensor(x, device=DEVICE)
    scaling = head_dim ** -0.5
    out = module.extend_attention(q, k_buf, v_buf, req_to_token, rows, to_dev(prefix_lens),
                                  to_dev(extend_lens), scaling, max_extend_len=max(extend_lens),
                                  out=_poisoned((num_tokens, hq, head_dim), dtype),
                                  sliding_window=window, logit_cap=cap)
    ref = extend_attention_ref(q.float(), k_buf.float(), v_buf.float(), req_to_token, rows,
                               prefix_lens, extend_lens, scaling, sliding_window=window,
                               logit_cap=cap)
    _assert_close(out, ref, BF16_TOL)


DECODE_CASES = [  # (seq_lens, Hq, Hkv, D, window, cap)
    ([1, 63, 64, 65, 300], 8, 2, 64, 64, 0.0),
    ([40, 3, 129], 8, 2, 8, 16, 50.0),
    ([500], 4, 4, 32, 1, 0.0),  # a window of one: the token itself
    pytest.param([4096, 17, 9000], 32, 8, 128, 4096, 50.0, marks=BIG),
]


@pytest.mark.gpu
@NEEDS_TRITON
@pytest.mark.parametrize("seq_lens,hq,hkv,head_dim,window,cap", DECODE_CASES)
@pytest.mark.parametrize("max_splits", [None, 1, 3])
def test_triton_decode_window_softcap(seq_lens, hq, hkv, head_dim, window, cap, max_splits):
    from sgl.kernels.triton.decode_attention import decode_attention
    bs, dtype = len(seq_lens), ATTN_DTYPE
    k_buf, v_buf, req_to_token, rows = _paged_setup(seq_lens, hkv, head_dim, dtype, seed=bs + 1)
    q = _randn(bs, hq, head_dim, dtype=dtype, gen=_gen(9), scale=3.0)
    scaling = head_dim ** -0.5
    out = decode_attention(q, k_buf, v_buf, req_to_token, rows, torch.tensor(seq_lens, device=DEVICE),
                           scaling, out=_poisoned((bs, hq, head_dim), dtype), max_splits=max_splits,
                           sliding_window=window, logit_cap=cap)
    ref = decode_attention_ref(q.float(), k_buf.float(), v_buf.float(), req_to_token, rows,
                               seq_lens, scaling, sliding_window=window, logit_cap=cap)
    _assert_close(out, ref, BF16_TOL)
