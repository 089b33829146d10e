"""What the MoE configs (Qwen2-MoE, Qwen3-MoE, Mixtral) say about their sparse layers."""
from __future__ import annotations

from sgl.runtime.layers.moe import SparseMoeBlock
from sgl.runtime.models.llama import dense_mlp
from torch import nn
from transformers import PretrainedConfig


def num_experts(config: PretrainedConfig) -> int:
    return getattr(config, "num_experts", None) or config.num_local_experts


def is_sparse_layer(config: PretrainedConfig, layer_id: int) -> bool:
    """Qwen-MoE: every `decoder_sparse_step`-th layer not in `mlp_only_layers` (Mixtral: all)."""
    step = getattr(config, "decoder_sparse_step", None) or 1
    return (num_experts(config) > 0 and layer_id not in (getattr(config, "mlp_only_layers", None) or [])
            and (layer_id + 1) % step == 0)


def sparse_block(config: PretrainedConfig, intermediate_size: int, renormalize: bool,
                 tp_rank: int, tp_size: int, shared_intermediate_size: int = 0) -> SparseMoeBlock:
    return SparseMoeBlock(config.hidden_size, num_experts(config), config.num_experts_per_tok,
                          intermediate_size, renormalize, tp_rank, tp_size,
                          shared_intermediate_size)


def qwen_moe_mlp(config: PretrainedConfig, layer_id: int, options: object, tp_rank: int,
                 tp_size: int) -> nn.Module:
    """Qwen2-/Qwen3-MoE layer MLPs: the sparse block (with Qwen2-MoE's shared expert) on sparse
    layers, the dense MLP on the others."""
    if not is_sparse_layer(config, layer_id):
        return dense_mlp(config, layer_id, options, tp_rank, tp_size)
    return sparse_block(config, config.moe_intermediate_size, bool(config.norm_topk_prob), tp_rank,
                        tp_size, getattr(config, "shared_expert_intermediate_size", 0) or 0)
