"""Single-file GGUF checkpoints (llama.cpp): metadata -> transformers config, tensors dequantized
to float32 and renamed to HF names. Only the llama-family tensors are un-permuted: llama.cpp's
converter interleaves the rotary halves of Q and K rows for its "normal" rope, and Qwen uses the
neox rope, which needs no permutation."""
from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize
from transformers import AutoConfig, PretrainedConfig

Q = GGMLQuantizationType
SUPPORTED_QUANT_TYPES = frozenset({
    Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1,
    Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K,
})

# general.architecture -> (HF model_type, HF architecture)
GGUF_ARCHITECTURES = {
    "llama": ("llama", "LlamaForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
}

# GGUF tensor name (after "blk.N.") -> HF name (after "model.layers.N.")
_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                 "output": "lm_head", "rope_freqs": "rope_freqs"}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")


class GGUFCheckpoint:
    def __init__(self, path: str) -> None:
        self.path = path
        self.reader = GGUFReader(path)
        self.arch = str(self._meta("general.architecture"))
        if self.arch not in GGUF_ARCHITECTURES:
            raise ValueError(f"unsupported GGUF architecture {self.arch!r}; supported: "
                             f"{', '.join(sorted(GGUF_ARCHITECTURES))}")
        self.config = self._build_config()

    @property
    def num_tensors(self) -> int:
        return len(self.reader.tensors)

    def eos_token_ids(self) -> list[int]:
        """eos plus the end-of-turn / end-of-message ids llama.cpp stores separately."""
        keys = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
        ids = [self._meta(key) for key in keys]
        return list(dict.fromkeys(int(i) for i in ids if i is not None))

    def iterate_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, float32 CPU tensor) per GGUF tensor, dequantized one at a time."""
        for tensor in self.reader.tensors:
            name = gguf_to_hf_name(tensor.name)
            weight = dequantize_tensor(tensor.name, tensor.data, tensor.tensor_type)
            if self.arch == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
                weight = unpermute_rotary(weight, self.config.num_attention_heads)
            elif self.arch == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
                weight = unpermute_rotary(weight, self.config.num_key_value_heads)
            yield name, weight

    def _meta(self, key: str, default: Any = None) -> Any:
        field = self.reader.fields.get(key)
        return default if field is None else field.contents()

    def _build_config(self) -> PretrainedConfig:
        arch = self.arch
        model_type, architecture = GGUF_ARCHITECTURES[arch]
        heads = int(self._meta(f"{arch}.attention.head_count"))
        hidden = int(self._meta(f"{arch}.embedding_length"))
        tensor_names = {t.name for t in self.reader.tensors}
        kwargs = {
            "architectures": [architecture],
            "hidden_size": hidden,
            "intermediate_size": int(self._meta(f"{arch}.feed_forward_length")),
            "num_hidden_layers": int(self._meta(f"{arch}.block_count")),
            "num_attention_heads": heads,
            "num_key_value_heads": int(self._meta(f"{arch}.attention.head_count_kv", heads)),
            "head_dim": int(self._meta(f"{arch}.attention.key_length", hidden // heads)),
            "max_position_embeddings": int(self._meta(f"{arch}.context_length")),
            "rms_norm_eps": float(self._meta(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
            "vocab_size": self._vocab_size(),
            "tie_word_embeddings": "output.weight" not in tensor_names,
            "rope_theta": float(self._meta(f"{arch}.rope.freq_base", 10000.0)),
            "bos_token_id": self._meta("tokenizer.ggml.bos_token_id"),
            "eos_token_id": self._meta("tokenizer.ggml.eos_token_id"),
            "pad_token_id": self._meta("tokenizer.ggml.padding_token_id"),
        }
        rope_scaling = self._rope_scaling()
        if rope_scaling:
            kwargs["rope_scaling"] = rope_scaling
        return AutoConfig.for_model(model_type, **kwargs)

    def _vocab_size(self) -> int:
        vocab_size = self._meta(f"{self.arch}.vocab_size")
        if vocab_size is not None:
            return int(vocab_size)
        embed = next(t for t in self.reader.tensors if t.name == "token_embd.weight")
        return int(embed.shape[-1])  # GGUF shapes list the fastest-varying dim first

    def _rope_scaling(self) -> dict | None:
        # Llama 3 scaling is not described here: it arrives as the `rope_freqs` tensor.
        rope_type = self._meta(f"{self.arch}.rope.scaling.type")
        if rope_type in (None, "none"):
            return None
        scaling = {"rope_type": str(rope_type), "factor": float(self._meta(f"{self.arch}.rope.scaling.factor"))}
        original = self._meta(f"{self.arch}.rope.scaling.original_context_length")
        if original is not None:
            scaling["original_max_position_embeddings"] = int(original)
        return scaling


def gguf_to_hf_name(name: str) -> str:
    match = _LAYER_RE.match(name)
    if match:
        layer, kind, suffix = match.groups()
        if kind in _LAYER_NAMES:
            return f"model.layers.{layer}.{_LAYER_NAMES[kind]}.{suffix}"
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
