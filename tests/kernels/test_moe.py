"""Mixture of experts: the torch references against per-token float64 formulas (CPU), and the
Triton router, alignment and grouped GEMM against the references at 1, 64, 256 and 2048 tokens
and several expert counts (GPU; with TRITON_INTERPRET=1 the small cases run on the CPU, and one
small case runs there in CI through a subprocess)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from sgl.kernels.moe import fused_experts_ref, select_experts, select_experts_ref

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NEEDS_TRITON = pytest.mark.skipif(not (torch.cuda.is_available() or INTERPRET),
                                  reason="needs a CUDA GPU or TRITON_INTERPRET=1")
BIG = pytest.mark.skipif(INTERPRET, reason="too slow for the interpreter")
# The interpreter mishandles bf16 matrix products: it checks the kernels in float32.
DTYPE = torch.float32 if INTERPRET else torch.bfloat16


def _weights(num_experts: int, hidden: int, inter: int, seed: int,
             dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w13 = torch.randn(num_experts, 2 * inter, hidden, generator=g) / hidden ** 0.5
    w2 = torch.randn(num_experts, hidden, inter, generator=g) / inter ** 0.5
    return w13.to(DEVICE, dtype), w2.to(DEVICE, dtype)


def _per_token(x, w13, w2, weights, ids) -> torch.Tensor:
    """float64: out[t] = sum_j weights[t, j] * down(silu(gate(x_t)) * up(x_t)) of expert ids[t, j]."""
    x, w13, w2 = x.double(), w13.double(), w2.double()
    inter = w2.shape[2]
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            gate_up = w13[e] @ x[t]
            out[t] += float(weights[t, j]) * (w2[e] @ (F.silu(gate_up[:inter]) * gate_up[inter:]))
    return out


@pytest.mark.parametrize("num_tokens,num_experts,top_k", [(1, 4, 1), (7, 8, 2), (20, 16, 4)])
def test_reference_is_the_per_token_formula(num_tokens, num_experts, top_k):
    g = torch.Generator().manual_seed(num_tokens)
    x = torch.randn(num_tokens, 32, generator=g)
    w13, w2 = _weights(num_experts, 32, 24, seed=1)
    weights, ids = select_experts_ref(torch.randn(num_tokens, num_experts, generator=g), top_k, True)
    out = fused_experts_ref(x, w13.cpu(), w2.cpu(), weights, ids)
    torch.testing.assert_close(out.double(), _per_token(x, w13.cpu(), w2.cpu(), weights, ids),
                               atol=1e-5, rtol=1e-5)


def test_router_rules():
    """Softmax over all experts then top-k; renormalized, that is the softmax over the top-k
    logits alone (Mixtral's formulation); without, the raw probabilities (Qwen, norm_topk_prob
    false)."""
    logits = torch.randn(9, 16, generator=torch.Generator().manual_seed(0)) * 3
    raw, ids = select_experts(logits, 4, renormalize=False)
    normed, ids2 = select_experts(logits, 4, renormalize=True)
    assert torch.equal(ids, ids2) and ids.dtype == torch.int32
    assert torch.equal(ids.long(), logits.topk(4).indices)
    torch.testing.assert_close(raw, torch.softmax(logits, -1).gather(1, ids.long()))
    torch.testing.assert_close(normed, torch.softmax(logits.gather(1, ids.long()), -1))
    assert (raw.sum(-1) < 1).all()
    with pytest.raises(ValueError, match="top_k=17 exceeds the 16 experts"):
        select_experts(logits, 17, True)


# ---- Triton ---------------------------------------------------------------------------------

ROUTER_CASES = [(1, 8, 2), (64, 60, 4), (256, 128, 8), pytest.param(2048, 128, 8, marks=BIG),
                (5, 7, 1)]


@pytest.mark.gpu
@NEEDS_TRITON
@pytest.mark.parametrize("num_tokens,num_experts,top_k", ROUTER_CASES)
def test_triton_router_and_alignment(num_tokens, num_experts, top_k):
    from sgl.kernels.triton import fused_moe
    logits = torch.randn(num_tokens, num_experts, generator=torch.Generator().manual_seed(3))
    logits = logits.to(DEVICE, DTYPE)
    for renormalize in (True, False):
        weights, ids = fused_moe.select_experts(logits, top_k, renormalize)
        ref_weights, _ = select_experts_ref(logits, top_k, renormalize)
        # Equal logits (most rows in bf16 over 60-128 experts) go lowest expert first, an order
        # torch.topk does not promise (on the H100 it differed): the reference is a stable sort.
        ref_ids = torch.sort(logits.float(), dim=-1, descending=True, stable=True).indices[:, :top_k]
        assert torch.equal(ids, ref_ids.to(torch.int32))
        torch.testing.assert_close(weights, ref_weights, atol=1e-6, rtol=1e-5)
    for block_m in (16, 64):
        sorted_ids, expert_ids, num_padded = fused_moe.moe_align_block_size(ids, num_experts, block_m)
        counts = torch.bincount(ids.flatten().long().cpu(), minlength=num_experts)
        assert int(num_padded) == int(((counts + block_m - 1) // block_m * block_m).sum())
        rows = sorted_ids[:int(num_padded)].long().cpu()
        real = rows[rows < ids.numel()]
        assert sorted(real.tolist()) == list(range(ids.numel()))  # every pair exactly once
        row_experts = expert_ids.long().cpu().repeat_interleave(block_m)[:int(num_padded)]
        assert torch.equal(ids.flatten().long().cpu()[real], row_experts[rows < ids.numel()])


GEMM_CASES = [  # (tokens, experts, top_k, hidden, inter)
    (1, 8, 2, 64, 32), (64, 8, 2, 64, 48), (13, 16, 4, 96, 40),
    pytest.param(1, 128, 8, 2048, 768, marks=BIG),    # Qwen3-30B-A3B at decode batch 1
    pytest.param(64, 128, 8, 2048, 768, marks=BIG),
    pytest.param(256, 128, 8, 2048, 768, marks=BIG),
    pytest.param(2048, 128, 8, 2048, 768, marks=BIG),
    pytest.param(256, 60, 4, 2048, 1408, marks=BIG),   # Qwen1.5-MoE-A2.7B
    pytest.param(2048, 8, 2, 4096, 14336 // 4, marks=BIG),  # Mixtral-8x7B at TP 4
]


@pytest.mark.gpu
@NEEDS_TRITON
@pytest.mark.parametrize("num_tokens,num_experts,top_k,hidden,inter", GEMM_CASES)
@pytest.mark.parametrize("config", [None, (16, 32, 32, 2, 4, 2)], ids=["picked", "small-tiles"])
def test_triton_fused_experts(num_tokens, num_experts, top_k, hidden, inter, config):
    from sgl.kernels.triton import fused_moe
    g = torch.Generator().manual_seed(num_tokens + num_experts)
    x = (torch.randn(num_tokens, hidden, generator=g) + 0.1).to(DEVICE, DTYPE)
    w13, w2 = _weights(num_experts, hidden, inter, seed=2, dtype=DTYPE)
    logits = torch.randn(num_tokens, num_experts, generator=g).to(DEVICE)
    weights, ids = select_experts_ref(logits, top_k, True)
    out = fused_moe.fused_experts(x, w13, w2, weights, ids, config=config)
    ref = fused_experts_ref(x.float(), w13.float(), w2.float(), weights, ids)
    assert out.dtype == DTYPE and torch.isfinite(out).all()
    err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    assert err < (1e-5 if DTYPE == torch.float32 else 1.5e-2), err


def test_triton_kernels_under_the_interpreter():
    """CI (CPU): the router, alignment and grouped GEMM run under TRITON_INTERPRET=1 in a fresh
    process (the switch is read when the kernels are defined) and match the references."""
    pytest.importorskip("triton")
    script = textwrap.dedent("""
        import torch
        from sgl.kernels.moe import fused_experts_ref, select_experts_ref
        from sgl.kernels.triton import fused_moe
        g = torch.Generator().manual_seed(0)
        x, logits = torch.randn(11, 32, generator=g), torch.randn(11, 8, generator=g)
        w13, w2 = torch.randn(8, 48, 32, generator=g) / 6, torch.randn(8, 32, 24, generator=g) / 5
        weights, ids = fused_moe.select_experts(logits, 2, True)
        ref_weights, ref_ids = select_experts_ref(logits, 2, True)
        assert torch.equal(ids, ref_ids) and torch.allclose(weights, ref_weights)
        out = fused_moe.fused_experts(x, w13, w2, weights, ids, config=(16, 16, 16, 2, 4, 1))
        ref = fused_experts_ref(x, w13, w2, ref_weights, ref_ids)
        assert (out - ref).abs().max() < 1e-5 and ref.abs().max() > 0.1
        print("ok")
    """)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300, check=False, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_bench_decode_floor_counts_the_active_weights():
    """bench_moe's roofline for a batch-1 decode token of Qwen3-30B-A3B: dense weights, router,
    top_k of 128 experts, LM head (no embedding table), recounted here from the config."""
    from sgl.bench_moe import decode_floor
    h, layers, heads, kv_heads, head_dim, inter, vocab = 2048, 48, 32, 4, 128, 768, 151936
    attention = h * (heads + 2 * kv_heads) * head_dim + heads * head_dim * h + 2 * head_dim
    per_layer = attention + 128 * h + 8 * 3 * inter * h + 2 * h
    expected_gb = 2 * (layers * per_layer + vocab * h + h) / 1e9
    assert f"reads {expected_gb:.2f} GB" in decode_floor()
