"""Gemma 2 and Gemma 3 (text): Llama's attention with query_pre_attn_scalar ** -0.5 scaling,
sliding-window attention on the layers `layer_types` marks (every other layer in Gemma 2, five
in six in Gemma 3), GeGLU MLPs, four (1 + weight) RMSNorms a layer (before and after attention
and MLP), embeddings scaled by sqrt(hidden), tied LM head. Gemma 2 soft-caps attention scores
and the final logits; Gemma 3 normalizes q and k per head and gives local (sliding) and global
layers their own rope."""
from __future__ import annotations

import torch
from sgl.runtime.executor.forward_batch import ForwardBatch
from sgl.runtime.layers.embedding import VocabParallelEmbedding
from sgl.runtime.layers.fp8 import Fp8Config
from sgl.runtime.layers.mlp import GatedMLP
from sgl.runtime.layers.norm import GemmaRMSNorm
from sgl.runtime.layers.rotary import RotaryEmbedding, get_rope
from sgl.runtime.models.llama import (
    LayerOptions,
    LlamaAttention,
    LlamaForCausalLM,
    get_head_dim,
    norm_into_residual,
)
from torch import nn
from transformers import PretrainedConfig


class GemmaDecoderLayer(nn.Module):
    def __init__(self, config: PretrainedConfig, layer_id: int, rotary_emb: RotaryEmbedding,
                 options: LayerOptions, tp_rank: int, tp_size: int) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_id, rotary_emb, options, tp_rank, tp_size)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, False, tp_rank, tp_size,
                            config.hidden_activation, quant=options.quant)
        hidden, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(hidden, eps)
        self.post_attention_layernorm = GemmaRMSNorm(hidden, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(hidden, eps)
        self.post_feedforward_layernorm = GemmaRMSNorm(hidden, eps)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor,
                residual: torch.Tensor | None,
                batch: ForwardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        # As in Llama, with the sublayers' outputs normed before they join the residual stream.
        hidden, residual = norm_into_residual(self.input_layernorm, hidden, residual)
        hidden = self.post_attention_layernorm(self.self_attn(positions, hidden, batch))
        hidden, residual = self.pre_feedforward_layernorm(hidden, residual)
        return self.post_feedforward_layernorm(self.mlp(hidden)), residual


class GemmaModel(nn.Module):
    def __init__(self, config: PretrainedConfig, options: LayerOptions, tp_rank: int,
                 tp_size: int) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, tp_rank, tp_size)
        # transformers scales in the weights' dtype: sqrt(hidden) rounded to it.
        self.register_buffer("normalizer", torch.tensor(config.hidden_size ** 0.5), persistent=False)
        layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
        head_dim = get_head_dim(config)
        self.rotary_embs = nn.ModuleDict({kind: get_rope(config, head_dim, kind)
                                          for kind in sorted(set(layer_types))})
        self.layers = nn.ModuleList(
            GemmaDecoderLayer(config, i, self.rotary_embs[kind], options, tp_rank, tp_size)
            for i, kind in enumerate(layer_types))
        self.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = next(iter(self.rotary_embs.values()))  # where llama.cpp's factors go

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                batch: ForwardBatch) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)  # (T, hidden)
        hidden = hidden * self.normalizer.to(hidden.dtype)
        residual = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, batch)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class Gemma2ForCausalLM(LlamaForCausalLM):
    @classmethod
    def layer_options(cls, config: PretrainedConfig) -> LayerOptions:
        bias = bool(getattr(config, "attention_bias", False))
        return LayerOptions(qkv_bias=bias, o_bias=bias, norm=GemmaRMSNorm)

    def build_model(self, config: PretrainedConfig, options: LayerOptions, tp_rank: int,
                    tp_size: int) -> nn.Module:
        return GemmaModel(config, options, tp_rank, tp_size)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, hidden) -> (N, vocab) float32, soft-capped to cap * tanh(logits / cap)."""
        logits = self.head().get_logits(hidden)
        cap = getattr(self.config, "final_logit_softcapping", None)
        return cap * torch.tanh(logits / cap) if cap else logits


class Gemma3ForCausalLM(Gemma2ForCausalLM):
    def __init__(self, config: PretrainedConfig, tp_rank: int = 0, tp_size: int = 1,
                 quant_config: Fp8Config | None = None) -> None:
        if getattr(config, "use_bidirectional_attention", False):
            raise ValueError("Gemma 3 with use_bidirectional_attention (an embedding model) is "
                             "not supported for generation")
        super().__init__(config, tp_rank, tp_size, quant_config)

    @classmethod
    def layer_options(cls, config: PretrainedConfig) -> LayerOptions:
        bias = bool(getattr(config, "attention_bias", False))
        return LayerOptions(qkv_bias=bias, o_bias=bias, qk_norm=True, norm=GemmaRMSNorm)
