"""The scheduler: owns the queues, the KV bookkeeping and the step loop. CPU-only logic; the
runner does the device work. One step: admit -> build batch -> forward + sample -> update."""
from __future__ import annotations

import logging
import random
import time
from typing import Any, Optional

from sgl.runtime.cache.memory_pool import TokenAllocator
from sgl.runtime.cache.radix_cache import RadixCache
from sgl.runtime.io_struct import AbortReq, FlushCacheReq, TokenizedGenerateReq, TokenOutput
from sgl.runtime.scheduler.batch import build_step, StepInputs
from sgl.runtime.scheduler.kv_manager import KVManager
from sgl.runtime.scheduler.grammar import GrammarCoordinator
from sgl.runtime.scheduler.output import StopChecker, make_output, process_results
from sgl.runtime.scheduler.overlap import InFlight, chain_step, chainable, finish_launch
from sgl.runtime.scheduler.planner import NewTokenRatio, Planner, StepPlan
from sgl.runtime.scheduler.policy import order_waiting
from sgl.runtime.scheduler.req import Req, ReqState
from sgl.runtime.scheduler.stats import StepLogger

logger = logging.getLogger("sgl.scheduler")


class Scheduler:
    def __init__(self, server_args: Any, runner: Any, tokenizer: Any = None,
                 eos_token_ids: Optional[list[int]] = None) -> None:
        self.args, self.runner = server_args, runner
        self._init_cache()
        self._init_policy()
        self.stop_checker = StopChecker(tokenizer, eos_token_ids or [])
        self.grammar = GrammarCoordinator(server_args, tokenizer, runner.vocab_size, eos_token_ids or [])
        self._early_outputs: list[TokenOutput] = []  # finished before ever running
        self.spec = None
        if server_args.speculative_algorithm:
            from sgl.runtime.speculative import SpecDecoder
            self.spec = SpecDecoder(server_args, runner)
        self.stats = StepLogger(server_args, self)
        self.waiting: list[Req] = []
        self.running: list[Req] = []
        # Overlap scheduling (see overlap.py): on by default on GPUs, where it hides the host's
        # share of each decode step; on CPU the "device" is the host, so there is nothing to hide.
        # With tensor parallelism only where the runner shares each step's sampled ids with the
        # other ranks (`ModelRunner.tp_overlap`: on GPUs unless SGL_TP_OVERLAP=0).
        tp_ok = getattr(runner, "tp_size", 1) == 1 or getattr(runner, "tp_overlap", False)
        self.overlap = (not server_args.disable_overlap_schedule and hasattr(runner, "launch_batch")
                        and tp_ok and getattr(getattr(runner, "device", None), "type", "cpu") == "cuda")
        self.inflight: Optional[InFlight] = None
        self._arrivals = 0

    def _init_cache(self) -> None:
        self.allocator = TokenAllocator(self.runner.max_total_tokens)
        self.tree = RadixCache(self.allocator, disable=self.args.disable_radix_cache)
        self.kv = KVManager(self.allocator, self.tree, self.runner.req_to_token_pool)

    def _init_policy(self) -> None:
        self.rng = random.Random(self.args.random_seed)
        self.ratio = NewTokenRatio(self.args.schedule_conservativeness)
        chunk = self.runner.chunked_prefill_size
        # the most requests running at once (the planner's limit may be set lower, never higher)
        self.max_running = min(self.runner.max_running_requests, self.runner.req_to_token_pool.max_reqs - 1)
        self.planner = Planner(self.kv, chunk, self.max_running, self.ratio, mixed=self.args.enable_mixed_chunk)

    # -- inputs ------------------------------------------------------------------------------
    def handle(self, msg: Any) -> Optional[list[TokenOutput]]:
        if isinstance(msg, TokenizedGenerateReq):
            self.add_request(msg)
        elif isinstance(msg, AbortReq):
            return self.abort(msg.rid)
        elif isinstance(msg, FlushCacheReq):
            self.flush_cache()
        return None

    def add_request(self, msg: TokenizedGenerateReq) -> None:
        params = msg.sampling_params
        seed = params.seed if params.seed is not None else self.rng.getrandbits(31)
        req = Req(msg.rid, msg.input_ids, params, seed, self.stop_checker.stop_ids(params),
                  msg.return_logprob, msg.logprob_start_len, msg.top_logprobs_num, msg.stream,
                  arrival=self._arrivals)
        self._arrivals += 1
        req.min_tokens_ids = self.stop_checker.min_tokens_ids(params)
        req.arrival_time = time.monotonic()
        if self.grammar.submit(req):
            return  # waits in the grammar queue until compiled
        if req.is_finished:
            self._early_outputs.append(make_output(req))
            return
        self.waiting.append(req)

    def abort(self, rid: str) -> list[TokenOutput]:
        self.drain()  # a request in the step in flight holds KV the host has not accounted yet
        out = []
        for queue in (self.waiting, self.running, self.grammar.waiting):
            for req in [r for r in queue if r.rid == rid or rid == ""]:
                queue.remove(req)
                if req.state == ReqState.RUNNING:
                    self.kv.release(req)
                if self.spec is not None:
                    self.spec.release(req)
                req.finish({"type": "abort", "message": "aborted by request"})
                req.state = ReqState.FINISHED
                out.append(TokenOutput(rid=req.rid, new_token_ids=[], finished_reason=req.finished_reason,
                                       prompt_tokens=req.prompt_len, cached_tokens=req.cached_tokens,
                                       completion_tokens=len(req.output_ids)))
        return out

    def abort_all(self, message: str) -> list[TokenOutput]:
        try:
            self.drain()
        except Exception:  # the step in flight failed: abort its requests all the same
            self.inflight = None
        outs = self.abort("")
        for out in outs:
            out.finished_reason = {"type": "abort", "message": message}
        return outs

    def flush_cache(self) -> bool:
        """Drop the radix cache; only when idle (SGLang refuses otherwise too)."""
        self.drain()
        if self.running or self.waiting:
            return False
        self.tree.reset()
        return True

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.grammar.waiting or self._early_outputs
                    or self.inflight is not None)

    # -- the loop ----------------------------------------------------------------------------
    def step(self) -> list[TokenOutput]:
        outputs = self._take_early_outputs()
        if self.inflight is not None:  # launch the next step, then read this one back
            plan, inputs, pending = self.inflight
            self.inflight = chain_step(self, plan, inputs)
            outputs += self._complete(plan, inputs, pending)
            if self.inflight is not None:
                self.inflight = finish_launch(self, self.inflight)
                return outputs
        waiting = order_waiting(self.args.schedule_policy, self.waiting, self.kv.match, self.rng)
        if self.spec is not None:
            self.spec.propose(self.running, self.kv)
        plan = self.planner.plan(self.running, waiting)
        self.waiting = waiting
        if not plan.reqs:
            return outputs + self._fail_unschedulable()
        inputs: StepInputs = build_step(plan, self.kv, self.spec is not None and self.spec.needs_hidden)
        inputs.vocab_mask = self.grammar.vocab_mask(inputs.sample_reqs,
                                                    paths=inputs.sample_paths if inputs.verify else None)
        if self.overlap:
            pending = self.runner.launch_batch(inputs)
            if chainable(self, plan, inputs):
                self.inflight = (plan, inputs, pending)
                return outputs
            return outputs + self._complete(plan, inputs, pending)
        return outputs + self._process(plan, inputs, self.runner.run_batch(inputs))

    def _complete(self, plan: StepPlan, inputs: StepInputs, pending: Any) -> list[TokenOutput]:
        return self._process(plan, inputs, pending.resolve())

    def _process(self, plan: StepPlan, inputs: StepInputs, result: Any) -> list[TokenOutput]:
        outputs = process_results(plan, inputs, result, self)
        self.stats.log_step(plan, inputs)
        return outputs

    def drain(self) -> None:
        """Finish the step in flight (overlap); its outputs go out with the next step's."""
        if self.inflight is not None:
            plan, inputs, pending = finish_launch(self, self.inflight)
            self.inflight = None
            self._early_outputs += self._complete(plan, inputs, pending)

    def _take_early_outputs(self) -> list[TokenOutput]:
        ready, failed = self.grammar.poll() if self.grammar.waiting else ([], [])
        self.waiting.extend(ready)
        outputs = self._early_outputs + [make_output(r) for r in failed]
        self._early_outputs = []
        return outputs

    def finish(self, req: Req) -> None:
        if self.spec is not None:
            self.spec.release(req)
        self.kv.release(req)
        self.running.remove(req)
        req.state = ReqState.FINISHED

    def _fail_unschedulable(self) -> list[TokenOutput]:
        # Nothing could run: with nothing running, the head request can never fit.
        if not self.waiting or self.running:
            if self.grammar.waiting:
                time.sleep(0.001)  # only grammars compiling: do not spin
            return []
        req = self.waiting.pop(0)
        req.finish({"type": "abort", "message": f"request needs more KV cache than the pool holds "
                    f"({req.seq_len} tokens, pool {self.allocator.size})"})
        return [TokenOutput(rid=req.rid, new_token_ids=[], finished_reason=req.finished_reason,
                            prompt_tokens=req.prompt_len)]

    # -- observability -----------------------------------------------------------------------
    def token_usage(self) -> float:
        used = self.allocator.size - self.allocator.available_size() - self.tree.evictable_size()
        return used / max(self.allocator.size, 1)

    def check_pool_invariant(self) -> None:
        """free + evictable + locked == capacity, once no request holds KV."""
        assert not self.running, "requests still running"
        total = self.allocator.available_size() + self.tree.evictable_size() + self.tree.protected_size()
        assert total == self.allocator.size, (total, self.allocator.size)
