"""The torch dequantizers of runtime/loader/gguf_dequant.py are bit-identical to gguf-py's numpy
reference: random blocks of every fast format (scales drawn as real float16 values, all 256
byte values in the quants) and every tensor of the bundled model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize

from sgl.runtime.loader.bundled import bundled_model_path
from sgl.runtime.loader.gguf_dequant import FAST_TYPES, dequantize_fast
from sgl.runtime.loader.gguf_file import GGUFFile

SCALES = {Q.Q8_0: 1, Q.Q4_0: 1, Q.Q4_1: 2}  # float16 values at the start of each block


def random_rows(quant_type: Q, num_rows: int, num_blocks: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    block_bytes = GGML_QUANT_SIZES[quant_type][1]
    blocks = rng.integers(0, 256, (num_rows * num_blocks, block_bytes), dtype=np.uint8)
    scales = rng.normal(0, 0.05, (num_rows * num_blocks, SCALES[quant_type])).astype(np.float16)
    blocks[:, :2 * SCALES[quant_type]] = scales.view(np.uint8)
    return blocks.reshape(num_rows, num_blocks * block_bytes)


def reference(data: np.ndarray, quant_type: Q) -> torch.Tensor:
    return torch.from_numpy(np.asarray(dequantize(data, quant_type), dtype=np.float32))


@pytest.mark.parametrize("quant_type", sorted(FAST_TYPES, key=int), ids=lambda q: q.name)
def test_random_blocks_match_gguf_py(quant_type):
    data = random_rows(quant_type, num_rows=7, num_blocks=5, seed=int(quant_type))
    got = dequantize_fast(data, quant_type)
    assert got.dtype == torch.float32 and got.shape == (7, 5 * 32)
    assert torch.equal(got, reference(data, quant_type))


def test_other_formats_are_left_to_gguf_py():
    assert dequantize_fast(np.zeros((2, 4), dtype=np.float32), Q.F32) is None
    assert dequantize_fast(np.zeros((2, 210), dtype=np.uint8), Q.Q6_K) is None


def test_every_bundled_tensor_matches_gguf_py():
    tensors = GGUFFile(bundled_model_path()).tensors
    fast = [t for t in tensors if t.tensor_type in FAST_TYPES]
    assert {t.tensor_type for t in fast} == {Q.Q4_1, Q.Q8_0}
    for t in fast:
        assert torch.equal(dequantize_fast(t.data, t.tensor_type), reference(t.data, t.tensor_type)), t.name
