"""Store new tokens' K/V into one layer of the KV pool: the Triton kernel (one launch for K and
V) on CUDA tensors, the index_put reference elsewhere (and as the kernel's oracle)."""
from __future__ import annotations

import torch

from sgl.kernels.dispatch import use_triton


def store_kv(k_buffer: torch.Tensor, v_buffer: torch.Tensor, loc: torch.Tensor,
             k: torch.Tensor, v: torch.Tensor) -> None:
    """k_buffer, v_buffer: (slots, Hkv, D); loc: (T,) slot of each new token; k, v: (T, Hkv, D)
    (or (T, Hkv * D)), cast to the pool dtype."""
    if use_triton(k_buffer):
        from sgl.kernels.triton import kv_store
        kv_store.store_kv(k_buffer, v_buffer, loc, k, v)
        return
    store_kv_ref(k_buffer, v_buffer, loc, k, v)


def store_kv_ref(k_buffer: torch.Tensor, v_buffer: torch.Tensor, loc: torch.Tensor,
                 k: torch.Tensor, v: torch.Tensor) -> None:
    num_tokens = loc.shape[0]
    k_buffer[loc] = k.reshape(num_tokens, *k_buffer.shape[1:]).to(k_buffer.dtype)
    v_buffer[loc] = v.reshape(num_tokens, *v_buffer.shape[1:]).to(v_buffer.dtype)
