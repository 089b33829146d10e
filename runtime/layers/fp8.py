"""FP8 weights of the tensor-parallel linears (--quantization fp8, or a checkpoint published in
FP8): a float8_e4m3fn weight with one float32 scale per output row (per channel), activations
quantized per token at run time, or by one static scale where the checkpoint gives one.

Two ways in:
  - a 16/32-bit checkpoint (also GGUF, dummy weights) is quantized as it loads: each weight
    slice that a rank's weight loader copies is quantized row by row on the parameter's device,
    and its rows' scales written beside it (`weight_scale` is then a buffer: nothing in the
    checkpoint fills it);
  - an FP8 checkpoint's `weight` (already FP8) is copied and its `weight_scale` (per tensor or
    per channel) and, with static activations, `input_scale` are parameters the checkpoint must
    fill (a per-tensor scale of a fused q/k/v or gate/up shard fills that shard's rows; the
    static input scales of fused shards take their maximum, which is safe for every shard).
The matmul is `sgl.kernels.fp8.fp8_linear`."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from sgl.kernels.fp8 import FP8_DTYPE, is_fp8, quantize_rows_ref
from sgl.runtime.layers.lazy_tensor import Loaded, full_weight

if TYPE_CHECKING:
    from sgl.runtime.layers.linear import ParallelLinear, ShardId


@dataclass(frozen=True)
class Fp8Config:
    """How the linears of a model hold FP8 weights (built by runtime/loader/quantization.py)."""
    checkpoint_is_fp8: bool          # weights arrive in FP8 with scales; else quantized at load
    static_activations: bool = False  # an `input_scale` per linear from the checkpoint
    ignored: tuple[str, ...] = ()    # checkpoint module names (or "re:" patterns) kept unquantized

    def is_ignored(self, module_name: str) -> bool:
        for pattern in self.ignored:
            if pattern.startswith("re:"):
                if re.fullmatch(pattern[3:], module_name):
                    return True
            elif pattern == module_name:
                return True
        return False


def create_fp8_weights(layer: ParallelLinear, config: Fp8Config,
                       device: torch.device | None = None) -> None:
    """The layer's FP8 weight (output_size, input_size), its per-row scale and, for static
    activations, its input scale. Only what the checkpoint fills is a Parameter."""
    rows, cols = layer.output_size, layer.input_size
    layer.weight = nn.Parameter(torch.empty(rows, cols, dtype=FP8_DTYPE, device=device),
                                requires_grad=False)
    scale = torch.ones(rows, dtype=torch.float32, device=device)
    if config.checkpoint_is_fp8:
        layer.weight_scale = nn.Parameter(scale, requires_grad=False)
        layer.weight_scale.weight_loader = functools.partial(load_weight_scale, layer)
    else:
        layer.register_buffer("weight_scale", scale)
    layer.input_scale = None
    if config.static_activations:
        layer.input_scale = nn.Parameter(torch.zeros(1, dtype=torch.float32, device=device),
                                         requires_grad=False)
        layer.input_scale.weight_loader = load_input_scale


def copy_weight_slice(layer: ParallelLinear, dst: torch.Tensor, src: torch.Tensor,
                      rows: slice) -> None:
    """Copy a checkpoint slice into the layer's weight slice dst (rows `rows` of the weight):
    FP8 as it is, anything else quantized per row (its rows' scales written too)."""
    if is_fp8(src.dtype):
        if src.dtype != dst.dtype:
            raise ValueError(f"checkpoint weight is {src.dtype}, expected {dst.dtype}")
        dst.copy_(src)
        return
    if layer.quant is not None and layer.quant.checkpoint_is_fp8:  # scales come from the file
        raise ValueError("an FP8 checkpoint holds a weight that is not FP8: list its layer in "
                         "the quantization_config's ignore list")
    weight, scale = quantize_rows_ref(src.to(dst.device))  # (rows, cols), (rows, 1)
    dst.copy_(weight)
    layer.weight_scale[rows] = scale.view(-1)


def load_weight_scale(layer: ParallelLinear, param: nn.Parameter, loaded: Loaded,
                      shard_id: ShardId = None) -> None:
    """A checkpoint's weight scale: one value for the (shard's) whole tensor, or one per row
    ((N,) or (N, 1)), which the layer's own weight loader slices for this rank."""
    scale = full_weight(loaded).float()
    if scale.numel() == 1:
        offset, size = layer.shard_rows(shard_id)
        param.data[offset:offset + size].fill_(float(scale.reshape(())))
        return
    layer.weight_loader(param, scale.reshape(-1), shard_id)


def load_input_scale(param: nn.Parameter, loaded: Loaded, shard_id: ShardId = None) -> None:
    """A static activation scale; fused shards share one input, so the largest of theirs."""
    value = full_weight(loaded).float().reshape(-1)
    if value.numel() != 1:
        raise ValueError(f"input_scale: one value per tensor expected, got {value.numel()}")
    param.data.copy_(torch.maximum(param.data, value.to(param.device)))
