"""Tensor-parallel linear layers. Each rank holds a slice of the weight; `weight_loader` cuts the
rank's slice out of the checkpoint tensor, which may be a LazyTensor (safetensors): then only
that slice is read from disk. With tp_size == 1 they are plain linears.

Column-parallel: the output dim is split (no communication; each rank owns some heads/channels).
Row-parallel: the input dim is split and partial outputs are summed with an all-reduce.

With an `Fp8Config` (`quant`) the weight is FP8 with a scale per output row (runtime/layers/fp8.py):
16/32-bit checkpoint slices are quantized as they are copied in."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from sgl.kernels.fp8 import fp8_linear, is_fp8
from sgl.kernels.linear import linear
from sgl.runtime.layers import custom_all_reduce
from sgl.runtime.layers.fp8 import Fp8Config, copy_weight_slice, create_fp8_weights
from sgl.runtime.layers.lazy_tensor import Loaded, full_weight

ShardId = int | str | None


def tp_all_reduce(x: torch.Tensor, tp_size: int) -> torch.Tensor:
    """The sum of x over the ranks: one-shot through peer memory when small (decode) and
    installed, else NCCL/gloo in place."""
    if tp_size == 1:
        return x
    one_shot = custom_all_reduce.current()
    if one_shot is not None and one_shot.fits(x):
        return one_shot(x)
    dist.all_reduce(x)
    return x


def tp_all_gather(x: torch.Tensor, tp_size: int) -> torch.Tensor:
    """Concatenate every rank's x along the last dim."""
    if tp_size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(tp_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=-1)


def divide(numerator: int, denominator: int) -> int:
    if numerator % denominator:
        raise ValueError(f"{numerator} is not divisible by {denominator}: choose a tp_size that "
                         "divides the model's attention heads and intermediate size")
    return numerator // denominator


def default_weight_loader(param: nn.Parameter, loaded: Loaded,
                          shard_id: ShardId = None) -> None:
    """Copy a replicated tensor whole (dtype/device converted by the copy)."""
    if param.shape != loaded.shape:
        raise ValueError(f"shape mismatch: parameter {tuple(param.shape)} vs checkpoint {tuple(loaded.shape)}")
    param.data.copy_(_not_fp8(full_weight(loaded)))


def _not_fp8(src: torch.Tensor) -> torch.Tensor:
    # An FP8 tensor cast to a 16-bit parameter drops its scale: a silently wrong model.
    if is_fp8(src.dtype):
        raise ValueError(f"checkpoint tensor is {src.dtype} but the model was not built for FP8: "
                         "the checkpoint's config.json lacks its quantization_config")
    return src


class ParallelLinear(nn.Module):
    """The base of the tensor-parallel linears: weight (and bias) of this rank's shape."""

    def __init__(self, input_size: int, output_size: int, bias: bool, tp_rank: int,
                 tp_size: int, params_dtype: torch.dtype | None,
                 quant: Fp8Config | None = None) -> None:
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank, tp_size
        self.input_size, self.output_size = input_size, output_size  # this rank's sizes
        self.params_dtype = params_dtype or torch.get_default_dtype()
        self.quant: Fp8Config | None = None
        self.set_quantization(quant)
        self.bias = None
        if bias:
            self.bias = nn.Parameter(torch.empty(output_size, dtype=self.params_dtype), requires_grad=False)
            self.bias.weight_loader = self.weight_loader

    def set_quantization(self, quant: Fp8Config | None) -> None:
        """(Re)create the weight unquantized or in FP8 (before loading: the loader turns layers
        a checkpoint leaves unquantized back with None)."""
        # at construction: the default device (the loader's context); later: the weight's own
        device = self.weight.device if hasattr(self, "weight") else None
        for name in ("weight", "weight_scale", "input_scale"):
            if hasattr(self, name):
                delattr(self, name)
        self.quant = quant
        if quant is None:
            self.weight = nn.Parameter(torch.empty(self.output_size, self.input_size,
                                                   dtype=self.params_dtype, device=device),
                                       requires_grad=False)
        else:
            create_fp8_weights(self, quant, device)
        self.weight.weight_loader = self.weight_loader

    def shard_rows(self, shard_id: ShardId) -> tuple[int, int]:
        """(first row, number of rows) of this rank's weight that checkpoint shard fills."""
        return 0, self.output_size

    def _matmul(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.quant is None:
            return linear(x, self.weight, bias)
        return fp8_linear(x, self.weight, self.weight_scale, bias, self.input_scale)

    def _copy_rank_slice(self, param: nn.Parameter, loaded: Loaded, dim: int,
                         param_offset: int, size: int, loaded_offset: int) -> None:
        # Copy loaded[loaded_offset : +size] (along dim) into param[param_offset : +size].
        src = loaded.narrow(dim, loaded_offset, size)  # a LazyTensor reads only this from disk
        dst = param.data.narrow(dim, param_offset, size)
        if dst.shape != src.shape:
            raise ValueError(f"shape mismatch: parameter slice {tuple(dst.shape)} vs checkpoint {tuple(src.shape)}")
        if self.quant is not None and param is self.weight:
            rows = slice(param_offset, param_offset + size) if dim == 0 else slice(None)
            copy_weight_slice(self, dst, src, rows)
            return
        dst.copy_(_not_fp8(src))


class ColumnParallelLinear(ParallelLinear):
    """y = x W^T + b with W split by output rows; y is this rank's slice unless gather_output."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False, tp_rank: int = 0,
                 tp_size: int = 1, gather_output: bool = False,
                 params_dtype: torch.dtype | None = None, quant: Fp8Config | None = None) -> None:
        super().__init__(input_size, divide(output_size, tp_size), bias, tp_rank, tp_size,
                         params_dtype, quant)
        self.gather_output = gather_output

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id: ShardId = None) -> None:
        size = param.shape[0]
        self._copy_rank_slice(param, loaded, 0, 0, size, self.tp_rank * size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._matmul(x, self.bias)  # (..., output_size / tp)
        return tp_all_gather(y, self.tp_size) if self.gather_output else y


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel linears on the same input fused into one matmul (gate|up).
    Each rank's weight is cat[rank slice of output 0, rank slice of output 1, ...]."""

    def __init__(self, input_size: int, output_sizes: Sequence[int], bias: bool = False,
                 tp_rank: int = 0, tp_size: int = 1, params_dtype: torch.dtype | None = None,
                 quant: Fp8Config | None = None) -> None:
        self.output_sizes = list(output_sizes)
        super().__init__(input_size, sum(output_sizes), bias, tp_rank, tp_size,
                         params_dtype=params_dtype, quant=quant)

    def shard_rows(self, shard_id: ShardId) -> tuple[int, int]:
        if shard_id is None:  # already fused in the checkpoint
            raise ValueError("MergedColumnParallelLinear needs the shard index of the loaded tensor")
        offset = sum(divide(s, self.tp_size) for s in self.output_sizes[:shard_id])
        return offset, divide(self.output_sizes[shard_id], self.tp_size)

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id: ShardId = None) -> None:
        offset, shard_size = self.shard_rows(shard_id)
        self._copy_rank_slice(param, loaded, 0, offset, shard_size, self.tp_rank * shard_size)


class QKVParallelLinear(ColumnParallelLinear):
    """Fused q|k|v projection split by heads. When tp_size exceeds the number of KV heads, each KV
    head is replicated on tp_size / num_kv_heads ranks."""

    def __init__(self, hidden_size: int, head_dim: int, total_num_heads: int,
                 total_num_kv_heads: int, bias: bool = False, tp_rank: int = 0, tp_size: int = 1,
                 params_dtype: torch.dtype | None = None, quant: Fp8Config | None = None) -> None:
        self.head_dim = head_dim
        self.num_heads = divide(total_num_heads, tp_size)
        if tp_size >= total_num_kv_heads:
            self.num_kv_heads, self.kv_replicas = 1, divide(tp_size, total_num_kv_heads)
        else:
            self.num_kv_heads, self.kv_replicas = divide(total_num_kv_heads, tp_size), 1
        output_size = (self.num_heads + 2 * self.num_kv_heads) * head_dim * tp_size
        super().__init__(hidden_size, output_size, bias, tp_rank, tp_size, params_dtype=params_dtype,
                         quant=quant)

    def shard_rows(self, shard_id: ShardId) -> tuple[int, int]:
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return {"q": (0, q_size), "k": (q_size, kv_size), "v": (q_size + kv_size, kv_size)}[shard_id]

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id: ShardId = None) -> None:
        offset, size = self.shard_rows(shard_id)
        src_rank = self.tp_rank if shard_id == "q" else self.tp_rank // self.kv_replicas
        self._copy_rank_slice(param, loaded, 0, offset, size, src_rank * size)


class RowParallelLinear(ParallelLinear):
    """y = x W^T + b with W split by input columns; x is this rank's slice of the input. Partial
    sums are all-reduced; the bias is added once, after the reduction."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False, tp_rank: int = 0,
                 tp_size: int = 1, reduce_results: bool = True,
                 params_dtype: torch.dtype | None = None, quant: Fp8Config | None = None) -> None:
        super().__init__(divide(input_size, tp_size), output_size, bias, tp_rank, tp_size,
                         params_dtype, quant)
        self.reduce_results = reduce_results

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id: ShardId = None) -> None:
        if param.dim() == 1:  # bias or per-channel weight scale: replicated
            default_weight_loader(param, loaded)
            return
        size = param.shape[1]
        self._copy_rank_slice(param, loaded, 1, 0, size, self.tp_rank * size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._matmul(x, None)  # (..., output_size), partial sum over this rank's inputs
        if self.reduce_results:
            y = tp_all_reduce(y, self.tp_size)
        # Without the reduction here the caller sums the ranks' outputs: add the bias on one rank.
        if self.bias is not None and (self.reduce_results or self.tp_rank == 0):
            y = y + self.bias
        return y


class ReplicatedLinear(ParallelLinear):
    """The whole weight on every rank (an MoE router: every rank routes every token itself).
    Never FP8: a router's few weights decide which experts run."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False,
                 params_dtype: torch.dtype | None = None) -> None:
        super().__init__(input_size, output_size, bias, 0, 1, params_dtype)

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id: ShardId = None) -> None:
        default_weight_loader(param, loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
