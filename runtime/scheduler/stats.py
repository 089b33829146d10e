"""Step logging in SGLang's format, and the counters the server's /metrics reads."""
from __future__ import annotations

import logging
import time
from typing import Any, Optional, Protocol

from sgl.runtime.executor.forward_batch import ForwardMode
from sgl.runtime.scheduler.batch import StepBook
from sgl.runtime.scheduler.contract import RunResult, StepInputs
from sgl.runtime.scheduler.planner import StepPlan
from sgl.runtime.speculative.decoder import SpecDecoder

logger = logging.getLogger("sgl.scheduler")


class Queues(Protocol):
    """The scheduler as the step log sees it."""
    running: list[Any]
    waiting: list[Any]

    def token_usage(self) -> float: ...


class StepLogger:
    def __init__(self, server_args: Any, queues: Queues) -> None:
        self.interval = max(server_args.decode_log_interval, 1)
        self.queues = queues
        self.num_decode_steps = 0
        self.tokens_since_log = 0
        self.last_log = time.monotonic()
        self.total_prompt_tokens = 0   # prompt tokens of every admission (cached + computed)
        self.total_cached_tokens = 0
        self.total_generated_tokens = 0
        self.num_forward_passes = 0
        self.num_extend_passes = 0  # passes in EXTEND mode (prefill, jump-forward, verify): no decode graph
        self.num_retracted = 0
        self.num_preempted = 0  # retracted for higher-priority admissions
        self.num_overlapped = 0  # steps launched before the previous one was read back
        self.last_gen_throughput = 0.0
        self.cuda_graph_used = False

    def log_step(self, plan: StepPlan, step: StepInputs, book: StepBook, result: RunResult,
                 spec: Optional[SpecDecoder]) -> None:
        self.num_forward_passes += 1
        self.num_extend_passes += step.batch.forward_mode is ForwardMode.EXTEND
        self.num_retracted += len(plan.retracted)
        self.num_preempted += len(plan.preempted)
        self.total_generated_tokens += book.num_generated
        self.tokens_since_log += book.num_generated
        if plan.num_prompt_tokens:  # a step with prompt work: its first chunk or a later one
            self._log_prefill(plan)
            return
        self.num_decode_steps += 1
        self.cuda_graph_used = result.used_cuda_graph
        if self.num_decode_steps % self.interval == 0:
            self._log_decode(spec)

    def _log_prefill(self, plan: StepPlan) -> None:
        q = self.queues
        self.total_prompt_tokens += plan.num_prompt_tokens + plan.num_cached
        self.total_cached_tokens += plan.num_cached
        logger.info(
            "Prefill batch, #new-seq: %d, #new-token: %d, #cached-token: %d, token usage: %.2f, "
            "#running-req: %d, #queue-req: %d", plan.num_admitted, plan.num_prompt_tokens,
            plan.num_cached, q.token_usage(), len(q.running), len(q.waiting))

    def _log_decode(self, spec: Optional[SpecDecoder]) -> None:
        q = self.queues
        now = time.monotonic()
        self.last_gen_throughput = self.tokens_since_log / max(now - self.last_log, 1e-9)
        self.tokens_since_log, self.last_log = 0, now
        num_tokens = sum(r.seq_len for r in q.running)
        accept = ""
        if spec is not None:
            accept_len, accept_rate = spec.take_interval()
            accept = f"accept len: {accept_len:.2f}, accept rate: {accept_rate:.2f}, "
        logger.info(
            "Decode batch, #running-req: %d, #token: %d, token usage: %.2f, %scuda graph: %s, "
            "gen throughput (token/s): %.2f, #queue-req: %d", len(q.running), num_tokens,
            q.token_usage(), accept, self.cuda_graph_used, self.last_gen_throughput, len(q.waiting))

    def cache_hit_rate(self) -> float:
        return self.total_cached_tokens / max(self.total_prompt_tokens, 1)
