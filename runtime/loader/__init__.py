"""Model loading: pick the checkpoint format, build the config, construct the model directly in
the target dtype/device, stream the weights in."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch

from torch import nn
from tqdm.auto import tqdm
from transformers import PretrainedConfig

from sgl.runtime.layers.fp8 import Fp8Config
from sgl.runtime.layers.rotary import TRAINED_MAX_POSITIONS_ATTR
from sgl.runtime.loader import dummy, hf
from sgl.runtime.loader.bundled import bundled_model_path
from sgl.runtime.loader.hub_cache import cached_snapshot, looks_like_hub_id
from sgl.runtime.loader.quantization import resolve_quantization, unquantize_ignored
from sgl.runtime.models.llama import get_head_dim
from sgl.runtime.models.registry import DRAFT_ARCHITECTURES, get_model_class, resolve_architecture

if TYPE_CHECKING:  # imported on use: the gguf package is only needed for .gguf files
    from sgl.runtime.loader.gguf_loader import GGUFCheckpoint

logger = logging.getLogger(__name__)

LOAD_FORMATS = ("auto", "safetensors", "gguf", "dummy")
SHIPPED_CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs")
_DTYPES = {"float32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
           "float16": torch.float16, "half": torch.float16}

__all__ = ["LOAD_FORMATS", "LoadedModel", "bundled_model_path", "load_model"]


@dataclass
class LoadedModel:
    model: nn.Module
    hf_config: PretrainedConfig
    model_path: str
    architecture: str
    context_len: int
    vocab_size: int
    num_layers: int
    num_kv_heads: int  # per tensor-parallel rank: what the KV pool of this rank holds
    head_dim: int
    dtype: torch.dtype
    eos_token_ids: list[int]
    quant_config: Fp8Config | None = None  # FP8 linears: how they were loaded


def load_model(model_path: str, load_format: str = "auto",
               dtype: torch.dtype | str = torch.float32, device: str | torch.device = "cpu",
               seed: int = 0, context_length: int | None = None, tp_rank: int = 0,
               tp_size: int = 1, quantization: str | None = None) -> LoadedModel:
    """Load a .gguf file, a HF safetensors folder, or (load_format="dummy") random weights for a
    config.json. `model_path` may also name a config shipped in runtime/configs.
    quantization="fp8" quantizes a 16/32-bit checkpoint's linears to FP8 as they load; a
    checkpoint published in FP8 loads as such either way (runtime/loader/quantization.py)."""
    model_path = resolve_model_path(model_path)
    load_format = _resolve_format(model_path, load_format)
    config, checkpoint = _load_config(model_path, load_format)
    dtype = _resolve_dtype(dtype, config)
    context_len = _fit_context(config, context_length)
    architecture = resolve_architecture(config)
    if architecture in DRAFT_ARCHITECTURES:
        raise ValueError(f"{model_path} is a {architecture} draft head: load it beside its target "
                         "with sgl.runtime.loader.draft.load_draft_model")
    model_cls = get_model_class(architecture)
    quant = resolve_quantization(config, quantization)
    if quant is not None and load_format == "dummy":  # random 16/32-bit weights, quantized
        quant = dataclasses.replace(quant, checkpoint_is_fp8=False, static_activations=False)
    with _default_dtype(dtype), torch.device(device):
        model = model_cls(config, tp_rank=tp_rank, tp_size=tp_size, quant_config=quant)
    if quant is not None:
        kept = unquantize_ignored(model, quant)
        logger.info("FP8 weights (%s)%s", "as published" if quant.checkpoint_is_fp8 else
                    "quantized at load", f"; unquantized: {', '.join(kept)}" if kept else "")
    if load_format == "dummy":
        start = time.perf_counter()
        dummy.init_dummy_weights(model, config, seed)
        logger.info("dummy weights drawn in %.1f s", time.perf_counter() - start)
    else:
        model.load_weights(_progress(*_weights(model_path, load_format, checkpoint)))
    model.eval()
    attn = model.model.layers[0].self_attn
    return LoadedModel(
        model=model, hf_config=config, model_path=model_path, architecture=architecture,
        context_len=context_len, vocab_size=config.vocab_size, num_layers=config.num_hidden_layers,
        num_kv_heads=attn.num_kv_heads, head_dim=attn.head_dim, dtype=dtype,
        eos_token_ids=_eos_token_ids(model_path, load_format, config, checkpoint),
        quant_config=quant)


def kv_layout(model_path: str) -> tuple[int, int, int]:
    """(layers, KV heads, head dim) of a model or a draft head, from its config alone (no
    weights): what a KV pool for it holds per token."""
    model_path = resolve_model_path(model_path)
    if os.path.isdir(model_path):  # a HF folder or a draft head: its config.json as written
        with open(os.path.join(model_path, "config.json")) as f:
            config = SimpleNamespace(**json.load(f))
    else:
        config, _ = _load_config(model_path, _resolve_format(model_path, "auto"))
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return config.num_hidden_layers, kv_heads, get_head_dim(config)


def resolve_model_path(model_path: str) -> str:
    if not os.path.exists(model_path):
        shipped = os.path.join(SHIPPED_CONFIGS_DIR, model_path)
        if os.path.isdir(shipped):
            return shipped
        if looks_like_hub_id(model_path):
            return cached_snapshot(model_path)
        raise FileNotFoundError(f"model path {model_path} does not exist (shipped configs: "
                                f"{', '.join(sorted(os.listdir(SHIPPED_CONFIGS_DIR)))})")
    return model_path


def _resolve_format(model_path: str, load_format: str) -> str:
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"unknown load_format {load_format!r}; supported: {', '.join(LOAD_FORMATS)}")
    if load_format != "auto":
        return load_format
    return "gguf" if model_path.endswith(".gguf") else "safetensors"


def _load_config(model_path: str, load_format: str) -> tuple[PretrainedConfig, GGUFCheckpoint | None]:
    if load_format == "gguf":
        from sgl.runtime.loader.gguf_loader import GGUFCheckpoint
        checkpoint = GGUFCheckpoint(model_path)
        return checkpoint.config, checkpoint
    if load_format == "dummy":
        return dummy.load_dummy_config(model_path), None
    return hf.load_hf_config(model_path), None


def _resolve_dtype(dtype: torch.dtype | str, config: PretrainedConfig) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":  # the checkpoint's dtype, float32 when it names none (GGUF)
        config_dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if isinstance(config_dtype, str):
            config_dtype = _DTYPES.get(config_dtype)
        return config_dtype if isinstance(config_dtype, torch.dtype) else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; supported: auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def _fit_context(config: PretrainedConfig, context_length: int | None) -> int:
    max_positions = config.max_position_embeddings
    if context_length is None:
        return max_positions
    if context_length > max_positions:
        logger.warning("context_length %d exceeds the model's max_position_embeddings %d",
                       context_length, max_positions)
        # The rotary table must cover it; dynamic rope scaling still measures against the
        # checkpoint's own length.
        setattr(config, TRAINED_MAX_POSITIONS_ATTR, max_positions)
        config.max_position_embeddings = context_length
    return context_length


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _weights(model_path: str, load_format: str,
             checkpoint: GGUFCheckpoint | None) -> tuple[Iterator, int | None]:
    if checkpoint is not None:
        return checkpoint.iterate_weights(), checkpoint.num_tensors
    # lazy: each tensor-parallel rank reads only its shard of every sharded tensor
    return hf.iterate_hf_weights(model_path, lazy=True), hf.count_hf_tensors(model_path) or None


def _progress(weights: Iterator, total: int | None) -> Iterator:
    return tqdm(weights, total=total, desc="Loading weights", unit="tensor", leave=False)


def _eos_token_ids(model_path: str, load_format: str, config: PretrainedConfig,
                   checkpoint: GGUFCheckpoint | None) -> list[int]:
    if checkpoint is not None:
        return checkpoint.eos_token_ids()
    eos = getattr(config, "eos_token_id", None)
    ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    if load_format == "safetensors":
        ids += hf.read_generation_eos(model_path)
    return list(dict.fromkeys(ids))
