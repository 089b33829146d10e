"""Phi-3 / Phi-3.5 / Phi-4-mini: the Llama layer stack whose checkpoint already fuses q|k|v
(`qkv_proj`) and gate|up (`gate_up_proj`); partial rotary and LongRoPE come from the config. The
fused tensors (and an FP8 checkpoint's per-channel scales) are cut into the pieces our
tensor-parallel loaders take."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from sgl.runtime.layers.lazy_tensor import Loaded
from sgl.runtime.models.llama import LlamaForCausalLM, get_head_dim


class Phi3ForCausalLM(LlamaForCausalLM):
    def _checkpoint_names(self, weights: Iterable[tuple[str, Loaded]]) -> Iterable[tuple[str, torch.Tensor]]:
        config = self.config
        head_dim = get_head_dim(config)
        q_size, kv_size = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
        for name, tensor in super()._checkpoint_names(weights):
            if ".qkv_proj." in name:
                pieces = [("q_proj", 0, q_size), ("k_proj", q_size, kv_size),
                          ("v_proj", q_size + kv_size, kv_size)]
            elif ".gate_up_proj." in name:
                inter = config.intermediate_size
                pieces = [("gate_proj", 0, inter), ("up_proj", inter, inter)]
            else:
                yield name, tensor
                continue
            fused = name.split(".")[-2]
            for piece, start, size in pieces:
                yield name.replace(fused, piece), _rows(tensor, start, size)


def _rows(tensor: Loaded, start: int, size: int) -> Loaded:
    # An FP8 checkpoint's per-tensor weight_scale / input_scale covers every piece of the fused
    # tensor; weights, biases and per-channel scales are cut by rows.
    return tensor if tensor.shape.numel() == 1 else tensor.narrow(0, start, size)
