"""Mixtral (8x7B, 8x22B): Llama's attention (Mistral's sliding window where the config sets one)
with a sparse MoE block on every layer: softmax over the experts, top-k, renormalized. The
checkpoint's `block_sparse_moe.experts.N.w1/w3/w2` are the experts' gate/up/down."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from sgl.runtime.models.llama import LayerOptions, LlamaForCausalLM
from sgl.runtime.models.moe_common import sparse_block
from torch import nn
from transformers import PretrainedConfig


class MixtralForCausalLM(LlamaForCausalLM):
    supports_fp8 = False  # FusedMoE holds 16/32-bit experts only

    @staticmethod
    def make_mlp(config: PretrainedConfig, layer_id: int, options: LayerOptions, tp_rank: int,
                 tp_size: int) -> nn.Module:
        return sparse_block(config, config.intermediate_size, True, tp_rank, tp_size)

    def _checkpoint_names(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterable[tuple[str, torch.Tensor]]:
        renamed = ((name.replace(".block_sparse_moe.", ".mlp."), t) for name, t in weights)
        return super()._checkpoint_names(renamed)
