"""Qwen2: the Llama layer stack with biases on q/k/v (never on o_proj or the MLP)."""
from __future__ import annotations

from sgl.runtime.models.llama import LayerOptions, LlamaForCausalLM
from transformers import PretrainedConfig


class Qwen2ForCausalLM(LlamaForCausalLM):
    @classmethod
    def layer_options(cls, config: PretrainedConfig) -> LayerOptions:
        return LayerOptions(qkv_bias=True)
