"""Tensor-parallel linear layers. Each rank holds a slice of the weight; `weight_loader` cuts the
rank's slice out of the checkpoint tensor, which may be a LazyTensor (safetensors): then only
that slice is read from disk. With tp_size == 1 they are plain linears.

Column-parallel: the output dim is split (no communication; each rank owns some heads/channels).
Row-parallel: the input dim is split and partial outputs are summed with an all-reduce."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from sgl.kernels.linear import linear
from sgl.runtime.layers import custom_all_reduce
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
    param.data.copy_(full_weight(loaded))


class _ParallelLinear(nn.Module):
    def __init__(self, input_size: int, output_size: int, bias: bool, tp_rank: int,
                 tp_size: int, params_dtype: torch.dtype | None) -> None:
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank, tp_size
        self.input_size, self.output_size = input_size, output_size  # this rank's sizes
        dtype = params_dtype or torch.get_default_dtype()
        self.weight = nn.Parameter(torch.empty(output_size, input_size, dtype=dtype), requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        self.bias = None
        if bias:
            self.bias = nn.Parameter(torch.empty(output_size, dtype=dtype), requires_grad=False)
            self.bias.weight_loader = self.weight_loader

    def _copy_rank_slice(self, param: nn.Parameter, loaded: Loaded, dim: int,
                         param_offset: int, size: int, loaded_offset: int) -> None:
        # Copy loaded[loaded_offset : +size] (along dim) into param[param_offset : +size].
        src = loaded.narrow(dim, loaded_offset, size)  # a LazyTensor reads only this from disk
        dst = param.data.narrow(dim, param_offset, size)
        if dst.shape != src.shape:
            raise ValueError(f"shape mismatch: parameter slice {tuple(dst.shape)} vs checkpoint {tuple(src.shape)}")
        dst.copy_(src)


class ColumnParallelLinear(_ParallelLinear):
    """y = x W^T + b with W split by output rows; y is this rank's slice unless gather_output."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False, tp_rank: int = 0,
                 tp_size: int = 1, gather_output: bool = False,
                 params_dtype: torch.dtype | None = None) -> None:
        super().__init__(input_size, divide(output_size, tp_size), bias, tp_rank, tp_size, params_dtype)
        self.gather_output = gather_output

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id: ShardId = None) -> None:
        size = param.shape[0]
        self._copy_rank_slice(param, loaded, 0, 0, size, self.tp_rank * size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = linear(x, self.weight, self.bias)  # (..., output_size / tp)
        return tp_all_gather(y, self.tp_size) if self.gather_output else y


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel linears on the same input fused into one matmul (gate|up).
    Each rank's weight is cat[rank slice of output 0, rank slice of output 1, ...]."""

    def __init__(self, input_size: int, output_sizes: Sequence[int], bias: bool = False,
                 tp_rank: int = 0, tp_size: int = 1,
                 params_dtype: torch.dtype | None = None) -> None:
        self.output_sizes = list(output_sizes)
        super().__init__(input_size, sum(output_sizes), bias, tp_rank, tp_size, params_dtype=params_dtype)

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id: ShardId = None) -> None:
        if shard_id is None:  # already fused in the checkpoint
            raise ValueError("MergedColumnParallelLinear needs the shard index of the loaded tensor")
        shard_size = divide(self.output_sizes[shard_id], self.tp_size)
        offset = sum(divide(s, self.tp_size) for s in self.output_sizes[:shard_id])
        self._copy_rank_slice(param, loaded, 0, offset, shard_size, self.tp_rank * shard_size)


class QKVParallelLinear(ColumnParallelLinear):
    """Fused q|k|v projection split by heads. When tp_size exceeds the number of KV heads, each KV
    head is replicated on tp_size / num_kv_heads ranks."""

    def __init__(self, hidden_size: int, head_dim: int, total_num_heads: int,
                 total_num_kv_heads: int, bias: bool = False, tp_rank: int = 0, tp_size: int = 1,
                 params_dtype: torch.dtype | None = None) -> None:
        self.head_dim = head_dim
        self.num_heads = divide(total_num_heads, tp_size)
        if tp_size >= total_num_kv_heads:
            self.num_kv_heads, self.kv_replicas = 1, divide(tp_size, total_num_kv_heads)
        else:
            self.num_kv_heads, self.kv_replicas = divide(total_num_kv_heads, tp_size), 1
        output_size = (self.num_heads + 2 * self.num_kv_heads) * head_dim * tp_size
        super().__init__(hidden_size, output_size, bias, tp_rank, tp_size, params_dtype=params_dtype)

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id: ShardId = None) -> None:
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        kv_rank = self.tp_rank // self.kv_replicas
        offset, size, src_offset = {
            "q": (0, q_size, self.tp_rank * q_size),
            "k": (q_size, kv_size, kv_rank * kv_size),
            "v": (q_size + kv_size, kv_size, kv_rank * kv_size),
        }[shard_id]
        self._copy_rank_slice(param, loaded, 0, offset, size, src_offset)


class RowParallelLinear(_ParallelLinear):
    """y = x W^T + b with W split by input columns; x is this rank's slice of the input. Partial
    sums are all-reduced; the bias is added once, after the reduction."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False, tp_rank: int = 0,
                 tp_size: int = 1, reduce_results: bool = True,
                 params_dtype: torch.dtype | None = None) -> None:
        super().__init__(divide(input_size, tp_size), output_size, bias, tp_rank, tp_size, params_dtype)
        self.reduce_results = reduce_results

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id: ShardId = None) -> None:
        if param.dim() == 1:  # bias: replicated
            default_weight_loader(param, loaded)
            return
        size = param.shape[1]
        self._copy_rank_slice(param, loaded, 1, 0, size, self.tp_rank * size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = linear(x, self.weight)  # (..., output_size), partial sum over this rank's inputs
        if self.reduce_results:
            y = tp_all_reduce(y, self.tp_size)
        # Without the reduction here the caller sums the ranks' outputs: add the bias on one rank.
        if self.bias is not None and (self.reduce_results or self.tp_rank == 0):
            y = y + self.bias
        return y


class ReplicatedLinear(_ParallelLinear):
    """The whole weight on every rank (an MoE router: every rank routes every token itself)."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False,
                 params_dtype: torch.dtype | None = None) -> None:
        super().__init__(input_size, output_size, bias, 0, 1, params_dtype)

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id: ShardId = None) -> None:
        default_weight_loader(param, loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
