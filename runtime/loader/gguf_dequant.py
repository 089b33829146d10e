"""Dequantization of the common llama.cpp block formats in torch (vectorized over every core),
bit-identical to gguf-py's numpy code, which is the fallback for the other formats. The bundled
model is Q4_1 with a Q8_0 embedding: gguf-py took ~1.0 s of every engine start to dequantize it.

Block layouts (32 weights a block, little-endian; ggml's ggml-common.h):
  Q8_0: d (f16), 32 x int8 q            -> q * d
  Q4_0: d (f16), 16 bytes of nibbles    -> (nibble - 8) * d
  Q4_1: d (f16), m (f16), 16 bytes      -> nibble * d + m
The low nibbles of the 16 bytes are weights 0-15, the high nibbles weights 16-31."""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

FAST_TYPES = frozenset({Q.Q8_0, Q.Q4_0, Q.Q4_1})


def dequantize_fast(data: np.ndarray, quant_type: Q) -> Optional[torch.Tensor]:
    """float32 (rows, cols) for a uint8 (rows, bytes per row) tensor of a FAST_TYPES format;
    None for any other format or layout (the caller falls back to gguf-py)."""
    if quant_type not in FAST_TYPES:
        return None
    block, block_bytes = GGML_QUANT_SIZES[quant_type]  # weights and bytes a block
    if data.dtype != np.uint8 or data.shape[-1] % block_bytes:
        return None
    with warnings.catch_warnings():  # a read-only memory map: torch warns, and we only read it
        warnings.simplefilter("ignore", UserWarning)
        raw = torch.from_numpy(np.ascontiguousarray(data))
    blocks = raw.reshape(-1, block_bytes)
    d = _f16(blocks[:, 0:2])
    if quant_type == Q.Q8_0:
        values = blocks[:, 2:].view(torch.int8).float() * d
    else:
        first = 4 if quant_type == Q.Q4_1 else 2
        qs = blocks[:, first:]
        nibbles = torch.cat([qs & 0x0F, qs >> 4], dim=1)  # (n, 32) uint8
        if quant_type == Q.Q4_0:
            values = d * (nibbles.to(torch.int8) - 8).float()
        else:
            values = d * nibbles.float() + _f16(blocks[:, 2:4])
    cols = data.shape[-1] // block_bytes * block
    return values.reshape(*data.shape[:-1], cols)


def _f16(two_bytes: torch.Tensor) -> torch.Tensor:
    """(n, 2) uint8 -> (n, 1) float32 of the little-endian float16 they hold."""
    return two_bytes.contiguous().view(torch.float16).float()
