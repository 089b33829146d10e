"""How much GPU memory the largest step the flags allow needs beyond the weights and the KV
pool, measured once at start-up with a profile step (as vLLM's profile run does), so that the
automatically sized pool leaves room for it: a prefill of `--chunked-prefill-size` tokens whose
every row scores a prompt logprob with the top 20, sampling with every logit processor on, and
an eager decode batch of `--max-running-requests` rows. Both run on a scratch pool (not counted)
before the real pool exists, of the pool's dtype (--kv-cache-dtype: FP8 runs its own kernels).
An embedding model (--is-embedding) profiles its pooled prefill alone: it has no logit rows
and no decode. On CPU nothing is measured (the pool has a fixed CPU budget)."""
from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from typing import Any

import torch

from sgl.runtime.cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
from sgl.runtime.executor.forward_batch import ForwardBatch
from sgl.runtime.executor.step_results import step_outputs
from sgl.runtime.sampling.params import SamplingParams
from sgl.runtime.scheduler.contract import SamplingInputs, StepInputs

logger = logging.getLogger("sgl.runner")

PROFILE_TOP_LOGPROBS = 20  # the top-k the prefill profile step reports for every row
# A sampled row with every processor on: temperature, top-k/p, min-p, all three penalties.
_HEAVY = SamplingParams(temperature=0.7, top_k=50, top_p=0.9, min_p=0.05, frequency_penalty=0.1,
                        presence_penalty=0.1, repetition_penalty=1.1)


@dataclass
class StepReserve:
    prefill_bytes: int   # peak of the prefill profile step beyond what was allocated before
    decode_bytes: int    # ... of the decode profile step
    num_tokens: int
    num_rows: int

    @property
    def bytes(self) -> int:
        return max(self.prefill_bytes, self.decode_bytes)


def profile_steps(runner: Any, num_tokens: int, num_rows: int) -> StepReserve:
    """Run the two profile steps on `runner` (model, attention backend and sampler loaded; no KV
    pool yet) and return their measured peaks. Runs on CPU too (measuring nothing): the same
    code path is tested there."""
    device, L = runner.device, runner.loaded
    measure = device.type == "cuda"
    if measure:
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device) if measure else 0
    pools = getattr(runner, "kv_pool", None), getattr(runner, "req_to_token_pool", None)
    runner.kv_pool = MHATokenToKVPool(num_tokens + num_rows, L.num_kv_heads, L.head_dim,
                                      L.num_layers, runner.kv_cache_dtype, device)
    runner.req_to_token_pool = ReqToTokenPool(num_rows + 2, num_tokens + 8, device)
    scratch = torch.cuda.memory_allocated(device) - before if measure else 0
    try:
        if runner.pooling is not None:
            prefill, decode = _peak(runner, _pool_step(num_tokens), before + scratch), 0
        else:
            prefill = _peak(runner, _prefill_step(runner, num_tokens), before + scratch)
            decode = _peak(runner, _decode_step(runner, num_tokens, num_rows), before + scratch)
    finally:
        runner.kv_pool, runner.req_to_token_pool = pools
        gc.collect()
        if measure:
            torch.cuda.empty_cache()
    return StepReserve(prefill, decode, num_tokens, num_rows)


def _peak(runner: Any, step: StepInputs, base: int) -> int:
    measure = runner.device.type == "cuda"
    if measure:
        torch.cuda.reset_peak_memory_stats(runner.device)
    runner.req_to_token_pool.apply(step.table_writes)
    rows = runner.forward_rows(step.batch, pool_spans=step.pool_spans)
    out = step_outputs(rows, step, runner.sampler, runner.vocab_size, runner.device)
    del rows, out
    if not measure:
        return 0
    torch.cuda.synchronize(runner.device)
    return max(torch.cuda.max_memory_allocated(runner.device) - base, 0)


def _prefill_step(runner: Any, n: int) -> StepInputs:
    """One request of n tokens: every row scores a prompt logprob with the top 20, and as many
    rows as one logit chunk holds also sample (a grammar mask on each)."""
    ids = [i % runner.vocab_size for i in range(n)]
    batch = ForwardBatch.build(ids, list(range(n)), list(range(1, n + 1)), [0], [0], [n], list(range(n)))
    num_sampled = min(n, runner.max_logit_rows)
    step = StepInputs(batch=batch, sample_rows=list(range(num_sampled)),
                      sampling=_sampling(num_sampled), lp_rows=list(range(n)), lp_targets=ids,
                      top_logprobs_num=PROFILE_TOP_LOGPROBS, need_logprobs=True)
    step.table_writes = _table_writes([0], [list(range(1, n + 1))])
    step.vocab_mask = _full_mask(num_sampled, runner.vocab_size)
    return step


def _pool_step(n: int) -> StepInputs:
    """One embedding request of n tokens, every row pooled, none through the LM head."""
    batch = ForwardBatch.build([0] * n, list(range(n)), list(range(1, n + 1)), [0], [0], [n], [])
    return StepInputs(batch=batch, pool_spans=[(0, n)],
                      table_writes=_table_writes([0], [list(range(1, n + 1))]))


def _decode_step(runner: Any, num_tokens: int, num_rows: int) -> StepInputs:
    """num_rows requests decoding one token each, every row sampled."""
    slots = list(range(num_tokens + 1, num_tokens + num_rows + 1))
    batch = ForwardBatch.build([1] * num_rows, [0] * num_rows, slots, list(range(num_rows)),
                               [0] * num_rows, [1] * num_rows, list(range(num_rows)))
    step = StepInputs(batch=batch, sample_rows=list(range(num_rows)), sampling=_sampling(num_rows),
                      top_logprobs_num=PROFILE_TOP_LOGPROBS, need_logprobs=True)
    step.table_writes = _table_writes(list(range(num_rows)), [[s] for s in slots])
    step.vocab_mask = _full_mask(num_rows, runner.vocab_size)
    return step


def _sampling(n: int) -> SamplingInputs:
    return SamplingInputs(params=[_HEAVY] * n, seeds=list(range(n)), steps=[1] * n,
                          prompt_ids=[[1, 2, 3]] * n, output_ids=[[4]] * n, min_tokens_ids=[set()] * n)


def _table_writes(rows: list[int], slots: list[list[int]]) -> tuple[torch.Tensor, ...]:
    r = [row for row, s in zip(rows, slots) for _ in s]
    c = [col for s in slots for col in range(len(s))]
    v = [x for s in slots for x in s]
    return torch.tensor(r), torch.tensor(c), torch.tensor(v, dtype=torch.int32)


def _full_mask(n: int, vocab_size: int) -> torch.Tensor:
    return torch.full((n, (vocab_size + 31) // 32), -1, dtype=torch.int32)


def log_reserve(reserve: StepReserve) -> None:
    logger.info("Profile step: %d prompt tokens with top-%d logprobs peaked at %.2f GB, a decode "
                "batch of %d sampled rows at %.2f GB; reserving %.2f GB outside the KV pool",
                reserve.num_tokens, PROFILE_TOP_LOGPROBS, reserve.prefill_bytes / 1e9,
                reserve.num_rows, reserve.decode_bytes / 1e9, reserve.bytes / 1e9)
