"""GGUF metadata -> a transformers config, following llama.cpp's reading of each architecture
(where llama.cpp hard-codes a rule the metadata leaves out, the same rule is written here)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from transformers import AutoConfig, PretrainedConfig

# general.architecture -> (HF model_type, HF architecture). A "llama" file with experts is
# Mixtral (llama.cpp keeps Mixtral under the llama architecture).
GGUF_ARCHITECTURES = {
    "llama": ("llama", "LlamaForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    "qwen2moe": ("qwen2_moe", "Qwen2MoeForCausalLM"),
    "qwen3moe": ("qwen3_moe", "Qwen3MoeForCausalLM"),
    "gemma2": ("gemma2", "Gemma2ForCausalLM"),
    "gemma3": ("gemma3_text", "Gemma3ForCausalLM"),
    "phi3": ("phi3", "Phi3ForCausalLM"),
}
MIXTRAL = ("mixtral", "MixtralForCausalLM")

Meta = Callable[[str, Any], Any]  # (key without "{arch}.", default) -> value


def build_config(arch: str, meta: Meta, tensors: dict[str, np.ndarray], vocab_size: int,
                 tokens: Meta) -> PretrainedConfig:
    """tensors: the file's tensors by GGUF name (shapes and, for a few small ones, values)."""
    model_type, architecture = GGUF_ARCHITECTURES[arch]
    if arch == "llama" and meta("expert_count", 0):
        model_type, architecture = MIXTRAL
    heads = int(meta("attention.head_count", None))
    hidden = int(meta("embedding_length", None))
    kwargs = {
        "architectures": [architecture],
        "hidden_size": hidden,
        "intermediate_size": int(meta("feed_forward_length", 0)),
        "num_hidden_layers": int(meta("block_count", None)),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta("attention.head_count_kv", heads)),
        "head_dim": int(meta("attention.key_length", hidden // heads)),
        "max_position_embeddings": int(meta("context_length", None)),
        "rms_norm_eps": float(meta("attention.layer_norm_rms_epsilon", 1e-6)),
        "vocab_size": vocab_size,
        "tie_word_embeddings": "output.weight" not in tensors,
        "rope_theta": float(meta("rope.freq_base", 10000.0)),
        "bos_token_id": tokens("tokenizer.ggml.bos_token_id", None),
        "eos_token_id": tokens("tokenizer.ggml.eos_token_id", None),
        "pad_token_id": tokens("tokenizer.ggml.padding_token_id", None),
    }
    rope_scaling = _rope_scaling(meta)
    if rope_scaling:
        kwargs["rope_scaling"] = rope_scaling
    for extra in (_moe, _gemma, _phi3):
        kwargs.update(extra(arch, meta, tensors, kwargs))
    return AutoConfig.for_model(model_type, **kwargs)


def _rope_scaling(meta: Meta) -> dict | None:
    # Llama 3 scaling is not described here: it arrives as the `rope_freqs` tensor.
    rope_type = meta("rope.scaling.type", None)
    if rope_type in (None, "none"):
        return None
    scaling = {"rope_type": str(rope_type), "factor": float(meta("rope.scaling.factor", 1.0))}
    original = meta("rope.scaling.original_context_length", None)
    if original is not None:
        scaling["original_max_position_embeddings"] = int(original)
    return scaling


def _moe(arch: str, meta: Meta, tensors: dict, kwargs: dict) -> dict:
    num_experts = int(meta("expert_count", 0))
    if not num_experts:
        return {}
    out = {"num_experts": num_experts, "num_local_experts": num_experts,
           "num_experts_per_tok": int(meta("expert_used_count", None))}
    if arch in ("qwen2moe", "qwen3moe"):
        out["moe_intermediate_size"] = int(meta("expert_feed_forward_length", None))
        # llama.cpp renormalizes the top-k weights for Qwen3-MoE, not for Qwen2-MoE.
        out["norm_topk_prob"] = arch == "qwen3moe"
    if arch == "qwen2moe":
        out["shared_expert_intermediate_size"] = int(meta("expert_shared_feed_forward_length", None))
    if arch == "llama":  # Mixtral: every expert has the dense size
        out["intermediate_size"] = int(meta("expert_feed_forward_length", kwargs["intermediate_size"]))
    return out


def _gemma(arch: str, meta: Meta, tensors: dict, kwargs: dict) -> dict:
    if arch not in ("gemma2", "gemma3"):
        return {}
    head_dim, heads, hidden = kwargs["head_dim"], kwargs["num_attention_heads"], kwargs["hidden_size"]
    # llama.cpp scales by 1 / sqrt(head_dim), except for the 27B models (46 / 62 layers), which
    # scale by 1 / sqrt(hidden / heads): their query_pre_attn_scalar.
    is_27b = kwargs["num_hidden_layers"] == (46 if arch == "gemma2" else 62)
    out = {"query_pre_attn_scalar": hidden // heads if is_27b else head_dim,
           "sliding_window": int(meta("attention.sliding_window", 4096)),
           "hidden_activation": "gelu_pytorch_tanh"}
    if arch == "gemma2":
        out["attn_logit_softcapping"] = float(meta("attn_logit_softcapping", 50.0))
        out["final_logit_softcapping"] = float(meta("final_logit_softcapping", 30.0))
    else:  # five local layers (rope base 10000, unscaled) to one global, as llama.cpp fixes
        out["rope_local_base_freq"] = 10000.0
        out["sliding_window_pattern"] = 6
    return out


def _phi3(arch: str, meta: Meta, tensors: dict, kwargs: dict) -> dict:
    if arch != "phi3":
        return {}
    head_dim = kwargs["head_dim"]
    out = {"partial_rotary_factor": int(meta("rope.dimension_count", head_dim)) / head_dim}
    window = meta("attention.sliding_window", None)
    if window:
        out["sliding_window"] = int(window)
    if "rope_factors_long.weight" in tensors:  # LongRoPE: the factors are tensors here
        original = int(meta("rope.scaling.original_context_length", kwargs["max_position_embeddings"]))
        out["original_max_position_embeddings"] = original
        scaling = {"rope_type": "longrope", "original_max_position_embeddings": original,
                   "long_factor": tensors["rope_factors_long.weight"].tolist(),
                   "short_factor": tensors["rope_factors_short.weight"].tolist()}
        attn_factor = meta("rope.scaling.attn_factor", None)
        if attn_factor is not None:
            scaling["attention_factor"] = float(attn_factor)
        out["rope_scaling"] = scaling
    return out
