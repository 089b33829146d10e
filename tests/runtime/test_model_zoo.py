"""The architectures beyond Llama/Qwen: MoE (Mixtral, Qwen2-MoE, Qwen3-MoE), Gemma 2/3, Phi-3,
sliding windows (Mistral, Qwen2's layer types) and rope scaling (YaRN, LongRoPE). Each tiny
random model, fed through the real KV pool and torch attention backend over a ragged batch with
a cached prefix, against transformers' float32 logits of the same weights (its eager
attention: the reference for sliding windows and soft-capping)."""
from __future__ import annotations

import pytest
import torch
import transformers as tf
from sgl.runtime.loader import load_model

from tests.runtime.test_models import _check_against_hf

TINY = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": False}
MOE = {"moe_intermediate_size": 32, "num_experts": 8, "num_experts_per_tok": 2}
# Windows shorter than the test's 10-token sequences, so that they hide keys.
CONFIGS = {
    "mixtral": lambda: tf.MixtralConfig(**TINY, num_local_experts=8, num_experts_per_tok=2),
    "mixtral_window": lambda: tf.MixtralConfig(**TINY, num_local_experts=4, num_experts_per_tok=1,
                                               sliding_window=4),
    "qwen2_moe": lambda: tf.Qwen2MoeConfig(**TINY, **MOE, shared_expert_intermediate_size=48,
                                           norm_topk_prob=False),
    "qwen3_moe": lambda: tf.Qwen3MoeConfig(**TINY, **MOE, head_dim=32, norm_topk_prob=True),
    "qwen3_moe_sparse_step": lambda: tf.Qwen3MoeConfig(**{**TINY, "num_hidden_layers": 3}, **MOE,
                                                       head_dim=16, decoder_sparse_step=2,
                                                       mlp_only_layers=[2]),
    "mistral_window": lambda: tf.MistralConfig(**TINY, sliding_window=4),
    "qwen2_layer_windows": lambda: tf.Qwen2Config(**{**TINY, "num_hidden_layers": 3},
                                                  use_sliding_window=True, sliding_window=3,
                                                  max_window_layers=1),
    # Llama 3.2 (1B / 3B): tied embeddings, llama3 rope with factor 32 (a 16-token "original"
    # context here, so that the scaling bends the frequencies the test positions use).
    "llama32_tied": lambda: tf.LlamaConfig(**{**TINY, "tie_word_embeddings": True}, head_dim=32,
                                           rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}),
    "llama_yarn": lambda: tf.LlamaConfig(**TINY, rope_scaling={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}),
    "phi3": lambda: tf.Phi3Config(**{**TINY, "num_key_value_heads": 4}, pad_token_id=0),
    "phi3_longrope_partial": lambda: tf.Phi3Config(
        **{**TINY, "num_key_value_heads": 4, "max_position_embeddings": 512}, pad_token_id=0,
        partial_rotary_factor=0.5, original_max_position_embeddings=64,
        rope_scaling={"rope_type": "longrope", "short_factor": [1.0 + i / 8 for i in range(4)],
                      "long_factor": [2.0 + i for i in range(4)]}, sliding_window=5),
    "gemma2": lambda: tf.Gemma2Config(**TINY, head_dim=32, sliding_window=4,
                                      query_pre_attn_scalar=24, attn_logit_softcapping=5.0,
                                      final_logit_softcapping=3.0),
    "gemma3": lambda: tf.Gemma3TextConfig(**{**TINY, "num_hidden_layers": 3}, head_dim=32,
                                          sliding_window=4, sliding_window_pattern=2,
                                          query_pre_attn_scalar=24,
                                          rope_scaling={"rope_type": "linear", "factor": 2.0}),
}


def make_hf_model(config: tf.PretrainedConfig, seed: int = 0) -> torch.nn.Module:
    """A transformers model whose weights are big enough (norms and routers far from their
    defaults) that any wiring mistake moves the logits well past the tolerance."""
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                                attn_implementation="eager")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:  # Gemma's norms scale by 1 + weight: either way far from 1
                param.copy_(1.0 + 0.3 * torch.randn_like(param))
            else:
                param.copy_(0.15 * torch.randn_like(param))
    return model.eval()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_model_matches_transformers(name, tmp_path):
    hf_model = make_hf_model(CONFIGS[name]())
    hf_model.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.architecture == type(hf_model).__name__
    _check_against_hf(loaded, hf_model, atol=1e-4)


def test_expert_slices_recombine_and_both_layouts_load():
    """Two tensor-parallel ranks of FusedMoE hold column slices of every expert: their partial
    outputs add up to the one-rank layer's, loaded from per-expert tensors or from the stacked
    (E, 2I, H) / (E, H, I) layout alike."""
    from sgl.runtime.layers.moe import FusedMoE
    g = torch.Generator().manual_seed(0)
    num_experts, hidden, inter = 4, 16, 12
    gate, up = torch.randn(num_experts, inter, hidden, generator=g), torch.randn(num_experts, inter, hidden, generator=g)
    down = torch.randn(num_experts, hidden, inter, generator=g)
    x, logits = torch.randn(5, hidden, generator=g), torch.randn(5, num_experts, generator=g)

    def layer(rank: int, tp_size: int, stacked: bool) -> FusedMoE:
        moe = FusedMoE(num_experts, 2, hidden, inter, renormalize=True, tp_rank=rank, tp_size=tp_size)
        if stacked:
            moe.weight_loader(moe.w13_weight, torch.cat([gate, up], dim=1), None)
            moe.weight_loader(moe.w2_weight, down, None)
        for e in range(num_experts if not stacked else 0):
            moe.weight_loader(moe.w13_weight, gate[e], (e, "gate"))
            moe.weight_loader(moe.w13_weight, up[e], (e, "up"))
            moe.weight_loader(moe.w2_weight, down[e], (e, "down"))
        return moe

    full = layer(0, 1, stacked=False)(x, logits)
    assert full.abs().max() > 0.5
    for stacked in (False, True):
        halves = layer(0, 2, stacked)(x, logits) + layer(1, 2, stacked)(x, logits)
        torch.testing.assert_close(halves, full, atol=1e-4, rtol=1e-4)


def test_dummy_moe_weights_and_shipped_qwen3_30b_config(tmp_path):
    from sgl.runtime.loader import _load_config, resolve_model_path
    from tests.runtime.test_models import Runner
    config = CONFIGS["qwen2_moe"]()
    config.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), load_format="dummy", seed=3)
    block = loaded.model.model.layers[0].mlp
    assert block.experts.w13_weight.std() > 0.01 and block.shared_expert_gate.weight.std() > 0.01
    (logits,) = Runner(loaded).step({0: [1, 5, 9, 3]})
    assert torch.isfinite(logits).all() and logits.std() > 0
    shipped, _ = _load_config(resolve_model_path("qwen3-30b-a3b-dummy"), "dummy")
    assert (shipped.hidden_size, shipped.num_hidden_layers, shipped.num_experts,
            shipped.num_experts_per_tok, shipped.moe_intermediate_size) == (2048, 48, 128, 8, 768)


def test_unsupported_architecture_and_variant_errors(tmp_path):
    config = tf.Gemma3TextConfig(**TINY, head_dim=16, use_bidirectional_attention=True)
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="use_bidirectional_attention"):
        load_model(str(tmp_path), load_format="dummy")
    config = tf.GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                              architectures=["GPTNeoXForCausalLM"])
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unsupported architecture GPTNeoXForCausalLM; supported: "
                                         ".*Gemma2ForCausalLM.*MixtralForCausalLM.*Phi3ForCausalLM"
                                         ".*Qwen3MoeForCausalLM"):
        load_model(str(tmp_path), load_format="dummy")
