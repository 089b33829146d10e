"""The pure-torch references against independent formulas and transformers' own rope code."""
from __future__ import annotations

import math

import pytest
import torch
from sgl.kernels.activation import gelu_tanh_and_mul, silu_and_mul
from sgl.kernels.attention.torch_ref import decode_attention_ref, extend_attention_ref
from sgl.kernels.norm import fused_add_rms_norm, rms_norm
from sgl.kernels.rotary import apply_rotary, compute_cos_sin_cache, compute_inv_freq
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) + 0.1).to(dtype)  # shifted: never all zero


# ---- norm / activation ----------------------------------------------------------------------

def _rms_formula(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    x64 = x.double()
    return x64 / torch.sqrt((x64 * x64).mean(-1, keepdim=True) + eps) * w.double()


@pytest.mark.parametrize("shape", [(1, 8), (5, 64), (3, 7, 96)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_rms_norm(shape, dtype, tol):
    x, w = _randn(*shape, dtype=dtype), _randn(shape[-1], seed=1, dtype=dtype)
    out = rms_norm(x, w, 1e-6)
    assert out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out.double(), _rms_formula(x, w, 1e-6), atol=tol, rtol=tol)


def test_fused_add_rms_norm():
    x, r, w = _randn(6, 32), _randn(6, 32, seed=1), _randn(32, seed=2)
    normed, new_residual = fused_add_rms_norm(x, r, w, 1e-5)
    torch.testing.assert_close(new_residual, x + r)
    torch.testing.assert_close(normed.double(), _rms_formula(x + r, w, 1e-5), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(3, 16), (2, 5, 64)])
def test_silu_and_mul(shape):
    x = _randn(*shape)
    d = shape[-1] // 2
    gate, up = x[..., :d].double(), x[..., d:].double()
    expected = gate * torch.sigmoid(gate) * up
    torch.testing.assert_close(silu_and_mul(x).double(), expected, atol=1e-6, rtol=1e-6)


def test_gelu_tanh_and_mul():
    x = _randn(4, 64) * 3
    gate, up = x[:, :32].double(), x[:, 32:].double()
    expected = 0.5 * gate * (1 + torch.tanh(math.sqrt(2 / math.pi) * (gate + 0.044715 * gate ** 3))) * up
    torch.testing.assert_close(gelu_tanh_and_mul(x).double(), expected, atol=1e-5, rtol=1e-5)


# ---- rotary ---------------------------------------------------------------------------------

def _hf_config(head_dim: int, theta: float, rope_scaling: dict | None) -> LlamaConfig:
    return LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim,
                       max_position_embeddings=4096, rope_theta=theta, rope_scaling=rope_scaling)


ROPE_CASES = [
    (64, 10000.0, None),
    (32, 10000.0, {"rope_type": "linear", "factor": 4.0}),
    (128, 500000.0, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 1024}),
]


@pytest.mark.parametrize("head_dim,theta,rope_scaling", ROPE_CASES)
def test_inv_freq_matches_transformers(head_dim, theta, rope_scaling):
    ours = compute_inv_freq(head_dim, theta, rope_scaling)
    if rope_scaling is None:
        expected = 1.0 / theta ** (torch.arange(0, head_dim, 2).double() / head_dim)
    else:
        config = _hf_config(head_dim, theta, rope_scaling)
        expected, _ = ROPE_INIT_FUNCTIONS[rope_scaling["rope_type"]](config)
    torch.testing.assert_close(ours.double(), expected.double(), atol=0, rtol=1e-6)


def test_llama3_scaling_changes_only_low_frequencies():
    scaling = ROPE_CASES[2][2]
    plain, scaled = compute_inv_freq(128, 500000.0), compute_inv_freq(128, 500000.0, scaling)
    assert torch.equal(plain[:4], scaled[:4])  # high frequencies untouched
    torch.testing.assert_close(scaled[-4:], plain[-4:] / 8.0)  # lowest slowed by the factor


@pytest.mark.parametrize("head_dim,theta,rope_scaling", ROPE_CASES)
def test_apply_rotary_matches_transformers(head_dim, theta, rope_scaling):
    num_tokens, num_q_heads, num_kv_heads = 7, 4, 2
    q, k = _randn(num_tokens, num_q_heads, head_dim), _randn(num_tokens, num_kv_heads, head_dim, seed=1)
    positions = torch.tensor([0, 3, 1, 900, 17, 4095, 2])
    inv_freq = compute_inv_freq(head_dim, theta, rope_scaling)
    q_out, k_out = apply_rotary(q, k, positions, compute_cos_sin_cache(inv_freq, 4096))
    freqs = positions[:, None].double() * inv_freq.double()[None]  # (T, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)
    q_hf, k_hf = apply_rotary_pos_emb(q.double().transpose(0, 1)[None], k.double().transpose(0, 1)[None],
                                      emb.cos()[None], emb.sin()[None])
    torch.testing.assert_close(q_out.double(), q_hf[0].transpose(0, 1), atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(k_out.double(), k_hf[0].transpose(0, 1), atol=2e-4, rtol=1e-4)


def test_rotary_is_relative_and_partial():
    # Dot products depend only on the position difference; dims past rotary_dim pass through.
    head_dim, rotary_dim = 32, 16
    cache = compute_cos_sin_cache(compute_inv_freq(rotary_dim, 10000.0), 64)
    q, k = _randn(1, 1, head_dim), _randn(1, 1, head_dim, seed=1)
    dots = []
    for shift in (0, 11, 40):
        q_rot, _ = apply_rotary(q, q, torch.tensor([5 + shift]), cache)
        _, k_rot = apply_rotary(k, k, torch.tensor([2 + shift]), cache)
        dots.append((q_rot[..., :rotary_dim] * k_rot[..., :rotary_dim]).sum())
        assert torch.equal(q_rot[..., rotary_dim:], q[..., rotary_dim:])
    torch.testing.assert_close(torch.stack(dots), dots[0].expand(3), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(apply_rotary(q, q, torch.tensor([3]), cache)[0], q)


def test_rotary_rejects_unknown_type():
    with pytest.raises(ValueError, match="unsupported rope_type 'mrope'; supported: .*yarn"):
        compute_inv_freq(64, 10000.0, {"rope_type": "mrope", "factor": 2.0})


# ---- paged attention ------------------------------------------------------------------------

def _dense_masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                  scaling: float) -> torch.Tensor:
    # q: (E, Hq, D), k/v: (S, Hkv, D), mask: (E, S) bool: explicit float64 attention with GQA by
    # head repetition.
    group = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(group, dim=1), v.double().repeat_interleave(group, dim=1)
    scores = torch.einsum("ehd,shd->hes", q.double(), k) * scaling  # (Hq, E, S)
    scores = scores.masked_fill(~mask, -math.inf)
    return torch.einsum("hes,shd->ehd", scores.softmax(-1), v)


def _dense_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix_len: int,
                  scaling: float) -> torch.Tensor:
    mask = torch.ones(q.shape[0], k.shape[0], dtype=torch.bool)
    for j in range(q.shape[0]):
        mask[j, prefix_len + j + 1:] = False
    return _dense_masked(q, k, v, mask, scaling)


def _paged_case(prefix_lens, extend_lens, num_q_heads, num_kv_heads, head_dim, seed=0):
    """Random sequences scattered to scrambled pool slots; every other slot holds large garbage so
    that reading a wrong slot shows."""
    g = torch.Generator().manual_seed(seed)
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    num_slots = sum(seq_lens) + 9
    k_buffer = torch.randn(num_slots, num_kv_heads, head_dim, generator=g) * 50
    v_buffer = torch.randn(num_slots, num_kv_heads, head_dim, generator=g) * 50
    req_to_token = torch.zeros(len(seq_lens) + 3, max(seq_lens) + 4, dtype=torch.int32)
    rows = torch.randperm(req_to_token.shape[0], generator=g)[:len(seq_lens)]
    slots = torch.randperm(num_slots - 1, generator=g) + 1
    seqs, start = [], 0
    for row, seq_len in zip(rows.tolist(), seq_lens):
        seq_slots = slots[start:start + seq_len]
        start += seq_len
        k = torch.randn(seq_len, num_kv_heads, head_dim, generator=g) + 0.1
        v = torch.randn(seq_len, num_kv_heads, head_dim, generator=g) + 0.1
        k_buffer[seq_slots], v_buffer[seq_slots] = k, v
        req_to_token[row, :seq_len] = seq_slots.int()
        seqs.append((k, v))
    q = torch.randn(sum(extend_lens), num_q_heads, head_dim, generator=g) + 0.1
    return q, k_buffer, v_buffer, req_to_token, rows, seqs


@pytest.mark.parametrize("prefix_lens,extend_lens,num_q_heads,num_kv_heads,head_dim", [
    ([0], [5], 2, 2, 8),
    ([0, 5, 3], [4, 1, 6], 8, 2, 16),
    ([7, 0], [2, 9], 6, 1, 32),
])
def test_extend_attention_matches_dense(prefix_lens, extend_lens, num_q_heads, num_kv_heads, head_dim):
    q, k_buffer, v_buffer, req_to_token, rows, seqs = _paged_case(
        prefix_lens, extend_lens, num_q_heads, num_kv_heads, head_dim)
    scaling = head_dim ** -0.5
    out = extend_attention_ref(q, k_buffer, v_buffer, req_to_token, rows,
                               torch.tensor(prefix_lens), torch.tensor(extend_lens), scaling)
    assert out.shape == q.shape
    start = 0
    for (k, v), prefix_len, extend_len in zip(seqs, prefix_lens, extend_lens):
        expected = _dense_causal(q[start:start + extend_len], k, v, prefix_len, scaling)
        torch.testing.assert_close(out[start:start + extend_len].double(), expected, atol=1e-5, rtol=1e-5)
        start += extend_len


def test_decode_attention_matches_dense():
    seq_lens = [1, 6, 13]
    q, k_buffer, v_buffer, req_to_token, rows, seqs = _paged_case(
        [s - 1 for s in seq_lens], [1, 1, 1], 4, 2, 16, seed=3)
    out = decode_attention_ref(q, k_buffer, v_buffer, req_to_token, rows, seq_lens, 0.25)
    for i, ((k, v), seq_len) in enumerate(zip(seqs, seq_lens)):
        expected = _dense_causal(q[i:i + 1], k, v, seq_len - 1, 0.25)
        torch.testing.assert_close(out[i:i + 1].double(), expected, atol=1e-5, rtol=1e-5)


def test_extend_attention_keeps_low_precision_dtype():
    q, k_buffer, v_buffer, req_to_token, rows, seqs = _paged_case([2], [3], 4, 2, 16)
    out = extend_attention_ref(q.bfloat16(), k_buffer.bfloat16(), v_buffer.bfloat16(), req_to_token,
                               rows, [2], [3], 0.25)
    assert out.dtype == torch.bfloat16
    expected = _dense_causal(q, *seqs[0], 2, 0.25)
    torch.testing.assert_close(out.double(), expected, atol=5e-2, rtol=5e-2)


# ---- custom (tree) masks: speculative verification --------------------------------------------

def _tree_mask(prefix_len: int, extend_len: int, g: torch.Generator) -> torch.Tensor:
    """(E, S) bool for a random draft tree: new token j's parent is an earlier new token or the
    root (the prefix); it sees the prefix, its ancestors and itself."""
    mask = torch.zeros(extend_len, prefix_len + extend_len, dtype=torch.bool)
    mask[:, :prefix_len] = True
    for j in range(extend_len):
        parent = int(torch.randint(-1, j, (1,), generator=g))  # -1: the root
        if parent >= 0:
            mask[j] = mask[parent]  # the parent's row: prefix + its ancestors + itself
        mask[j, prefix_len + j] = True
    return mask


def _causal_mask(prefix_len: int, extend_len: int) -> torch.Tensor:
    return torch.ones(extend_len, prefix_len + extend_len, dtype=torch.bool).tril(prefix_len)


def _packed(masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """custom_mask and mask_indptr in SGLang's layout: the row-major blocks back to back."""
    sizes = torch.tensor([0] + [m.numel() for m in masks])
    return torch.cat([m.flatten() for m in masks]), torch.cumsum(sizes, 0)


MASK_CASES = [  # (prefix_lens, extend_lens, num_q_heads, num_kv_heads, head_dim)
    ([0], [5], 2, 2, 8),
    ([0, 5, 3], [9, 1, 6], 8, 2, 16),
    ([7, 0, 12], [4, 8, 9], 6, 1, 32),
]


@pytest.mark.parametrize("prefix_lens,extend_lens,num_q_heads,num_kv_heads,head_dim", MASK_CASES)
@pytest.mark.parametrize("pass_indptr", [True, False])
def test_extend_attention_causal_custom_mask_is_causal(prefix_lens, extend_lens, num_q_heads,
                                                       num_kv_heads, head_dim, pass_indptr):
    q, k_buffer, v_buffer, req_to_token, rows, _ = _paged_case(
        prefix_lens, extend_lens, num_q_heads, num_kv_heads, head_dim, seed=1)
    masks = [_causal_mask(p, e) for p, e in zip(prefix_lens, extend_lens)]
    custom_mask, mask_indptr = _packed(masks)
    args = (q, k_buffer, v_buffer, req_to_token, rows, prefix_lens, extend_lens, head_dim ** -0.5)
    out = extend_attention_ref(*args, custom_mask=custom_mask,
                               mask_indptr=mask_indptr if pass_indptr else None)
    torch.testing.assert_close(out, extend_attention_ref(*args), rtol=0, atol=0)


@pytest.mark.parametrize("prefix_lens,extend_lens,num_q_heads,num_kv_heads,head_dim", MASK_CASES)
def test_extend_attention_tree_mask_matches_dense(prefix_lens, extend_lens, num_q_heads,
                                                  num_kv_heads, head_dim):
    q, k_buffer, v_buffer, req_to_token, rows, seqs = _paged_case(
        prefix_lens, extend_lens, num_q_heads, num_kv_heads, head_dim, seed=2)
    g = torch.Generator().manual_seed(len(prefix_lens))
    masks = [_tree_mask(p, e, g) for p, e in zip(prefix_lens, extend_lens)]
    if max(extend_lens) > 2:  # the trees must differ from causal order, or nothing is tested
        assert any(not torch.equal(m, _causal_mask(p, e))
                   for m, p, e in zip(masks, prefix_lens, extend_lens))
    custom_mask, mask_indptr = _packed(masks)
    scaling = head_dim ** -0.5
    out = extend_attention_ref(q, k_buffer, v_buffer, req_to_token, rows,
                               torch.tensor(prefix_lens), torch.tensor(extend_lens), scaling,
                               custom_mask=custom_mask, mask_indptr=mask_indptr)
    start = 0
    for (k, v), mask, extend_len in zip(seqs, masks, extend_lens):
        expected = _dense_masked(q[start:start + extend_len], k, v, mask, scaling)
        torch.testing.assert_close(out[start:start + extend_len].double(), expected,
                                   atol=1e-5, rtol=1e-5)
        start += extend_len


def _compact(masks: list[torch.Tensor], prefix_lens: list[int], width: int) -> torch.Tensor:
    """The compact layout of full (E, S) tree blocks: (bs, width, width) over the new tokens,
    padded with random bits (entries past each extend must be ignored)."""
    g = torch.Generator().manual_seed(99)
    out = torch.randint(0, 2, (len(masks), width, width), generator=g).bool()
    for i, (mask, p) in enumerate(zip(masks, prefix_lens)):
        e = mask.shape[0]
        out[i, :e, :e] = mask[:, p:]
    return out


@pytest.mark.parametrize("prefix_lens,extend_lens,num_q_heads,num_kv_heads,head_dim", MASK_CASES)
@pytest.mark.parametrize("pad", [0, 3])
def test_compact_tree_mask_equals_full_layout(prefix_lens, extend_lens, num_q_heads,
                                              num_kv_heads, head_dim, pad):
    """A (bs, N, N) tree mask over the new tokens (prefix always visible) gives exactly what the
    same trees give in SGLang's (extend_len x seq_len) layout, and the dense formula."""
    q, k_buffer, v_buffer, req_to_token, rows, seqs = _paged_case(
        prefix_lens, extend_lens, num_q_heads, num_kv_heads, head_dim, seed=3)
    g = torch.Generator().manual_seed(7 + len(prefix_lens))
    masks = [_tree_mask(p, e, g) for p, e in zip(prefix_lens, extend_lens)]
    args = (q, k_buffer, v_buffer, req_to_token, rows, prefix_lens, extend_lens, head_dim ** -0.5)
    tree_mask = _compact(masks, prefix_lens, max(extend_lens) + pad)
    out = extend_attention_ref(*args, tree_mask=tree_mask)
    custom_mask, mask_indptr = _packed(masks)
    torch.testing.assert_close(out, extend_attention_ref(*args, custom_mask=custom_mask,
                                                         mask_indptr=mask_indptr), rtol=0, atol=0)
    start = 0
    for (k, v), mask, extend_len in zip(seqs, masks, extend_lens):
        expected = _dense_masked(q[start:start + extend_len], k, v, mask, head_dim ** -0.5)
        torch.testing.assert_close(out[start:start + extend_len].double(), expected,
                                   atol=1e-5, rtol=1e-5)
        start += extend_len


def test_compact_causal_tree_mask_is_causal():
    """Lower-triangular blocks in the compact layout are plain causal attention."""
    prefix_lens, extend_lens = [4, 0, 9], [5, 3, 1]
    q, k_buffer, v_buffer, req_to_token, rows, _ = _paged_case(prefix_lens, extend_lens, 4, 2, 16, seed=4)
    args = (q, k_buffer, v_buffer, req_to_token, rows, prefix_lens, extend_lens, 0.25)
    tree_mask = torch.ones(3, 5, 5, dtype=torch.bool).tril()
    torch.testing.assert_close(extend_attention_ref(*args, tree_mask=tree_mask),
                               extend_attention_ref(*args), rtol=0, atol=0)
