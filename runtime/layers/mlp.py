"""The gated MLP of dense decoder layers and of MoE shared experts: down(act(gate(x)) * up(x)),
gate|up column-parallel in one matmul, down row-parallel."""
from __future__ import annotations

import torch
from sgl.kernels.activation import gelu_tanh_and_mul, silu_and_mul
from sgl.runtime.layers.fp8 import Fp8Config
from sgl.runtime.layers.linear import MergedColumnParallelLinear, RowParallelLinear
from torch import nn

# HF `hidden_act` / `hidden_activation` -> the gated activation over cat[gate, up].
GATED_ACTIVATIONS = {"silu": silu_and_mul, "gelu_pytorch_tanh": gelu_tanh_and_mul,
                     "gelu_tanh": gelu_tanh_and_mul}


def gated_activation(name: str):
    if name not in GATED_ACTIVATIONS:
        raise ValueError(f"unsupported hidden activation {name!r}; supported: "
                         f"{', '.join(sorted(GATED_ACTIVATIONS))}")
    return GATED_ACTIVATIONS[name]


class GatedMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False,
                 tp_rank: int = 0, tp_size: int = 1, activation: str = "silu",
                 reduce_results: bool = True, quant: Fp8Config | None = None) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(hidden_size, [intermediate_size] * 2, bias,
                                                       tp_rank, tp_size, quant=quant)
        # reduce_results=False: the caller sums this rank's partial output with others' (an MoE
        # block adds it to its experts' partial sum and all-reduces once).
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, bias, tp_rank, tp_size,
                                           reduce_results=reduce_results, quant=quant)
        self.act_fn = gated_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (T, hidden) -> (T, 2 * inter / tp) -> (T, inter / tp) -> (T, hidden)
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))
