"""load_format="dummy": random weights from a config alone, for benchmarks and tests that need
the shapes and speed of a model but not its answers. Deterministic given the seed."""
from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig

# Small enough that activations neither blow up nor vanish across tens of layers.
DUMMY_INIT_STD = 0.02


def load_dummy_config(path: str) -> PretrainedConfig:
    """`path` is a folder holding config.json or the config.json itself."""
    model_dir = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise FileNotFoundError(f"dummy weights need a config.json; none at {path}")
    return AutoConfig.from_pretrained(model_dir)


# Our fused parameters -> the checkpoint tensors they are built from, in order.
_FUSED = {".qkv_proj.": (".q_proj.", ".k_proj.", ".v_proj."), ".gate_up_proj.": (".gate_proj.", ".up_proj.")}


@torch.no_grad()
def init_dummy_weights(model: nn.Module, config: PretrainedConfig, seed: int) -> None:
    """Fill `model` (any tensor-parallel rank) through its own checkpoint loader from
    `dummy_checkpoint`, so that every rank of every tp_size holds slices of the same weights."""
    device = next(model.parameters()).device
    model.load_weights(dummy_checkpoint(type(model), config, seed, device))


def dummy_checkpoint(model_cls: type, config: PretrainedConfig, seed: int,
                     device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    """The whole (unsharded) model's tensors under checkpoint names: norm weights (1-D params
    named *norm*) 1, biases 0, everything else N(0, std) drawn in float32 (so the values do not
    depend on the parameter dtype's sampler), one tensor at a time."""
    with torch.device("meta"):
        shapes = {name: p.shape for name, p in model_cls(config).named_parameters()}
    generator = torch.Generator(device=device).manual_seed(seed)
    for name in sorted(shapes):
        shape = shapes[name]
        if "norm" in name and len(shape) == 1:
            tensor = torch.ones(shape, device=device)
        elif name.endswith(".bias"):
            tensor = torch.zeros(shape, device=device)
        else:
            tensor = torch.empty(shape, dtype=torch.float32, device=device)
            tensor.normal_(0.0, DUMMY_INIT_STD, generator=generator)
        yield from _unfuse(name, tensor, config)


def _unfuse(name: str, tensor: torch.Tensor, config: PretrainedConfig) -> Iterator[tuple[str, torch.Tensor]]:
    for fused, pieces in _FUSED.items():
        if fused in name:
            if fused == ".qkv_proj.":
                head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
                sizes = [config.num_attention_heads * head_dim] + [config.num_key_value_heads * head_dim] * 2
            else:
                sizes = [tensor.shape[0] // 2] * 2
            for piece, part in zip(pieces, tensor.split(sizes, dim=0)):
                yield name.replace(fused, piece), part
            return
    yield name, tensor
