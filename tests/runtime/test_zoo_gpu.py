"""The model zoo on the GPU path: Triton attention with per-layer sliding windows and soft-capping
(decode under CUDA graphs), the fused MoE kernels, GeGLU and Gemma's norms give transformers'
float32 greedy tokens, as the torch backend does. GPU only (`pytest -m gpu`); with
TRITON_INTERPRET=1 the Triton attention backend also runs on the CPU (the other kernels then
take their references)."""
from __future__ import annotations

import os

import pytest
import torch
from sgl.runtime.engine import Engine

from tests.runtime.test_model_zoo import CONFIGS, make_hf_model
from tests.runtime.test_zoo_parity import NEW_TOKENS, PROMPTS, hf_generate

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not (torch.cuda.is_available() or INTERPRET),
                                                  reason="needs a CUDA GPU or TRITON_INTERPRET=1")]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("name", ["gemma2", "gemma3", "mistral_window", "mixtral", "qwen3_moe",
                                  "qwen2_moe", "phi3_longrope_partial"])
def test_triton_backend_and_graphs_give_transformers_tokens(name, tmp_path):
    model = make_hf_model(CONFIGS[name]())
    model.save_pretrained(tmp_path)
    expected = [hf_generate(model, p)[0] for p in PROMPTS]
    params = {"max_new_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True}
    for backend in ("triton", "torch_native"):
        with Engine(str(tmp_path), skip_tokenizer_init=True, device=DEVICE, dtype="float32",
                    attention_backend=backend, chunked_prefill_size=16, max_total_tokens=1024,
                    disable_cuda_graph=backend != "triton" or DEVICE == "cpu") as engine:
            outs = engine.generate(input_ids=PROMPTS, sampling_params=params)
            engine.call_in_scheduler(lambda s: s.check_pool_invariant())
        assert [o["output_ids"] for o in outs] == expected, backend
