"""Which quantization a model loads with: a checkpoint's `quantization_config` (config.json) and
--quantization. FP8 is what runs; a checkpoint quantized any other way (AWQ, GPTQ,
bitsandbytes, int8, block-wise FP8, ...) is a ValueError naming the method, never weights loaded
with their scales dropped.

Published FP8 layouts read here:
  - `quant_method: fp8` (SGLang/vLLM, AutoFP8): `activation_scheme` dynamic or static,
    `ignored_layers`; a per-tensor `weight_scale` (and `input_scale` when static).
  - `quant_method: compressed-tensors`, `format: float-quantized` (llm-compressor's FP8 and
    FP8-Dynamic): one config group of 8-bit float weights by tensor or channel, activations by
    tensor (static or dynamic) or token (dynamic), or none (they are then quantized per token at
    run time); `ignore` names or "re:" patterns; `kv_cache_scheme` k_scale / v_scale."""
from __future__ import annotations

import logging
from typing import Any

from torch import nn
from transformers import PretrainedConfig

from sgl.runtime.layers.fp8 import Fp8Config
from sgl.runtime.layers.linear import ParallelLinear
from sgl.runtime.models.weights import checkpoint_shards

logger = logging.getLogger(__name__)

QUANTIZATION_METHODS = ("fp8",)


def resolve_quantization(config: PretrainedConfig, quantization: str | None) -> Fp8Config | None:
    """The model's FP8 config: the checkpoint's if it is quantized (it must be FP8), else
    quantize-at-load for --quantization fp8, else None."""
    if quantization is not None and quantization not in QUANTIZATION_METHODS:
        raise ValueError(f"quantization {quantization!r} is not supported; supported: "
                         f"{', '.join(QUANTIZATION_METHODS)}")
    published = getattr(config, "quantization_config", None)
    if published:
        return parse_quantization_config(_as_dict(published))
    return Fp8Config(checkpoint_is_fp8=False) if quantization == "fp8" else None


def parse_quantization_config(qc: dict[str, Any]) -> Fp8Config:
    method = str(qc.get("quant_method", "")).lower()
    if method == "fp8":
        return _parse_fp8(qc)
    if method == "compressed-tensors":
        return _parse_compressed_tensors(qc)
    raise ValueError(f"checkpoint quantization_config quant_method {method!r} is not supported "
                     "(sgl runs FP8: quant_method fp8, or compressed-tensors float-quantized)")


def _parse_fp8(qc: dict[str, Any]) -> Fp8Config:
    if qc.get("weight_block_size"):
        raise ValueError(f"quant_method fp8 with weight_block_size {qc['weight_block_size']} "
                         "(block-wise FP8) is not supported: only per-tensor or per-channel "
                         "weight scales")
    scheme = qc.get("activation_scheme", "dynamic")
    if scheme not in ("dynamic", "static"):
        raise ValueError(f"quant_method fp8: activation_scheme {scheme!r} is not supported")
    fmt = qc.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise ValueError(f"quant_method fp8: fmt {fmt!r} is not supported (e4m3 only)")
    ignored = qc.get("ignored_layers") or qc.get("modules_to_not_convert") or []
    return Fp8Config(checkpoint_is_fp8=True, static_activations=scheme == "static",
                     ignored=tuple(ignored))


def _parse_compressed_tensors(qc: dict[str, Any]) -> Fp8Config:
    fmt = qc.get("format")
    if fmt != "float-quantized":
        raise ValueError(f"compressed-tensors format {fmt!r} is not supported (FP8 "
                         "float-quantized only)")
    groups = list((qc.get("config_groups") or {}).values())
    if len(groups) != 1:
        raise ValueError(f"compressed-tensors: {len(groups)} config_groups; one is supported")
    weights, acts = groups[0].get("weights") or {}, groups[0].get("input_activations")
    _require_fp8_scheme("weights", weights, ("tensor", "channel"))
    if weights.get("dynamic"):
        raise ValueError("compressed-tensors: dynamic weight scales are not supported")
    static = False
    if acts is None:
        logger.info("FP8 weight-only checkpoint: activations are quantized per token at run time")
    else:
        _require_fp8_scheme("input_activations", acts, ("tensor", "token"))
        static = not acts.get("dynamic", False)
        if static and acts.get("strategy") != "tensor":
            raise ValueError("compressed-tensors: static activation scales must be per tensor")
    kv = qc.get("kv_cache_scheme")
    if kv:
        _require_fp8_scheme("kv_cache_scheme", kv, ("tensor",))
    return Fp8Config(checkpoint_is_fp8=True, static_activations=static,
                     ignored=tuple(qc.get("ignore") or ()))


def _require_fp8_scheme(what: str, scheme: dict[str, Any], strategies: tuple[str, ...]) -> None:
    if scheme.get("num_bits") != 8 or scheme.get("type") != "float":
        raise ValueError(f"compressed-tensors {what}: {scheme.get('num_bits')}-bit "
                         f"{scheme.get('type')} is not supported (8-bit float only)")
    if scheme.get("strategy") not in strategies:
        raise ValueError(f"compressed-tensors {what}: strategy {scheme.get('strategy')!r} is not "
                         f"supported ({', '.join(strategies)})")
    if scheme.get("symmetric") is False:
        raise ValueError(f"compressed-tensors {what}: asymmetric FP8 is not supported")


def _as_dict(published: Any) -> dict[str, Any]:
    if isinstance(published, dict):
        return published
    to_dict = getattr(published, "to_dict", None)  # a transformers QuantizationConfig
    if to_dict is None:
        raise ValueError(f"unreadable quantization_config {published!r}")
    return to_dict()


def unquantize_ignored(model: nn.Module, config: Fp8Config) -> list[str]:
    """Turn the linears the checkpoint leaves unquantized back to 16/32-bit weights (before
    loading). A fused layer (q/k/v, gate/up) goes back only if all its pieces are ignored."""
    if not config.ignored:
        return []
    undone = []
    for name, module in model.named_modules():
        if not isinstance(module, ParallelLinear) or module.quant is None:
            continue
        pieces = [piece for piece, _ in checkpoint_shards(name)]
        ignored = [config.is_ignored(p) for p in pieces]
        if config.is_ignored(name):  # a checkpoint that fuses the layer as we do (Phi-3)
            ignored = [True]
        if any(ignored) and not all(ignored):
            raise ValueError(f"quantization_config ignores part of the fused layer {name} "
                             f"({pieces}); a fused layer is quantized whole or not at all")
        if all(ignored):
            module.set_quantization(None)
            undone.append(name)
    return undone
