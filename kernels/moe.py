"""Mixture of experts: top-k routing and the expert MLPs of every token.

    topk_weights, topk_ids = select_experts(router_logits, top_k, renormalize)
    out = fused_experts(x, w13, w2, topk_weights, topk_ids)

Each token's output is sum_j topk_weights[t, j] * down_e(silu(gate_e(x_t)) * up_e(x_t)) over its
top_k experts e = topk_ids[t, j]; w13 (E, 2 * I, H) holds cat[gate, up] of every expert, w2
(E, H, I) its down projection (I: this tensor-parallel rank's slice of the intermediate size).

On CUDA tensors both run the Triton kernels of `sgl.kernels.triton.fused_moe` (the experts as a
grouped GEMM over the tokens sorted by expert); elsewhere the references below, which are the
CPU path and the kernels' test oracle. The reference loops over the experts the batch uses, as
transformers does; it is also the "per-expert loop in torch" baseline of `python -m sgl.bench_moe`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sgl.kernels.dispatch import use_triton


def select_experts(router_logits: torch.Tensor, top_k: int,
                   renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits (T, E) -> (topk_weights (T, top_k) float32, topk_ids (T, top_k) int32):
    softmax over all experts in float32, the top_k largest, rescaled to sum to 1 when
    `renormalize` (Mixtral always; Qwen-MoE when the config's norm_topk_prob says so)."""
    if top_k > router_logits.shape[-1]:
        raise ValueError(f"top_k={top_k} exceeds the {router_logits.shape[-1]} experts")
    if use_triton(router_logits) and not top_k & (top_k - 1):  # the kernel's top_k: a power of 2
        from sgl.kernels.triton import fused_moe
        return fused_moe.select_experts(router_logits, top_k, renormalize)
    return select_experts_ref(router_logits, top_k, renormalize)


def select_experts_ref(router_logits: torch.Tensor, top_k: int,
                       renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.softmax(router_logits.float(), dim=-1)  # (T, E)
    weights, ids = torch.topk(probs, top_k, dim=-1)  # (T, top_k)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids.to(torch.int32)


def check_experts(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                  topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> None:
    """Raise on shapes or dtypes that do not fit together (both paths check the same)."""
    if x.dim() != 2 or w13.dim() != 3 or w2.dim() != 3:
        raise ValueError("x (T, H), w13 (E, 2 * I, H), w2 (E, H, I) expected, got "
                         f"{tuple(x.shape)}, {tuple(w13.shape)}, {tuple(w2.shape)}")
    num_experts, two_inter, hidden = w13.shape
    if hidden != x.shape[1] or w2.shape != (num_experts, hidden, two_inter // 2) or two_inter % 2:
        raise ValueError(f"w13 {tuple(w13.shape)} and w2 {tuple(w2.shape)} do not fit x "
                         f"{tuple(x.shape)}: w13 (E, 2 * I, H), w2 (E, H, I)")
    if topk_ids.shape != topk_weights.shape or topk_ids.shape[0] != x.shape[0]:
        raise ValueError(f"topk_ids {tuple(topk_ids.shape)} and topk_weights "
                         f"{tuple(topk_weights.shape)} must both be (T, top_k), T = {x.shape[0]}")
    if w13.dtype != x.dtype or w2.dtype != x.dtype:
        raise ValueError(f"x {x.dtype}, w13 {w13.dtype}, w2 {w2.dtype}: one dtype expected")


def fused_experts(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                  topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
    """x (T, H) -> (T, H) in x's dtype: the routed experts' weighted sum for every token."""
    check_experts(x, w13, w2, topk_weights, topk_ids)
    if use_triton(x):
        from sgl.kernels.triton import fused_moe
        return fused_moe.fused_experts(x, w13, w2, topk_weights, topk_ids)
    return fused_experts_ref(x, w13, w2, topk_weights, topk_ids)


def fused_experts_ref(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                      topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)  # (T, H)
    inter = w2.shape[2]
    for expert in topk_ids.unique().tolist():
        tokens, slots = torch.where(topk_ids == expert)  # the (token, k) pairs routed here
        gate_up = F.linear(x[tokens], w13[expert])  # (n, 2 * I)
        hidden = F.silu(gate_up[:, :inter].float()) * gate_up[:, inter:].float()
        down = F.linear(hidden.to(x.dtype), w2[expert]).float()  # (n, H)
        out.index_add_(0, tokens, down * topk_weights[tokens, slots, None].float())
    return out.to(x.dtype)
