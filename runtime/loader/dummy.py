"""load_format="dummy": random weights from a config alone, for benchmarks and tests that need
the shapes and speed of a model but not its answers. Deterministic given the seed."""
from __future__ import annotations

import os

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


@torch.no_grad()
def init_dummy_weights(model: nn.Module, seed: int) -> None:
    """Norm weights (1-D params named *norm*) to 1, biases to 0, everything else N(0, std)."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, param in sorted(model.named_parameters()):
        if "norm" in name and param.dim() == 1:
            param.fill_(1.0)
        elif name.endswith(".bias"):
            param.zero_()
        else:
            # Draw in float32 so the values do not depend on the parameter dtype's sampler.
            sample = torch.empty(param.shape, dtype=torch.float32, device=device)
            param.copy_(sample.normal_(0.0, DUMMY_INIT_STD, generator=generator))
