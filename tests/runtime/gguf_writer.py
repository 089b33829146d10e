"""Write a transformers model as a float32 GGUF file the way llama.cpp's converter lays it out
(tensor names, stacked experts, Gemma's 1 + w norms, the llama architecture's Q/K row
permutation, Phi-3's fused tensors and LongRoPE factor tensors), for the GGUF loading tests.
transformers' own GGUF reader checks these files where it knows the architecture."""
from __future__ import annotations

import math

import gguf
import numpy as np
import torch

GGUF_ARCH = {"mixtral": "llama", "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe",
             "gemma2": "gemma2", "gemma3_text": "gemma3", "phi3": "phi3"}
_LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
          "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
          "self_attn.qkv_proj": "attn_qkv", "self_attn.q_norm": "attn_q_norm",
          "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
          "mlp.down_proj": "ffn_down", "mlp.gate_up_proj": "ffn_up", "mlp.gate": "ffn_gate_inp",
          "mlp.shared_expert.gate_proj": "ffn_gate_shexp", "mlp.shared_expert.up_proj": "ffn_up_shexp",
          "mlp.shared_expert.down_proj": "ffn_down_shexp",
          "mlp.shared_expert_gate": "ffn_gate_inp_shexp",
          "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm"}


def _permute(w: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's Q/K permutation: each head's two rotary halves interleaved row by row."""
    return w.reshape(num_heads, 2, w.shape[0] // num_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(model: torch.nn.Module, arch: str) -> dict[str, np.ndarray]:
    config, out = model.config, {}
    gemma = arch.startswith("gemma")
    for name, value in model.state_dict().items():
        w = value.float().numpy()
        if gemma and name.endswith("norm.weight"):
            w = w + 1.0
        if name == "model.embed_tokens.weight":
            out["token_embd.weight"] = w
        elif name == "model.norm.weight":
            out["output_norm.weight"] = w
        elif name == "lm_head.weight":
            if not config.tie_word_embeddings:
                out["output.weight"] = w
        else:
            out.update(_layer_tensor(name, w, arch, config))
    return out


def _layer_tensor(name: str, w: np.ndarray, arch: str, config) -> dict[str, np.ndarray]:
    _, _, layer, rest = name.split(".", 3)
    piece, suffix = rest.rsplit(".", 1) if rest.endswith((".weight", ".bias")) else (rest, "weight")
    blk = f"blk.{layer}."
    if piece == "mlp.experts.gate_up_proj":  # (E, 2I, H): stacked gate | up
        gate, up = np.split(w, 2, axis=1)
        return {blk + "ffn_gate_exps.weight": gate, blk + "ffn_up_exps.weight": up}
    if piece == "mlp.experts.down_proj":
        return {blk + "ffn_down_exps.weight": w}
    if piece == "post_attention_layernorm":
        return {blk + ("post_attention_norm" if arch.startswith("gemma") else "ffn_norm") + ".weight": w}
    if piece == "mlp.shared_expert_gate":
        w = w.reshape(-1)  # llama.cpp keeps it as a vector
    if arch == "llama" and piece == "self_attn.q_proj":
        w = _permute(w, config.num_attention_heads)
    if arch == "llama" and piece == "self_attn.k_proj":
        w = _permute(w, config.num_key_value_heads)
    return {blk + _LAYER[piece] + "." + suffix: w}


def _metadata(writer: gguf.GGUFWriter, config, arch: str) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    u32 = {"block_count": config.num_hidden_layers, "context_length": config.max_position_embeddings,
           "embedding_length": config.hidden_size, "feed_forward_length": config.intermediate_size,
           "attention.head_count": config.num_attention_heads,
           "attention.head_count_kv": config.num_key_value_heads,
           "attention.key_length": head_dim, "attention.value_length": head_dim,
           "vocab_size": config.vocab_size}
    num_experts = getattr(config, "num_experts", None) or getattr(config, "num_local_experts", 0)
    if num_experts:
        u32 |= {"expert_count": num_experts, "expert_used_count": config.num_experts_per_tok,
                "expert_feed_forward_length": getattr(config, "moe_intermediate_size", config.intermediate_size)}
    if getattr(config, "shared_expert_intermediate_size", None):
        u32["expert_shared_feed_forward_length"] = config.shared_expert_intermediate_size
    if getattr(config, "sliding_window", None):
        u32["attention.sliding_window"] = config.sliding_window
    params = config.rope_parameters
    full = params.get("full_attention", params)
    f32 = {"attention.layer_norm_rms_epsilon": config.rms_norm_eps, "rope.freq_base": full["rope_theta"]}
    if arch == "gemma2":
        f32 |= {"attn_logit_softcapping": config.attn_logit_softcapping,
                "final_logit_softcapping": config.final_logit_softcapping}
    if full.get("rope_type") == "linear":
        writer.add_string(f"{arch}.rope.scaling.type", "linear")
        f32["rope.scaling.factor"] = full["factor"]
    if arch == "phi3":
        u32["rope.dimension_count"] = int(head_dim * params.get("partial_rotary_factor", 1.0))
        if params.get("rope_type") == "longrope":
            original = params["original_max_position_embeddings"]
            u32["rope.scaling.original_context_length"] = original
            scale = config.max_position_embeddings / original
            f32["rope.scaling.attn_factor"] = math.sqrt(1 + math.log(scale) / math.log(original))
    for key, value in u32.items():
        writer.add_uint32(f"{arch}.{key}", int(value))
    for key, value in f32.items():
        writer.add_float32(f"{arch}.{key}", float(value))


def write_gguf(model: torch.nn.Module, path: str) -> None:
    config = model.config
    arch = GGUF_ARCH[config.model_type]
    writer = gguf.GGUFWriter(path, arch)
    _metadata(writer, config, arch)
    tensors = _tensors(model, arch)
    params = config.rope_parameters
    if arch == "phi3" and params.get("rope_type") == "longrope":
        tensors["rope_factors_long.weight"] = np.asarray(params["long_factor"], dtype=np.float32)
        tensors["rope_factors_short.weight"] = np.asarray(params["short_factor"], dtype=np.float32)
    for name, w in tensors.items():
        writer.add_tensor(name, np.ascontiguousarray(w, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
