"""Every Triton kernel against its torch reference (float32 on upcast inputs), on random inputs
that are never zero, at several shapes; outputs are poisoned with NaN before each run so that an
unwritten element fails. GPU only (`pytest -m gpu`); with TRITON_INTERPRET=1 the small cases also
run on the CPU through Triton's interpreter."""
from __future__ import annotations

import os
import random

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() or INTERPRET), reason="needs a CUDA GPU"),
]
BIG = pytest.mark.skipif(INTERPRET, reason="too slow for the interpreter")
BF16_TOL = 1.5e-2  # ||out - ref|| / ||ref|| for bf16 operands (METHOD.md: 1e-3 .. 1e-2)
# The interpreter mishandles bf16 matrix products; it checks the attention kernels in float16.
ATTN_DTYPE = torch.float16 if INTERPRET else torch.bfloat16


def _randn(*shape: int, dtype: torch.dtype = torch.bfloat16, gen: torch.Generator,
           scale: float = 1.0) -> torch.Tensor:
    x = torch.randn(*shape, generator=gen, device="cpu") * scale + 0.1  # shifted: never all zero
    return x.to(DEVICE, dtype)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _poisoned(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def _assert_close(out: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    assert out.shape == ref.shape, (out.shape, ref.shape)
    num_bad = (~torch.isfinite(out)).sum().item()
    assert num_bad == 0, f"{num_bad} unwritten/NaN elements"
    err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    assert err < tol, f"relative error {err:.2e} >= {tol:.0e}"


# ---- norm / activation / rotary / kv store ----------------------------------------------------

@pytest.mark.parametrize("rows,hidden", [(1, 128), (7, 4096), (33, 5120), (5, 96)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rms_norm(rows, hidden, dtype):
    from sgl.kernels.norm import fused_add_rms_norm_ref, rms_norm_ref
    from sgl.kernels.triton.norm import fused_add_rms_norm, rms_norm
    g = _gen(rows * hidden)
    x, r = _randn(rows, hidden, dtype=dtype, gen=g), _randn(rows, hidden, dtype=dtype, gen=g)
    w = _randn(hidden, dtype=dtype, gen=g)
    out = rms_norm(x, w, 1e-6, out=_poisoned(x.shape, dtype))
    _assert_close(out, rms_norm_ref(x.float(), w.float(), 1e-6), 1e-2)
    normed, new_res = fused_add_rms_norm(x, r, w, 1e-5, out=_poisoned(x.shape, dtype),
                                         residual_out=_poisoned(x.shape, dtype))
    ref_normed, ref_res = fused_add_rms_norm_ref(x.float(), r.float(), w.float(), 1e-5)
    _assert_close(normed, ref_normed, 1e-2)
    _assert_close(new_res, ref_res, 1e-2)


def test_rms_norm_strided_heads():
    """Per-head q/k norm (Qwen3): rows are heads of a strided view of the fused qkv output."""
    from sgl.kernels.norm import rms_norm_ref
    from sgl.kernels.triton.norm import rms_norm
    g = _gen(1)
    qkv = _randn(9, (8 + 2 * 2) * 64, gen=g)
    q = qkv[:, :8 * 64].reshape(9, 8, 64)  # non-contiguous (T, H, D)
    w = _randn(64, gen=g)
    _assert_close(rms_norm(q, w, 1e-6), rms_norm_ref(q.float(), w.float(), 1e-6), 1e-2)


@pytest.mark.parametrize("rows,d", [(1, 14336), (5, 1000), (64, 4096)])
def test_silu_and_mul(rows, d):
    from sgl.kernels.activation import silu_and_mul_ref
    from sgl.kernels.triton.activation import silu_and_mul
    x = _randn(rows, 2 * d, gen=_gen(d), scale=3.0)
    out = silu_and_mul(x, out=_poisoned((rows, d), x.dtype))
    _assert_close(out, silu_and_mul_ref(x.float()), 1e-2)


@pytest.mark.parametrize("rows,d", [(1, 9216), (5, 1000), (64, 2048)])
def test_gelu_tanh_and_mul(rows, d):
    from sgl.kernels.activation import gelu_tanh_and_mul_ref
    from sgl.kernels.triton.activation import gelu_tanh_and_mul
    x = _randn(rows, 2 * d, gen=_gen(d), scale=3.0)
    out = gelu_tanh_and_mul(x, out=_poisoned((rows, d), x.dtype))
    _assert_close(out, gelu_tanh_and_mul_ref(x.float()), 1e-2)


@pytest.mark.parametrize("num_tokens,hq,hkv,head_dim,rotary_dim", [
    (1, 32, 8, 128, 128), (77, 32, 8, 128, 128), (300, 9, 3, 64, 64), (13, 40, 8, 128, 64)])
def test_rotary(num_tokens, hq, hkv, head_dim, rotary_dim):
    from sgl.kernels.rotary import apply_rotary_ref, compute_cos_sin_cache, compute_inv_freq
    from sgl.kernels.triton.rotary import rotary_embedding
    g = _gen(num_tokens)
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    cache = compute_cos_sin_cache(compute_inv_freq(rotary_dim, 500000.0, scaling), 8192).to(DEVICE)
    qkv = _randn(num_tokens, (hq + 2 * hkv) * head_dim, gen=g)
    q = qkv[:, :hq * head_dim].view(num_tokens, hq, head_dim)  # strided views, as in the model
    k = qkv[:, hq * head_dim:(hq + hkv) * head_dim].view(num_tokens, hkv, head_dim)
    positions = torch.randint(0, 8192, (num_tokens,), generator=g).to(DEVICE)
    ref_q, ref_k = apply_rotary_ref(q.float(), k.float(), positions, cache)
    out_q, out_k = rotary_embedding(q, k, positions, cache, inplace=False,
                                    q_out=_poisoned(q.shape, q.dtype),
                                    k_out=_poisoned(k.shape, k.dtype))
    _assert_close(out_q, ref_q, 1e-2)
    _assert_close(out_k, ref_k, 1e-2)
    if rotary_dim == head_dim:  # in place on the strided views; v untouched
        v_before = qkv[:, (hq + hkv) * head_dim:].clone()
        rotary_embedding(q, k, positions, cache, inplace=True)
        torch.testing.assert_close(q, out_q, rtol=0, atol=0)
        torch.testing.assert_close(k, out_k, rtol=0, atol=0)
        torch.testing.assert_close(qkv[:, (hq + hkv) * head_dim:], v_before, rtol=0, atol=0)


@pytest.mark.parametrize("num_tokens,hkv,head_dim", [(1, 8, 128), (200, 8, 128), (37, 3, 64)])
def test_store_kv(num_tokens, hkv, head_dim):
    from sgl.kernels.triton.kv_store import store_kv
    g = _gen(num_tokens)
    num_slots = 4 * num_tokens + 8
    k_buf = _poisoned((num_slots, hkv, head_dim), torch.bfloat16)
    v_buf = _poisoned((num_slots, hkv, head_dim), torch.bfloat16)
    loc = (torch.randperm(num_slots - 1, generator=g)[:num_tokens] + 1).to(DEVICE)
    kv = _randn(num_tokens, 3 * hkv * head_dim, gen=g)
    k = kv[:, :hkv * head_dim].view(num_tokens, hkv, head_dim)  # strided, as in the model
    v = kv[:, hkv * head_dim:2 * hkv * head_dim].float()  # (T, Hkv * D), cast on store
    store_kv(k_buf, v_buf, loc, k, v)
    torch.testing.assert_close(k_buf[loc], k, rtol=0, atol=0)
    expected_v = v.view(num_tokens, hkv, head_dim).bfloat16()
    torch.testing.assert_close(v_buf[loc], expected_v, rtol=0, atol=0)
    untouched = torch.ones(num_slots, dtype=torch.bool, device=DEVICE)
    untouched[loc] = False
    assert torch.isnan(k_buf[untouched]).all() and torch.isnan(v_buf[untouched]).all()


# ---- attention --------------------------------------------------------------------------------

def _paged_setup(seq_lens: list[int], hkv: int, head_dim: int, dtype: torch.dtype, seed: int):
    """A pool whose used slots hold random K/V and whose other slots hold NaN (a read of a wrong
    slot poisons the output), and a scrambled request -> token table."""
    g = _gen(seed)
    bs, total = len(seq_lens), sum(seq_lens)
    num_slots = total + 64
    k_buf = _poisoned((num_slots, hkv, head_dim), dtype)
    v_buf = _poisoned((num_slots, hkv, head_dim), dtype)
    slots = torch.randperm(num_slots - 1, generator=g)[:total] + 1  # slot 0 = padding, never used
    k_buf[slots.to(DEVICE)] = _randn(total, hkv, head_dim, dtype=dtype, gen=g)
    v_buf[slots.to(DEVICE)] = _randn(total, hkv, head_dim, dtype=dtype, gen=g)
    max_reqs, width = bs + 3, max(seq_lens) + 5
    req_to_token = torch.zeros((max_reqs, width), dtype=torch.int32)
    rows = torch.randperm(max_reqs, generator=g)[:bs]
    start = 0
    for row, seq_len in zip(rows.tolist(), seq_lens):
        req_to_token[row, :seq_len] = slots[start:start + seq_len].to(torch.int32)
        start += seq_len
    return k_buf, v_buf, req_to_token.to(DEVICE), rows.to(DEVICE)


def _lens(rng: random.Random, bs: int, lo: int, hi: int) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(bs)]


DECODE_CASES = [  # (seq_lens, Hq, Hkv, D)
    ([1], 32, 8, 128), ([63], 32, 8, 128), ([64], 9, 3, 64), ([65, 1, 129], 32, 8, 128),
    ([40, 3], 8, 2, 8),  # heads narrower than a tl.dot's K (tiny test models): padded to 16
    pytest.param([4096], 32, 8, 128, marks=BIG), pytest.param([4095, 17], 9, 3, 64, marks=BIG),
    pytest.param(_lens(random.Random(0), 64, 1, 4096), 32, 8, 128, marks=BIG),
    pytest.param(_lens(random.Random(1), 33, 1, 2000), 9, 3, 128, marks=BIG),
    pytest.param(_lens(random.Random(2), 17, 1, 300), 8, 8, 64, marks=BIG),
]


@pytest.mark.parametrize("seq_lens,hq,hkv,head_dim", DECODE_CASES)
@pytest.mark.parametrize("max_splits", [None, 1, 3])
def test_decode_attention(seq_lens, hq, hkv, head_dim, max_splits):
    from sgl.kernels.attention.torch_ref import decode_attention_ref
    from sgl.kernels.triton.decode_attention import decode_attention
    bs, dtype = len(seq_lens), ATTN_DTYPE
    k_buf, v_buf, req_to_token, rows = _paged_setup(seq_lens, hkv, head_dim, dtype, seed=bs)
    q = _randn(bs, hq, head_dim, dtype=dtype, gen=_gen(7))
    seq_lens_t = torch.tensor(seq_lens, device=DEVICE)
    scaling = head_dim ** -0.5
    out = decode_attention(q, k_buf, v_buf, req_to_token, rows, seq_lens_t, scaling,
                           out=_poisoned((bs, hq, head_dim), dtype), max_splits=max_splits)
    ref = decode_attention_ref(q.float(), k_buf.float(), v_buf.float(), req_to_token, rows,
                               seq_lens, scaling)
    _assert_close(out, ref, BF16_TOL)


def test_decode_attention_fp16_and_empty_request():
    """float16 pools work; a padded entry with seq_len 0 gets zeros and disturbs nothing."""
    from sgl.kernels.attention.torch_ref import decode_attention_ref
    from sgl.kernels.triton.decode_attention import decode_attention
    k_buf, v_buf, req_to_token, rows = _paged_setup([300, 5], 8, 128, torch.float16, seed=3)
    q = _randn(3, 32, 128, dtype=torch.float16, gen=_gen(3))
    rows = torch.cat([rows, rows[:1]])
    out = decode_attention(q, k_buf, v_buf, req_to_token, rows,
                           torch.tensor([300, 5, 0], device=DEVICE), 128 ** -0.5,
                           out=_poisoned((3, 32, 128), torch.float16), max_splits=4)
    ref = decode_attention_ref(q[:2].float(), k_buf.float(), v_buf.float(), req_to_token,
                               rows[:2], [300, 5], 128 ** -0.5)
    _assert_close(out[:2], ref, 5e-3)
    assert (out[2] == 0).all()


EXTEND_CASES = [  # (prefix_lens, extend_lens, Hq, Hkv, D)
    ([0], [1], 32, 8, 128), ([0], [130], 9, 3, 64), ([5, 0, 70], [3, 64, 129], 32, 8, 128),
    ([200], [1], 8, 8, 64), ([9, 0], [5, 33], 8, 2, 8),
    pytest.param([0], [4096], 32, 8, 128, marks=BIG),
    pytest.param([3000], [1096], 9, 3, 64, marks=BIG),
    pytest.param(_lens(random.Random(3), 8, 0, 2000), _lens(random.Random(4), 8, 1, 700),
                 32, 8, 128, marks=BIG),
    pytest.param(_lens(random.Random(5), 64, 0, 500), _lens(random.Random(6), 64, 1, 64), 9, 3, 128,
                 marks=BIG),
]


@pytest.mark.parametrize("prefix_lens,extend_lens,hq,hkv,head_dim", EXTEND_CASES)
def test_extend_attention(prefix_lens, extend_lens, hq, hkv, head_dim):
    from sgl.kernels.attention.torch_ref import extend_attention_ref
    from sgl.kernels.triton.extend_attention import extend_attention
    dtype, bs = ATTN_DTYPE, len(prefix_lens)
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    k_buf, v_buf, req_to_token, rows = _paged_setup(seq_lens, hkv, head_dim, dtype, seed=bs + 11)
    num_tokens = sum(extend_lens)
    qkv = _randn(num_tokens, (hq + 2 * hkv) * head_dim, dtype=dtype, gen=_gen(bs))
    q = qkv[:, :hq * head_dim].view(num_tokens, hq, head_dim)  # strided view, as in the model
    scaling = head_dim ** -0.5
    to_dev = lambda x: torch.tensor(x, device=DEVICE)
    out = extend_attention(q, k_buf, v_buf, req_to_token, rows, to_dev(prefix_lens),
                           to_dev(extend_lens), scaling, max_extend_len=max(extend_lens),
                           out=_poisoned((num_tokens, hq, head_dim), dtype))
    ref = extend_attention_ref(q.float(), k_buf.float(), v_buf.float(), req_to_token, rows,
                               prefix_lens, extend_lens, scaling)
    _assert_close(out, ref, BF16_TOL)


def _tree_masks(prefix_lens: list[int], extend_lens: list[int], seed: int) -> list[torch.Tensor]:
    """(extend_len, seq_len) bool per request for a random draft tree: each new token's parent is
    an earlier new token or the root; it sees the prefix, its ancestors and itself."""
    rng, masks = random.Random(seed), []
    for prefix_len, extend_len in zip(prefix_lens, extend_lens):
        mask = torch.zeros(extend_len, prefix_len + extend_len, dtype=torch.bool)
        mask[:, :prefix_len] = True
        for j in range(extend_len):
            parent = rng.randint(-1, j - 1)  # -1: the root
            if parent >= 0:
                mask[j] = mask[parent]
            mask[j, prefix_len + j] = True
        masks.append(mask)
    return masks


TREE_MASK_CASES = [  # (prefix_lens, extend_lens, Hq, Hkv, D)
    ([0], [1], 8, 8, 64), ([0, 17, 5], [9, 4, 1], 32, 8, 128),
    ([70, 0, 3, 1], [7, 9, 2, 8], 9, 3, 64), ([130, 64], [9, 6], 12, 4, 128),
    pytest.param(_lens(random.Random(7), 48, 0, 3000), _lens(random.Random(8), 48, 1, 9),
                 32, 8, 128, marks=BIG),
]


@pytest.mark.parametrize("prefix_lens,extend_lens,hq,hkv,head_dim", TREE_MASK_CASES)
@pytest.mark.parametrize("pass_indptr", [True, False])
def test_extend_attention_tree_mask(prefix_lens, extend_lens, hq, hkv, head_dim, pass_indptr):
    from sgl.kernels.attention.torch_ref import extend_attention_ref
    from sgl.kernels.triton.extend_attention import extend_attention
    dtype, bs = ATTN_DTYPE, len(prefix_lens)
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    k_buf, v_buf, req_to_token, rows = _paged_setup(seq_lens, hkv, head_dim, dtype, seed=bs + 21)
    num_tokens = sum(extend_lens)
    q = _randn(num_tokens, hq, head_dim, dtype=dtype, gen=_gen(bs + 1))
    masks = _tree_masks(prefix_lens, extend_lens, seed=bs)
    custom_mask = torch.cat([m.flatten() for m in masks]).to(DEVICE)
    mask_indptr = torch.tensor([0] + [m.numel() for m in masks], device=DEVICE).cumsum(0)
    scaling = head_dim ** -0.5
    to_dev = lambda x: torch.tensor(x, device=DEVICE)
    out = extend_attention(q, k_buf, v_buf, req_to_token, rows, to_dev(prefix_lens),
                           to_dev(extend_lens), scaling, custom_mask=custom_mask,
                           mask_indptr=mask_indptr if pass_indptr else None,
                           out=_poisoned((num_tokens, hq, head_dim), dtype))
    ref = extend_attention_ref(q.float(), k_buf.float(), v_buf.float(), req_to_token, rows,
                               prefix_lens, extend_lens, scaling, custom_mask=custom_mask,
                               mask_indptr=mask_indptr)
    _assert_close(out, ref, BF16_TOL)


def test_extend_attention_custom_mask_small_blocks(monkeypatch):
    """16 x 16 tiles: several query blocks per request and several prefix tiles; a row whose
    first key tiles are all masked before the one key it sees (a child of the root with no
    prefix), a row that sees a later token (any mask is honoured, not only trees), and a row
    that sees no key at all, which must give zeros, not NaN."""
    from sgl.kernels.attention.torch_ref import extend_attention_ref
    from sgl.kernels.triton import extend_attention as mod
    monkeypatch.setattr(mod, "CONFIG_OVERRIDE", (16, 16, 4, 1))
    prefix_lens, extend_lens = [0, 3, 20], [40, 37, 1]
    dtype, hq, hkv, head_dim = ATTN_DTYPE, 4, 2, 64
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    k_buf, v_buf, req_to_token, rows = _paged_setup(seq_lens, hkv, head_dim, dtype, seed=5)
    num_tokens = sum(extend_lens)
    q = _randn(num_tokens, hq, head_dim, dtype=dtype, gen=_gen(6))
    masks = _tree_masks(prefix_lens, extend_lens, seed=9)
    masks[0][30] = False
    masks[0][30, 30] = True  # token 30 sees only itself: key tile 0 is all masked for it
    masks[0][-1] = False  # the last new token of the first request sees no key
    masks[1][0, 3 + 36] = True  # a later query block's token
    custom_mask = torch.cat([m.flatten() for m in masks]).to(DEVICE)
    to_dev = lambda x: torch.tensor(x, device=DEVICE)  # mask_indptr left to the wrapper
    out = mod.extend_attention(q, k_buf, v_buf, req_to_token, rows, to_dev(prefix_lens),
                               to_dev(extend_lens), head_dim ** -0.5, custom_mask=custom_mask,
                               out=_poisoned((num_tokens, hq, head_dim), dtype))
    ref = extend_attention_ref(q.float(), k_buf.float(), v_buf.float(), req_to_token, rows,
                               prefix_lens, extend_lens, head_dim ** -0.5,
                               custom_mask=custom_mask)
    _assert_close(out, ref, BF16_TOL)
    assert (out[extend_lens[0] - 1] == 0).all()


def _compact_tree_masks(prefix_lens: list[int], extend_lens: list[int], width: int,
                        seed: int) -> torch.Tensor:
    """(bs, width, width) bool: each request's random tree over its new tokens (the compact
    layout), padded with random bits that the kernel must ignore."""
    masks = _tree_masks(prefix_lens, extend_lens, seed)
    out = torch.randint(0, 2, (len(masks), width, width), generator=_gen(seed)).bool()
    for i, (mask, p) in enumerate(zip(masks, prefix_lens)):
        out[i, :mask.shape[0], :mask.shape[0]] = mask[:, p:]
    return out


COMPACT_CASES = [  # (prefix_lens, extend_lens, Hq, Hkv, D, N)
    ([0], [1], 8, 8, 64, 1), ([0, 17, 5], [8, 4, 1], 32, 8, 128, 8),
    ([70, 0, 3, 1], [7, 9, 2, 8], 9, 3, 64, 12), ([130, 64], [9, 6], 12, 4, 128, 9),
    ([40, 3], [5, 2], 8, 2, 8, 6),
    pytest.param(_lens(random.Random(9), 48, 0, 3000), _lens(random.Random(10), 48, 1, 8),
                 32, 8, 128, 8, marks=BIG),
]


@pytest.mark.parametrize("prefix_lens,extend_lens,hq,hkv,head_dim,width", COMPACT_CASES)
@pytest.mark.parametrize("padded", [False, True])
def test_extend_attention_compact_tree_mask(prefix_lens, extend_lens, hq, hkv, head_dim, width,
                                            padded):
    """The (bs, N, N) tree mask against the reference, packed (q_start the cumsum) and in the
    verify graph's padded layout: request i's rows start at i * N, rows past its extend and two
    extra requests with extend 0 are padding that must stay unwritten."""
    from sgl.kernels.attention.torch_ref import extend_attention_ref
    from sgl.kernels.triton.extend_attention import extend_attention
    dtype, bs = ATTN_DTYPE, len(prefix_lens)
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    k_buf, v_buf, req_to_token, rows = _paged_setup(seq_lens, hkv, head_dim, dtype, seed=bs + 31)
    num_tokens = sum(extend_lens)
    q = _randn(num_tokens, hq, head_dim, dtype=dtype, gen=_gen(bs + 2))
    tree_mask = _compact_tree_masks(prefix_lens, extend_lens, width, seed=bs + 3)
    ref = extend_attention_ref(q.float(), k_buf.float(), v_buf.float(), req_to_token, rows,
                               prefix_lens, extend_lens, head_dim ** -0.5, tree_mask=tree_mask)
    to_dev = lambda x: torch.tensor(x, device=DEVICE)
    if not padded:
        out = extend_attention(q, k_buf, v_buf, req_to_token, rows, to_dev(prefix_lens),
                               to_dev(extend_lens), head_dim ** -0.5, max_extend_len=max(extend_lens),
                               tree_mask=tree_mask.to(DEVICE),
                               out=_poisoned((num_tokens, hq, head_dim), dtype))
        _assert_close(out, ref, BF16_TOL)
        return
    real = torch.tensor([i * width + j for i, e in enumerate(extend_lens) for j in range(e)])
    q_pad = _randn((bs + 2) * width, hq, head_dim, dtype=dtype, gen=_gen(0))
    q_pad[real.to(DEVICE)] = q
    pad_mask = torch.cat([tree_mask, torch.ones(2, width, width, dtype=torch.bool)])
    out = extend_attention(q_pad, k_buf, v_buf, req_to_token, torch.cat([rows, rows[:1], rows[:1]]),
                           to_dev(prefix_lens + [0, 0]), to_dev(extend_lens + [0, 0]),
                           head_dim ** -0.5, q_start=torch.arange(bs + 2, device=DEVICE) * width,
                           max_extend_len=width, tree_mask=pad_mask.to(DEVICE),
                           out=_poisoned(tuple(q_pad.shape), dtype))
    _assert_close(out[real.to(DEVICE)], ref, BF16_TOL)
    unwritten = torch.ones(out.shape[0], dtype=torch.bool)
    unwritten[real] = False
    assert torch.isnan(out[unwritten.to(DEVICE)]).all()


def test_extend_attention_compact_tree_mask_small_blocks(monkeypatch):
    """16 x 16 tiles: several query blocks per request and several prefix tiles under the
    compact layout, a row that sees only its prefix, and one that sees nothing (zeros)."""
    from sgl.kernels.attention.torch_ref import extend_attention_ref
    from sgl.kernels.triton import extend_attention as mod
    monkeypatch.setattr(mod, "CONFIG_OVERRIDE", (16, 16, 4, 1))
    prefix_lens, extend_lens, width = [0, 3, 50], [40, 37, 20], 40
    dtype, hq, hkv, head_dim = ATTN_DTYPE, 4, 2, 64
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    k_buf, v_buf, req_to_token, rows = _paged_setup(seq_lens, hkv, head_dim, dtype, seed=6)
    num_tokens = sum(extend_lens)
    q = _randn(num_tokens, hq, head_dim, dtype=dtype, gen=_gen(8))
    tree_mask = _compact_tree_masks(prefix_lens, extend_lens, width, seed=11)
    tree_mask[0, 39] = False  # no prefix: sees no key at all
    tree_mask[2, 17] = False  # sees its prefix alone
    tree_mask[1, 2, 30] = True  # a later query block's token
    to_dev = lambda x: torch.tensor(x, device=DEVICE)
    out = mod.extend_attention(q, k_buf, v_buf, req_to_token, rows, to_dev(prefix_lens),
                               to_dev(extend_lens), head_dim ** -0.5, tree_mask=tree_mask.to(DEVICE),
                               out=_poisoned((num_tokens, hq, head_dim), dtype))
    ref = extend_attention_ref(q.float(), k_buf.float(), v_buf.float(), req_to_token, rows,
                               prefix_lens, extend_lens, head_dim ** -0.5, tree_mask=tree_mask)
    _assert_close(out, ref, BF16_TOL)
    assert (out[extend_lens[0] - 1] == 0).all()


# ---- the backend ------------------------------------------------------------------------------

def _backend_batch(prefix_lens: list[int], extend_lens: list[int], hkv: int, head_dim: int,
                   seed: int):
    """A ForwardBatch over a real pool: prefixes already stored, new tokens' slots allocated."""
    from sgl.runtime.cache.memory_pool import MHATokenToKVPool, ReqTable, ReqToTokenPool
    from sgl.runtime.executor.forward_batch import ForwardBatch
    g = _gen(seed)
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    pool = MHATokenToKVPool(sum(seq_lens) + 32, hkv, head_dim, 2, ATTN_DTYPE, DEVICE)
    r2t = ReqToTokenPool(len(seq_lens) + 2, max(seq_lens) + 8, DEVICE)
    table = ReqTable(r2t.max_reqs, r2t.max_context_len)
    slots = (torch.randperm(pool.size, generator=g)[:sum(seq_lens)] + 1).split(seq_lens)
    rows, locs = [], []
    for layer in range(2):
        pool.k_buffer[layer].copy_(_randn(*pool.k_buffer[layer].shape, dtype=ATTN_DTYPE, gen=g))
        pool.v_buffer[layer].copy_(_randn(*pool.v_buffer[layer].shape, dtype=ATTN_DTYPE, gen=g))
    for s, p in zip(slots, prefix_lens):
        rows.append(table.alloc())
        table.write(rows[-1], 0, s)
        locs += s[p:].tolist()
    r2t.apply(table.flush())  # every request's whole row: its prefix and its new tokens' slots
    positions = [p + j for p, e in zip(prefix_lens, extend_lens) for j in range(e)]
    batch = ForwardBatch.build([1] * len(positions), positions, locs, rows, prefix_lens,
                               extend_lens, [0]).to(torch.device(DEVICE))
    batch.req_to_token, batch.kv_pool = r2t.req_to_token, pool
    return batch


def _backend_layers(name: str, batch, hq: int, hkv: int, head_dim: int) -> list[torch.Tensor]:
    """Two attention layers of random q/k/v through backend `name` over the batch's pool."""
    from sgl.runtime.executor.attention import get_attention_backend
    from sgl.runtime.layers.attention import RadixAttention
    backend = batch.attn_backend = get_attention_backend(name)()
    backend.init_forward_metadata(batch)
    g, layer_outs = _gen(1), []
    for layer_id in range(2):
        layer = RadixAttention(hq, head_dim, head_dim ** -0.5, hkv, layer_id)
        qkv = _randn(batch.num_tokens, (hq + 2 * hkv) * head_dim, dtype=ATTN_DTYPE, gen=g)
        q, k, v = qkv.split([hq * head_dim, hkv * head_dim, hkv * head_dim], dim=-1)
        layer_outs.append(backend.forward(q, k, v.contiguous(), layer, batch))
    return layer_outs


@pytest.mark.parametrize("prefix_lens,extend_lens", [([0, 17, 300], [40, 1, 129]),
                                                     ([5, 200, 1000, 1], [1, 1, 1, 1])])
def test_triton_backend_matches_torch_native(prefix_lens, extend_lens):
    hq, hkv, head_dim = 32, 8, 128
    outs, pools = [], []
    for name in ("triton", "torch_native"):
        batch = _backend_batch(prefix_lens, extend_lens, hkv, head_dim, seed=0)
        outs.append(_backend_layers(name, batch, hq, hkv, head_dim))
        pools.append(batch.kv_pool)
    for out, ref in zip(*outs):
        _assert_close(out, ref, BF16_TOL)
    for layer_id in range(2):
        torch.testing.assert_close(pools[0].k_buffer[layer_id], pools[1].k_buffer[layer_id])
        torch.testing.assert_close(pools[0].v_buffer[layer_id], pools[1].v_buffer[layer_id])


@pytest.mark.skipif(INTERPRET or not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_triton_backend_decode_cuda_graph():
    """Capture one decode layer over static buffers (as a graph runner would), replay it with
    other rows, lengths and slots, and check each replay against the reference."""
    from sgl.kernels.attention.torch_ref import decode_attention_ref
    from sgl.runtime.cache.memory_pool import MHATokenToKVPool
    from sgl.runtime.executor.attention.triton_backend import TritonBackend
    from sgl.runtime.executor.forward_batch import ForwardBatch, ForwardMode
    from sgl.runtime.layers.attention import RadixAttention
    hq, hkv, head_dim, max_bs, bs, width = 32, 8, 128, 16, 5, 4096
    pool = MHATokenToKVPool(6 * width, hkv, head_dim, 1, torch.bfloat16, DEVICE)
    g = _gen(5)
    pool.k_buffer[0].copy_(_randn(*pool.k_buffer[0].shape, gen=g))
    pool.v_buffer[0].copy_(_randn(*pool.v_buffer[0].shape, gen=g))
    req_to_token = torch.zeros((max_bs + 1, width), dtype=torch.int32, device=DEVICE)
    static = {name: torch.zeros(max_bs, dtype=torch.int64, device=DEVICE)
              for name in ("req_pool_indices", "seq_lens", "out_cache_loc")}
    static_qkv = torch.zeros(max_bs, (hq + 2 * hkv) * head_dim, dtype=torch.bfloat16, device=DEVICE)
    backend = TritonBackend()
    backend.init_cuda_graph_state(max_bs, hq, hkv, head_dim, DEVICE)
    sliced = {name: t[:bs] for name, t in static.items()}
    batch = ForwardBatch(
        forward_mode=ForwardMode.DECODE, batch_size=bs, input_ids=sliced["seq_lens"],
        positions=sliced["seq_lens"], prefix_lens=sliced["seq_lens"],
        extend_lens=sliced["seq_lens"], logits_indices=sliced["seq_lens"], **sliced,
        req_to_token=req_to_token, kv_pool=pool, attn_backend=backend)
    layer = RadixAttention(hq, head_dim, head_dim ** -0.5, hkv, 0)

    def fill(lens: list[int], seed: int) -> None:
        g = _gen(seed)
        rows = torch.randperm(max_bs + 1, generator=g)[:bs]
        slots = (torch.randperm(pool.size, generator=g)[:sum(lens)] + 1).split(lens)
        for row, s in zip(rows.tolist(), slots):
            req_to_token[row, :len(s)] = s.to(DEVICE, torch.int32)
        static["req_pool_indices"][:bs] = rows.to(DEVICE)
        static["seq_lens"][:bs] = torch.tensor(lens, device=DEVICE)
        static["out_cache_loc"][:bs] = torch.stack([s[-1] for s in slots]).to(DEVICE)
        static_qkv[:bs] = _randn(bs, static_qkv.shape[1], gen=g)

    def run() -> torch.Tensor:
        q, k, v = static_qkv[:bs].split([hq * head_dim, hkv * head_dim, hkv * head_dim], dim=-1)
        return backend.forward(q, k, v.contiguous(), layer, batch)

    fill([100, 2000, 7, 512, 64], seed=0)
    backend.init_forward_metadata(batch)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()  # compiles outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = run()
    for seed, lens in ((1, [100, 2000, 7, 512, 64]), (2, [4096, 1, 40, 1000, 129])):
        fill(lens, seed)
        static_out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        k_buf, v_buf = pool.get_kv(0)
        q = static_qkv[:bs, :hq * head_dim].view(bs, hq, head_dim)
        ref = decode_attention_ref(q.float(), k_buf.float(), v_buf.float(), req_to_token,
                                   static["req_pool_indices"][:bs], lens, head_dim ** -0.5)
        _assert_close(static_out.view(bs, hq, head_dim), ref, BF16_TOL)
        new_k = static_qkv[:bs, hq * head_dim:(hq + hkv) * head_dim].view(bs, hkv, head_dim)
        torch.testing.assert_close(k_buf[static["out_cache_loc"][:bs]], new_k, rtol=0, atol=0)
