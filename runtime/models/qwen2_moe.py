"""Qwen2-MoE (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B): Qwen2's attention (q/k/v biases) with a sparse
MoE block whose shared expert every token also goes through, scaled by a sigmoid gate."""
from __future__ import annotations

from sgl.runtime.models.llama import LayerOptions
from sgl.runtime.models.moe_common import qwen_moe_mlp
from sgl.runtime.models.qwen2 import Qwen2ForCausalLM
from transformers import PretrainedConfig


class Qwen2MoeForCausalLM(Qwen2ForCausalLM):
    make_mlp = staticmethod(qwen_moe_mlp)
    supports_fp8 = False  # FusedMoE holds 16/32-bit experts only

    @classmethod
    def layer_options(cls, config: PretrainedConfig) -> LayerOptions:
        return LayerOptions(qkv_bias=bool(getattr(config, "qkv_bias", True)))
