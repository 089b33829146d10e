"""Attention backend interface and its registry. One implementation per file; add a backend by
writing the file and naming it in `_BACKENDS`."""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sgl.runtime.executor.forward_batch import ForwardBatch
    from sgl.runtime.layers.attention import RadixAttention


class AttentionBackend(ABC):
    """Computes attention for one layer of one step over the paged KV pool.

    Contract of `forward(q, k, v, layer, batch)`:
      - q: (num_tokens, Hq * D) or (num_tokens, Hq, D); k, v: the same with Hkv heads, for the new
        tokens of `batch` (requests concatenated, rotary already applied).
      - The backend first stores k, v at `batch.out_cache_loc` of layer `layer.layer_id` in
        `batch.kv_pool`, then attends every new token causally over its request's whole sequence,
        whose slots are `batch.req_to_token[batch.req_pool_indices[i], :batch.seq_lens[i]]`.
      - Honours the layer's `sliding_window` (a query at position p sees keys > p - window) and
        `logit_cap` (scores soft-capped to cap * tanh(s / cap)); both 0 when unused.
      - Returns (num_tokens, Hq * D) in q's dtype.
    `init_forward_metadata(batch)` runs once per step before the layers (plan index arrays,
    split sizes ...); the default does nothing.
    """

    def init_forward_metadata(self, batch: ForwardBatch) -> None:
        return None

    @abstractmethod
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                layer: RadixAttention, batch: ForwardBatch) -> torch.Tensor:
        ...


# name -> "module:Class", imported on first use so that importing the registry pulls no kernels.
_BACKENDS: dict[str, str] = {
    "torch_native": "sgl.runtime.executor.attention.torch_native:TorchNativeBackend",
    "triton": "sgl.runtime.executor.attention.triton_backend:TritonBackend",
}


def register_attention_backend(name: str, target: str) -> None:
    """Register a backend as "package.module:ClassName"."""
    _BACKENDS[name] = target


def get_attention_backend(name: str) -> type[AttentionBackend]:
    """The backend class registered under `name` (construct it yourself)."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; supported: {', '.join(sorted(_BACKENDS))}")
    module_name, class_name = _BACKENDS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)
