"""Regenerate the tiny checkpoints of tests/data (run from the repository root):

    python tests/data/make_tiny_llama.py

tiny-llama/      a 2-layer Llama of random bfloat16 weights (vocab 256, hidden 64), written by
                 transformers: weights N(0, 0.15), norms 1 + N(0, 0.3), so that its next-token
                 distributions are far from uniform (an FP8 error shows in its top-1 choices).
tiny-llama-fp8/  that model as an FP8 checkpoint made by our tool:
                 python -m sgl.quantize_fp8 --model-path tests/data/tiny-llama \\
                     --output tests/data/tiny-llama-fp8
"""
from __future__ import annotations

import os

import torch
import transformers

from sgl.runtime.loader.quantize import write_fp8_checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
          "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False,
          "bos_token_id": 1, "eos_token_id": 2}


@torch.no_grad()
def make_source(path: str, seed: int = 0) -> None:
    config = transformers.LlamaConfig(**CONFIG)
    config.architectures = ["LlamaForCausalLM"]
    model = transformers.LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(seed)
    for name, t in model.named_parameters():
        noise = torch.randn(t.shape, generator=gen)
        t.copy_(1.0 + 0.3 * noise if "norm" in name else 0.15 * noise)
    model.to(torch.bfloat16).save_pretrained(path)


if __name__ == "__main__":
    source = os.path.join(HERE, "tiny-llama")
    make_source(source)
    write_fp8_checkpoint(source, os.path.join(HERE, "tiny-llama-fp8"))
