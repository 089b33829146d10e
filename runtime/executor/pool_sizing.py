"""The KV pool's automatic size: on CPU a fixed budget; on a GPU what is left of
--mem-fraction-static after the weights, less the measured reserve of the largest step
(memory_profile.py) and the decode graphs' logits."""
from __future__ import annotations

import gc
import logging
from typing import Any, Optional

import torch

from sgl.runtime.executor.memory_profile import log_reserve, profile_steps

logger = logging.getLogger("sgl.runner")

_CPU_KV_BYTES = 1 << 30     # default KV budget on CPU
_GPU_MEM_FRACTION = 0.88    # weights + KV share of GPU memory when unset (an 80 GB card)
_MAX_PROFILE_TOKENS = 32768  # longest profiled prefill (chunked prefill off: the context length)


def static_fraction(dtype: torch.dtype) -> float:
    """The default share of GPU memory for weights and KV pool. The rest (activations, graph
    pools, kernel modules) grows with the element size: a float32 8B engine given bfloat16's
    headroom ran out of memory loading a kernel (H100)."""
    return 1 - (1 - _GPU_MEM_FRACTION) * max(1.0, dtype.itemsize / 2)


def auto_pool_tokens(runner: Any, bytes_per_token: int) -> int:
    """The KV pool's size in tokens when --max-total-tokens is unset."""
    if runner.device.type == "cpu":
        logger.info("KV pool sized from the CPU budget (%d MB); no profile step on CPU",
                    _CPU_KV_BYTES >> 20)
        return int(min(65536, max(4096, _CPU_KV_BYTES // bytes_per_token)))
    # Memory an earlier engine of this process freed sits in torch's cache, which the driver
    # counts as used: hand it back first, or a second engine gets a pool sized from scraps.
    gc.collect()
    torch.cuda.empty_cache()
    reserve = step_reserve_bytes(runner)
    free, total = torch.cuda.mem_get_info(runner.device)
    frac = runner.args.mem_fraction_static or static_fraction(runner.dtype)
    by_fraction = total * frac - (total - free)  # what is left of our share after the weights
    budget = by_fraction if reserve is None else min(by_fraction, free - reserve)
    logger.info("KV pool budget %.2f GB: %.2f GB free after the weights, %.2f GB by "
                "mem_fraction_static %.3f%s", budget / 1e9, free / 1e9, by_fraction / 1e9, frac,
                "" if reserve is None else f", {(free - reserve) / 1e9:.2f} GB after the "
                f"{reserve / 1e9:.2f} GB step and graph reserve")
    return max(int(budget // bytes_per_token), 1024)

def step_reserve_bytes(runner: Any) -> Optional[int]:
    """What needs room outside the pool: the largest step (profiled), and the decode graphs
    (each captured size keeps its (bs, vocab) float32 logits; their activations are at
    most the profiled decode step's). None if the profile step itself ran out of memory:
    the fraction alone sizes the pool then."""
    num_tokens = min(runner.chunked_prefill_size, _MAX_PROFILE_TOKENS, runner.context_len)
    try:
        reserve = profile_steps(runner, num_tokens, runner.max_running_requests)
    except torch.OutOfMemoryError:
        logger.warning("the profile step ran out of memory; sizing the KV pool by "
                       "mem_fraction_static alone")
        gc.collect()
        torch.cuda.empty_cache()
        return None
    log_reserve(reserve)
    runner.step_reserve = reserve
    graphs = sum(runner._graph_batch_sizes()) * runner.vocab_size * 4  # each size keeps its logits
    logger.info("Decode graphs' logits: %.2f GB", graphs / 1e9)
    return reserve.bytes + graphs + reserve.decode_bytes
