"""Step logging in SGLang's format, and the counters the server's /metrics reads."""
from __future__ import annotations

import logging
import time
from typing import Any

from sgl.runtime.executor.forward_batch import ForwardMode

logger = logging.getLogger("sgl.scheduler")


class StepLogger:
    def __init__(self, server_args: Any, sched: Any) -> None:
        self.interval = max(server_args.decode_log_interval, 1)
        self.sched = sched
        self.num_decode_steps = 0
        self.tokens_since_log = 0
        self.last_log = time.monotonic()
        self.total_prompt_tokens = 0
        self.total_cached_tokens = 0
        self.total_generated_tokens = 0
        self.num_forward_passes = 0
        self.num_extend_passes = 0  # passes in EXTEND mode (prefill, jump-forward, verify): no decode graph
        self.num_retracted = 0
        self.num_overlapped = 0  # steps launched before the previous one was read back
        self.last_gen_throughput = 0.0
        self.cuda_graph_used = False

    def log_step(self, plan: Any, step: Any) -> None:
        self.num_forward_passes += 1
        self.num_extend_passes += step.batch.forward_mode is ForwardMode.EXTEND
        self.num_retracted += len(plan.retracted)
        self.total_generated_tokens += step.num_generated
        self.tokens_since_log += step.num_generated
        s = self.sched
        if plan.num_admitted:
            new_tokens = plan.num_tokens
            self.total_prompt_tokens += new_tokens + plan.num_cached
            self.total_cached_tokens += plan.num_cached
            logger.info(
                "Prefill batch, #new-seq: %d, #new-token: %d, #cached-token: %d, token usage: %.2f, "
                "#running-req: %d, #queue-req: %d", plan.num_admitted, new_tokens, plan.num_cached,
                s.token_usage(), len(s.running), len(s.waiting))
            return
        self.num_decode_steps += 1
        self.cuda_graph_used = getattr(s.runner, "last_used_cuda_graph", False)
        if self.num_decode_steps % self.interval:
            return
        now = time.monotonic()
        self.last_gen_throughput = self.tokens_since_log / max(now - self.last_log, 1e-9)
        self.tokens_since_log, self.last_log = 0, now
        num_tokens = sum(r.seq_len for r in s.running)
        spec = ""
        if s.spec is not None:
            accept_len, accept_rate = s.spec.take_interval()
            spec = f"accept len: {accept_len:.2f}, accept rate: {accept_rate:.2f}, "
        logger.info(
            "Decode batch, #running-req: %d, #token: %d, token usage: %.2f, %scuda graph: %s, "
            "gen throughput (token/s): %.2f, #queue-req: %d", len(s.running), num_tokens,
            s.token_usage(), spec, self.cuda_graph_used, self.last_gen_throughput, len(s.waiting))

    def cache_hit_rate(self) -> float:
        return self.total_cached_tokens / max(self.total_prompt_tokens, 1)
