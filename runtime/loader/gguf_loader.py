"""Single-file GGUF checkpoints (llama.cpp): metadata -> transformers config (gguf_config.py),
tensors dequantized to float32 and renamed to HF names. llama.cpp's converter changed some
tensors, which are changed back: Q and K rows of the llama architecture (Llama, Mixtral) have
their rotary halves interleaved for its "normal" rope (the other architectures use the neox rope,
no permutation); Gemma's norm weights hold 1 + w. Experts arrive stacked, (E, I, H) per
projection, and the fused q|k|v and gate|up of Phi-3 as they are in its HF checkpoint."""
from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize
from sgl.runtime.loader.gguf_config import GGUF_ARCHITECTURES, build_config
from sgl.runtime.loader.gguf_dequant import dequantize_fast
from sgl.runtime.loader.gguf_file import GGUFFile
from transformers import PretrainedConfig

Q = GGMLQuantizationType
SUPPORTED_QUANT_TYPES = frozenset({
    Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1,
    Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K,
})

# GGUF tensor name (after "blk.N.") -> HF name (after "model.layers.N.")
_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_qkv": "self_attn.qkv_proj",
    # MoE: the router, every expert stacked per projection, the shared expert and its gate
    "ffn_gate_inp": "mlp.gate", "ffn_gate_exps": "mlp.experts.gate_proj",
    "ffn_up_exps": "mlp.experts.up_proj", "ffn_down_exps": "mlp.experts.down_proj",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj", "ffn_up_shexp": "mlp.shared_expert.up_proj",
    "ffn_down_shexp": "mlp.shared_expert.down_proj", "ffn_gate_inp_shexp": "mlp.shared_expert_gate",
    # Gemma's norms around the sublayers
    "post_attention_norm": "post_attention_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
}
# Where an architecture names a piece differently.
_ARCH_LAYER_NAMES = {
    "gemma2": {"ffn_norm": "pre_feedforward_layernorm"},
    "gemma3": {"ffn_norm": "pre_feedforward_layernorm"},
    "phi3": {"ffn_up": "mlp.gate_up_proj"},  # gate|up fused, as in the HF checkpoint
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                 "output": "lm_head", "rope_freqs": "rope_freqs"}
# Read into the config (LongRoPE factors), not loaded as weights.
_CONFIG_TENSORS = ("rope_factors_long.weight", "rope_factors_short.weight")
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")


class GGUFCheckpoint:
    def __init__(self, path: str) -> None:
        self.path = path
        self.file = GGUFFile(path)
        self.arch = str(self._meta("general.architecture"))
        if self.arch not in GGUF_ARCHITECTURES:
            raise ValueError(f"unsupported GGUF architecture {self.arch!r}; supported: "
                             f"{', '.join(sorted(GGUF_ARCHITECTURES))}")
        self.config = self._build_config()

    @property
    def num_tensors(self) -> int:
        return len(self.file.tensors)

    def eos_token_ids(self) -> list[int]:
        """eos plus the end-of-turn / end-of-message ids llama.cpp stores separately."""
        keys = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
        ids = [self._meta(key) for key in keys]
        return list(dict.fromkeys(int(i) for i in ids if i is not None))

    def iterate_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, float32 CPU tensor) per GGUF tensor, dequantized one at a time."""
        for tensor in self.file.tensors:
            if tensor.name in _CONFIG_TENSORS:
                continue
            name = gguf_to_hf_name(tensor.name, self.arch)
            weight = dequantize_tensor(tensor.name, tensor.data, tensor.tensor_type)
            yield name, self._undo_conversion(name, weight)

    def _undo_conversion(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        if self.arch == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
            return unpermute_rotary(weight, self.config.num_attention_heads)
        if self.arch == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
            return unpermute_rotary(weight, self.config.num_key_value_heads)
        if self.arch.startswith("gemma") and name.endswith("norm.weight"):
            return weight - 1.0  # llama.cpp stores Gemma's (1 + w)
        if name.endswith("shared_expert_gate.weight"):
            return weight.reshape(1, -1)  # llama.cpp's is a vector; HF's a (1, hidden) linear
        return weight

    def _meta(self, key: str, default: Any = None) -> Any:
        return self.file.fields.get(key, default)

    def _build_config(self) -> PretrainedConfig:
        small = {t.name: np.asarray(t.data) for t in self.file.tensors if t.name in _CONFIG_TENSORS}
        shapes = {t.name: None for t in self.file.tensors} | small
        return build_config(self.arch, lambda key, default: self._meta(f"{self.arch}.{key}", default),
                            shapes, self._vocab_size(), self._meta)

    def _vocab_size(self) -> int:
        vocab_size = self._meta(f"{self.arch}.vocab_size")
        if vocab_size is not None:
            return int(vocab_size)
        embed = next(t for t in self.file.tensors if t.name == "token_embd.weight")
        return int(embed.shape[-1])  # GGUF shapes list the fastest-varying dim first


def gguf_to_hf_name(name: str, arch: str = "llama") -> str:
    match = _LAYER_RE.match(name)
    if match:
        layer, kind, suffix = match.groups()
        names = {**_LAYER_NAMES, **_ARCH_LAYER_NAMES.get(arch, {})}
        if kind in names:
            return f"model.layers.{layer}.{names[kind]}.{suffix}"
    else:
        base, _, suffix = name.rpartition(".")
        if base in _GLOBAL_NAMES:
            return f"{_GLOBAL_NAMES[base]}.{suffix}"
    raise ValueError(f"unknown GGUF tensor {name!r}")


def dequantize_tensor(name: str, data: np.ndarray, quant_type: GGMLQuantizationType) -> torch.Tensor:
    """float32 tensor in HF (row-major, out x in) layout."""
    if quant_type not in SUPPORTED_QUANT_TYPES:
        supported = ", ".join(sorted(q.name for q in SUPPORTED_QUANT_TYPES))
        raise ValueError(f"GGUF tensor {name!r} has unsupported quantization type "
                         f"{quant_type.name}; supported: {supported}")
    fast = dequantize_fast(data, quant_type)
    if fast is not None:
        return fast
    weight = np.ascontiguousarray(dequantize(data, quant_type), dtype=np.float32)
    if not weight.flags.writeable:  # F32 comes back as a view of the read-only memory map
        weight = weight.copy()
    return torch.from_numpy(weight)


def unpermute_rotary(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's permute: within each head, rows (j, i) with i in {0, 1} interleaved back to
    (i, j), i.e. the HF rotate_half layout where the two rotary halves are contiguous."""
    rows = weight.shape[0]
    head_dim = rows // num_heads
    shaped = weight.reshape(num_heads, head_dim // 2, 2, *weight.shape[1:])
    return shaped.transpose(1, 2).reshape(weight.shape).contiguous()
