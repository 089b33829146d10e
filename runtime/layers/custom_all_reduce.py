"""A one-shot all-reduce over NVLink peer memory for the small all-reduces of tensor-parallel
decoding: `--enable-custom-all-reduce` (off by default: on H100s it did not beat NCCL in a
decode step, below).

Every rank copies its part into a buffer that all ranks of the node can read (PyTorch's symmetric
memory: CUDA IPC, no multicast); one kernel per rank waits at a barrier, sums all ranks' buffers
in rank order and waits at a second barrier before the buffer may be written again. One launch,
no ring steps, capturable in a CUDA graph, and every rank holds the same result. The kernels are
PyTorch's (`torch.ops.symm_mem.one_shot_all_reduce[_copy]`); tensors over `max_bytes` go to NCCL.

Measured on H100 x4 (docs/benchmarks.md, `python -m sgl.bench_all_reduce`): alone, in a CUDA
graph, one-shot takes 9-10 us where NCCL takes 12-15 us at 8-128 KB. In the 8B model's decode
step that saved 1% at TP=2 batch 1 and nothing at TP=4 batch 1; at TP=4 batch 64 (512 KB per
all-reduce: the limit was 1 MB then, 128 KB now) the step took 5.52 ms against NCCL's 4.58. A
step's all-reduce time is mostly waiting for the slowest rank, which neither method removes."""
from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import torch

logger = logging.getLogger("sgl.tp")

DTYPES = (torch.bfloat16, torch.float32)  # what PyTorch's one-shot kernel reduces

_current: OneShotAllReduce | None = None


class OneShotAllReduce:
    def __init__(self, group: Any, max_bytes: int) -> None:
        import torch.distributed._symmetric_memory as symm_mem

        self.group_name = group.group_name
        with warnings.catch_warnings():  # implicit (and deprecated) in newer PyTorch
            warnings.simplefilter("ignore", FutureWarning)
            if hasattr(symm_mem, "enable_symm_mem_for_group"):
                symm_mem.enable_symm_mem_for_group(self.group_name)
        self.max_bytes = max_bytes
        device = torch.device("cuda", torch.cuda.current_device())
        self.buffer = symm_mem.empty(max_bytes, dtype=torch.uint8, device=device)
        handle = symm_mem.rendezvous(self.buffer, self.group_name)  # collective: handles exchanged
        self.world = handle.world_size
        self._copy_op = getattr(torch.ops.symm_mem, "one_shot_all_reduce_copy", None)
        probe = torch.ones(8, dtype=torch.float32, device=device)
        try:
            got = self(probe)
        except RuntimeError:  # an older signature: stage the copy ourselves
            self._copy_op = None
            got = self(probe)
        if not bool((got == self.world).all()):
            raise RuntimeError(f"one-shot all-reduce self-check: {got.tolist()} != {self.world}")

    def fits(self, x: torch.Tensor) -> bool:
        nbytes = x.numel() * x.element_size()
        return x.dtype in DTYPES and x.is_contiguous() and nbytes % 16 == 0 and nbytes <= self.max_bytes

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        staged = self.buffer.view(x.dtype)[: x.numel()]
        if self._copy_op is not None:  # the kernel copies x in before its first barrier
            out = self._copy_op(staged, x.view(-1), "sum", self.group_name)
        else:
            staged.copy_(x.view(-1))
            out = torch.ops.symm_mem.one_shot_all_reduce(staged, "sum", self.group_name)
        return out.view(x.shape)


def current() -> OneShotAllReduce | None:
    return _current


def install(group: Any, max_bytes: int) -> OneShotAllReduce | None:
    """Set up the one-shot all-reduce for `group` (a collective call: every rank of the group
    makes it) for tensors of at most `max_bytes` (--custom-all-reduce-max-bytes). Returns None,
    leaving NCCL in charge, where PyTorch lacks the kernels."""
    global _current
    if not (torch.cuda.is_available() and hasattr(torch.ops.symm_mem, "one_shot_all_reduce")):
        logger.info("custom all-reduce: PyTorch has no symmetric-memory one-shot kernel; using NCCL")
        return None
    # The one-shot kernel reads peers' buffers directly: keep PyTorch from also setting up NVLink
    # multicast objects for them (a caller's own setting stands).
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    _current = OneShotAllReduce(group, max_bytes)
    return _current


def uninstall() -> None:
    global _current
    _current = None
