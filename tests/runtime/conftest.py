"""Fixtures shared by the runtime tests."""
from __future__ import annotations

import os

import pytest
import torch
import transformers

from sgl.runtime.loader.bundled import bundled_model_path


@pytest.fixture(scope="session")
def bundled_hf() -> tuple:
    """transformers' own float32 reading of the bundled GGUF (the reference), and its tokenizer:
    loaded once per session (~15 s on the CI CPU)."""
    path = bundled_model_path()
    where, name = os.path.dirname(path), os.path.basename(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(where, gguf_file=name)
