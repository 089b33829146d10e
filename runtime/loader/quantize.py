"""Write an FP8 checkpoint of a model, in a layout published FP8 checkpoints use, so that sgl (or
any engine that reads the layout) loads it as FP8 without --quantization:

    python -m sgl.quantize_fp8 --model-path SRC --output DIR [--format compressed-tensors|fp8]

SRC is anything `load_model` reads (HF folder, .gguf, a config with --load-format dummy). The
decoder layers' linear weights become float8_e4m3fn with a float32 `weight_scale`: per output
channel, (N, 1), for `--format compressed-tensors` (float-quantized, FP8-Dynamic: activations
quantized per token at run time); per tensor, (), for `--format fp8` (quant_method fp8,
dynamic activations). Embeddings, norms and the LM head keep `--dtype` (bfloat16). Fused
q/k/v and gate/up are written back as the checkpoint's separate tensors."""
from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Iterator

import torch
from safetensors.torch import save_file

from sgl.kernels.fp8 import FP8_MAX, quantize_rows_ref, quantize_to_fp8
from sgl.kernels.rotary import compute_inv_freq
from sgl.runtime.layers.linear import ParallelLinear
from sgl.runtime.layers.rotary import rope_params_from_config
from sgl.runtime.loader import LoadedModel, load_model, resolve_model_path
from sgl.runtime.models.llama import ROPE_FREQS_NAME
from sgl.runtime.models.weights import checkpoint_shards

FORMATS = ("compressed-tensors", "fp8")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "tokenizer.model", "vocab.json", "merges.txt", "generation_config.json",
                    "chat_template.jinja")


def quantization_config(fmt: str) -> dict:
    """The config.json entry of a checkpoint written in `fmt`."""
    if fmt == "fp8":
        return {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                "ignored_layers": ["lm_head"]}
    fp8 = {"num_bits": 8, "type": "float", "symmetric": True}
    return {"quant_method": "compressed-tensors", "format": "float-quantized",
            "quantization_status": "compressed", "ignore": ["lm_head"], "kv_cache_scheme": None,
            "config_groups": {"group_0": {
                "targets": ["Linear"],
                "weights": {**fp8, "strategy": "channel", "dynamic": False},
                "input_activations": {**fp8, "strategy": "token", "dynamic": True}}}}


def quantize_weight(weight: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(FP8 weight, weight_scale): per channel (N, 1) for compressed-tensors, per tensor ()."""
    if fmt == "fp8":
        scale = (weight.abs().amax().float() / FP8_MAX).clamp(min=1e-12)
        return quantize_to_fp8(weight, scale), scale
    return quantize_rows_ref(weight)


def checkpoint_tensors(loaded: LoadedModel, fmt: str,
                       dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, tensor) of the loaded (unquantized, tp_size 1) model in FP8 layout."""
    linears = {name: m for name, m in loaded.model.named_modules() if isinstance(m, ParallelLinear)}
    for name, param in loaded.model.named_parameters():
        module_name, _, kind = name.rpartition(".")
        if module_name not in linears:
            yield name, param.detach().to(dtype).contiguous()
            continue
        layer = linears[module_name]
        for piece, shard in checkpoint_shards(module_name):
            offset, size = layer.shard_rows(shard)
            rows = param.detach()[offset:offset + size]
            if kind == "weight":
                weight, scale = quantize_weight(rows, fmt)
                yield f"{piece}.weight", weight.contiguous()
                yield f"{piece}.weight_scale", scale.contiguous()
            else:  # bias
                yield f"{piece}.{kind}", rows.to(dtype).contiguous()
    factors = _rope_freq_factors(loaded)
    if factors is not None:
        yield ROPE_FREQS_NAME, factors


def _rope_freq_factors(loaded: LoadedModel) -> torch.Tensor | None:
    """llama.cpp's per-frequency rope factors that a GGUF source applied, to carry them over."""
    rotary = loaded.model.model.rotary_emb
    kinds = getattr(loaded.model.model, "rotary_embs", None)  # Gemma: rotary_emb is the first
    theta, scaling = rope_params_from_config(loaded.hf_config, next(iter(kinds)) if kinds else None)
    plain = compute_inv_freq(rotary.rotary_dim, theta, scaling)
    factors = plain / rotary.inv_freq.cpu()
    return None if torch.allclose(factors, torch.ones_like(factors)) else factors.float()


def write_fp8_checkpoint(model_path: str, output: str, fmt: str = "compressed-tensors",
                         load_format: str = "auto", dtype: torch.dtype = torch.bfloat16) -> None:
    """Load model_path in float32 on the CPU and write it to `output` as an FP8 checkpoint."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    loaded = load_model(model_path, load_format, dtype=torch.float32, device="cpu")
    if loaded.quant_config is not None:
        raise ValueError(f"{model_path} is already quantized")
    if not loaded.model.supports_fp8:
        raise ValueError(f"{model_path}: FP8 checkpoints of {loaded.architecture} are not "
                         "supported (its MoE experts have no FP8 path yet)")
    os.makedirs(output, exist_ok=True)
    tensors = dict(checkpoint_tensors(loaded, fmt, dtype))
    save_file(tensors, os.path.join(output, "model.safetensors"), metadata={"format": "pt"})
    config = loaded.hf_config.to_diff_dict()  # the fields that differ from the defaults
    config.pop("_name_or_path", None)
    config.update(architectures=[loaded.architecture], torch_dtype=str(dtype).removeprefix("torch."),
                  quantization_config=quantization_config(fmt))
    config.pop("dtype", None)
    with open(os.path.join(output, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    _copy_tokenizer(resolve_model_path(model_path), output)


def _copy_tokenizer(source: str, output: str) -> None:
    if not os.path.isdir(source):
        return
    for name in _TOKENIZER_FILES:
        if os.path.isfile(os.path.join(source, name)):
            shutil.copy(os.path.join(source, name), os.path.join(output, name))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True)
    p.add_argument("--load-format", default="auto")
    p.add_argument("--output", required=True)
    p.add_argument("--format", default="compressed-tensors", choices=FORMATS)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                   help="of the tensors kept unquantized (embeddings, norms, LM head)")
    args = p.parse_args(argv)
    write_fp8_checkpoint(args.model_path, args.output, args.format, args.load_format,
                         getattr(torch, args.dtype))
    print(f"wrote {args.output}")
