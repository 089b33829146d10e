"""GGUF files of the new architectures (Qwen2/3-MoE, Mixtral, Gemma 2/3, Phi-3 with LongRoPE),
written as llama.cpp lays them out: our loader reads back the model they came from (logits
within 1e-4 over the KV pool), and transformers' GGUF reader agrees that the files hold that
model (it does not know Mixtral's layout, and settings it leaves at defaults, some of which
llama.cpp hard-codes, are passed to it)."""
from __future__ import annotations

import os

import pytest
import torch
import transformers as tf
from sgl.runtime.loader import load_model

from tests.runtime.gguf_writer import write_gguf
from tests.runtime.test_model_zoo import CONFIGS, TINY, make_hf_model
from tests.runtime.test_models import _check_against_hf

# Settings llama.cpp cannot express differ from test_model_zoo's: Gemma scales by 1 / sqrt(head_dim)
# and Gemma 3 has five local layers to a global one.
GGUF_CONFIGS = {
    "qwen3_moe": CONFIGS["qwen3_moe"],
    "qwen2_moe": CONFIGS["qwen2_moe"],
    "mixtral": CONFIGS["mixtral"],
    "phi3_longrope": CONFIGS["phi3_longrope_partial"],
    "gemma2": lambda: tf.Gemma2Config(**{**TINY, "tie_word_embeddings": True}, head_dim=32,
                                      sliding_window=4, query_pre_attn_scalar=32,
                                      attn_logit_softcapping=5.0, final_logit_softcapping=3.0),
    "gemma3": lambda: tf.Gemma3TextConfig(**{**TINY, "num_hidden_layers": 6, "tie_word_embeddings": True},
                                          head_dim=32, sliding_window=4, query_pre_attn_scalar=32,
                                          rope_scaling={"rope_type": "linear", "factor": 2.0}),
}
# What transformers' GGUF reader leaves at its defaults (llama.cpp fixes these in code).
HF_OVERRIDES = {
    "qwen3_moe": lambda c: {"norm_topk_prob": True, "moe_intermediate_size": c.moe_intermediate_size},
    "qwen2_moe": lambda c: {"moe_intermediate_size": c.moe_intermediate_size,
                            "shared_expert_intermediate_size": c.shared_expert_intermediate_size},
    "gemma2": lambda c: {"query_pre_attn_scalar": 32, "attn_logit_softcapping": 5.0,
                         "final_logit_softcapping": 3.0},
    "gemma3": lambda c: {"query_pre_attn_scalar": 32, "rope_parameters": c.rope_parameters},
    "phi3_longrope": lambda c: {"pad_token_id": 0, "rope_parameters": c.rope_parameters,
                                "sliding_window": c.sliding_window,
                                "original_max_position_embeddings": c.original_max_position_embeddings},
}


@pytest.mark.parametrize("name", sorted(GGUF_CONFIGS))
def test_gguf_loads_the_model_it_was_written_from(name, tmp_path):
    hf_model = make_hf_model(GGUF_CONFIGS[name]())
    path = str(tmp_path / f"{name}.gguf")
    write_gguf(hf_model, path)
    if name != "mixtral":  # the file says what llama.cpp would say
        overrides = HF_OVERRIDES.get(name, lambda c: {})(hf_model.config)
        reread = tf.AutoModelForCausalLM.from_pretrained(
            str(tmp_path), gguf_file=os.path.basename(path), dtype=torch.float32,
            attn_implementation="eager", **overrides).eval()
        ids = torch.tensor([[3, 9, 27, 81, 15, 45, 7, 2, 6, 18]])
        with torch.no_grad():
            torch.testing.assert_close(reread(ids).logits, hf_model(ids).logits, atol=1e-4, rtol=1e-4)
    loaded = load_model(path)
    assert loaded.architecture == type(hf_model).__name__
    _check_against_hf(loaded, hf_model, atol=1e-4)
