"""Qwen3: the Llama layer stack with per-head RMSNorm on q and k before rotary; head_dim is set
in the config independently of hidden_size / num_heads."""
from __future__ import annotations

from sgl.runtime.models.llama import LayerOptions, LlamaForCausalLM
from transformers import PretrainedConfig


class Qwen3ForCausalLM(LlamaForCausalLM):
    @classmethod
    def layer_options(cls, config: PretrainedConfig) -> LayerOptions:
        attention_bias = bool(getattr(config, "attention_bias", False))
        return LayerOptions(qkv_bias=attention_bias, o_bias=attention_bias, qk_norm=True)
