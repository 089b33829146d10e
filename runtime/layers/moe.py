"""Mixture-of-experts layers. Tensor parallelism splits every expert as the dense MLP is split:
each rank holds the rank's slice of every expert's intermediate dim (rows of gate and up,
columns of down), routes every token itself (the router is replicated), and the ranks' partial
outputs meet in one all-reduce per block, shared expert included.

Checkpoint layouts a weight loader takes (shard ids from runtime/models/weights.py):
  - one tensor per expert and projection (HF's usual layout; Mixtral's w1/w3/w2):
    shard id (expert, "gate" | "up" | "down");
  - one projection of all experts stacked, (E, I, H) or (E, H, I) (GGUF; transformers 5's
    down_proj): shard id (None, kind);
  - gate|up of all experts stacked, (E, 2 * I, H), or down, (E, H, I) (transformers 5's
    in-memory layout, our dummy checkpoints): shard id None.
"""
from __future__ import annotations

import torch
from sgl.kernels.moe import fused_experts, select_experts
from sgl.runtime.layers.lazy_tensor import Loaded
from sgl.runtime.layers.linear import ReplicatedLinear, ShardId, divide, tp_all_reduce
from sgl.runtime.layers.mlp import GatedMLP
from torch import nn


class FusedMoE(nn.Module):
    def __init__(self, num_experts: int, top_k: int, hidden_size: int, intermediate_size: int,
                 renormalize: bool, tp_rank: int = 0, tp_size: int = 1,
                 params_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.num_experts, self.top_k, self.renormalize = num_experts, top_k, renormalize
        self.tp_rank = tp_rank
        self.inter = inter = divide(intermediate_size, tp_size)  # this rank's slice
        dtype = params_dtype or torch.get_default_dtype()
        self.w13_weight = nn.Parameter(torch.empty(num_experts, 2 * inter, hidden_size, dtype=dtype),
                                       requires_grad=False)  # (E, 2 * I / tp, H): gate | up
        self.w2_weight = nn.Parameter(torch.empty(num_experts, hidden_size, inter, dtype=dtype),
                                      requires_grad=False)  # (E, H, I / tp)
        for param, kinds in ((self.w13_weight, ("gate", "up")), (self.w2_weight, ("down",))):
            param.weight_loader = self.weight_loader
            # What a per-expert checkpoint must provide (a stacked one provides shard None).
            param.expected_shards = [(e, kind) for e in range(num_experts) for kind in kinds]

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id: ShardId) -> None:
        inter, offset = self.inter, self.tp_rank * self.inter
        if shard_id is None:  # all experts stacked
            self._check(loaded.shape[0] == self.num_experts, param, loaded)
            if param is self.w2_weight:
                self._copy(param.data, loaded.narrow(2, offset, inter))
                return
            full_inter = loaded.shape[1] // 2
            self._copy(param.data[:, :inter], loaded.narrow(1, offset, inter))
            self._copy(param.data[:, inter:], loaded.narrow(1, full_inter + offset, inter))
            return
        expert, kind = shard_id
        dst = param.data if expert is None else param.data[expert]
        lead = 1 if expert is None else 0  # a stacked tensor has the experts first
        if kind == "down":
            self._copy(dst, loaded.narrow(lead + 1, offset, inter))
        else:
            rows = slice(0, inter) if kind == "gate" else slice(inter, 2 * inter)
            self._copy(dst[..., rows, :], loaded.narrow(lead, offset, inter))

    @staticmethod
    def _check(ok: bool, param: torch.Tensor, loaded: Loaded) -> None:
        if not ok:
            raise ValueError(f"expert tensor {tuple(loaded.shape)} does not fit {tuple(param.shape)}")

    @staticmethod
    def _copy(dst: torch.Tensor, src: torch.Tensor) -> None:
        if dst.shape != src.shape:
            raise ValueError(f"shape mismatch: expert slice {tuple(dst.shape)} vs checkpoint "
                             f"{tuple(src.shape)}")
        dst.copy_(src)

    def forward(self, x: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
        """x (T, H), router_logits (T, E) -> this rank's partial sum (T, H) of the experts."""
        topk_weights, topk_ids = select_experts(router_logits, self.top_k, self.renormalize)
        return fused_experts(x, self.w13_weight, self.w2_weight, topk_weights, topk_ids)


class SparseMoeBlock(nn.Module):
    """Router (`gate`) + routed `experts`, plus, where the model has one (Qwen2-MoE), a
    `shared_expert` every token goes through, scaled by sigmoid(`shared_expert_gate`(x)).
    Parameter names are the checkpoint's (mlp.gate, mlp.experts, mlp.shared_expert, ...)."""

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, intermediate_size: int,
                 renormalize: bool, tp_rank: int = 0, tp_size: int = 1,
                 shared_intermediate_size: int = 0) -> None:
        super().__init__()
        self.tp_size = tp_size
        self.gate = ReplicatedLinear(hidden_size, num_experts)
        self.experts = FusedMoE(num_experts, top_k, hidden_size, intermediate_size, renormalize,
                                tp_rank, tp_size)
        self.shared_expert = self.shared_expert_gate = None
        if shared_intermediate_size:
            self.shared_expert = GatedMLP(hidden_size, shared_intermediate_size, False, tp_rank,
                                          tp_size, reduce_results=False)
            self.shared_expert_gate = ReplicatedLinear(hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.experts(x, self.gate(x))  # (T, H), this rank's partial sum
        if self.shared_expert is not None:
            # The gate is the same on every rank, so scaling each rank's partial sum by it scales
            # the total.
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return tp_all_reduce(out, self.tp_size)
