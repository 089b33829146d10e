"""Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B): Qwen3's attention (per-head q/k RMSNorm) with a
sparse MoE block (softmax top-k, renormalized when `norm_topk_prob`, no shared expert) on the
sparse layers and the dense MLP on `mlp_only_layers`."""
from __future__ import annotations

from sgl.runtime.models.moe_common import qwen_moe_mlp
from sgl.runtime.models.qwen3 import Qwen3ForCausalLM


class Qwen3MoeForCausalLM(Qwen3ForCausalLM):
    make_mlp = staticmethod(qwen_moe_mlp)
    supports_fp8 = False  # FusedMoE holds 16/32-bit experts only
