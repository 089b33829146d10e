"""The scheduler: owns the queues, the KV bookkeeping and the step loop. CPU-only logic; the
runner does the device work. One step: admit -> build batch -> forward + sample -> update."""
from __future__ import annotations

import dataclasses
import logging
import random
import time
from typing import Any, Optional, Protocol

from sgl.runtime.cache.memory_pool import ReqTable, TokenAllocator
from sgl.runtime.cache.radix_cache import RadixCache, assert_pool_invariant
from sgl.runtime.io_struct import (AbortReq, FlushCacheReq, TokenizedGenerateReq, TokenOutput,
                                   abort_reason)
from sgl.runtime.scheduler.batch import StepBook, build_step
from sgl.runtime.scheduler.contract import PendingStep, RunResult, Runner, StepInputs
from sgl.runtime.scheduler.grammar import GrammarCoordinator
from sgl.runtime.scheduler.hidden_states import HiddenStates
from sgl.runtime.scheduler.kv_manager import KVManager
from sgl.runtime.scheduler.output import ResultProcessor, StopChecker, make_output
from sgl.runtime.scheduler.overlap import InFlight, OverlapChain
from sgl.runtime.scheduler.planner import NewTokenRatio, Planner, StepPlan
from sgl.runtime.scheduler.policy import order_waiting
from sgl.runtime.scheduler.priority import PriorityOrder
from sgl.runtime.scheduler.recovery import OpenStep, StepRecovery
from sgl.runtime.scheduler.req import Req, ReqState
from sgl.runtime.scheduler.stats import StepLogger
from sgl.runtime.speculative.decoder import SpecDecoder, optional_spec

logger = logging.getLogger("sgl.scheduler")


class StepHook(Protocol):
    """Watches every `Scheduler.step` (benchmarks time and profile steps this way)."""

    def begin(self) -> None: ...

    def end(self, seconds: float, ran_extend: bool) -> None: ...


class Scheduler:
    def __init__(self, server_args: Any, runner: Runner, tokenizer: Any = None,
                 eos_token_ids: Optional[list[int]] = None) -> None:
        self.args, self.runner, self.info = server_args, runner, runner.info
        self._init_cache()
        self._init_policy()
        self.stop_checker = StopChecker(tokenizer, eos_token_ids or [])
        self.grammar = GrammarCoordinator(server_args, tokenizer, self.info.vocab_size, eos_token_ids or [])
        self._early_outputs: list[TokenOutput] = []  # finished before ever running
        self.spec: Optional[SpecDecoder] = optional_spec(server_args, runner, self.kv)
        self.stats = StepLogger(server_args, self)
        self.results = ResultProcessor(self.kv, self.grammar, self.stop_checker, self.spec, self.finish)
        self.recovery = StepRecovery(self.planner, self.kv, self._release_draft, self.finish)
        self._open: list[OpenStep] = []  # launched steps not read back yet (undone if one fails)
        self.waiting: list[Req] = []
        self.running: list[Req] = []
        # Overlap scheduling (overlap.py): where the runner launches asynchronously (GPUs), it
        # hides the host's share of each decode step; on CPU the "device" is the host. Tests may
        # set `overlap` themselves: the logic is the same.
        self.overlap = not server_args.disable_overlap_schedule and self.info.can_overlap
        self.chain = OverlapChain(runner, self.kv, self.grammar)
        self.inflight: Optional[InFlight] = None
        self.step_hooks: list[StepHook] = []
        self._arrivals = 0

    def _init_cache(self) -> None:
        self.allocator = TokenAllocator(self.info.max_total_tokens)
        self.tree = RadixCache(self.allocator, disable=self.args.disable_radix_cache)
        table = ReqTable(self.info.max_req_rows, self.info.table_width)
        self.kv = KVManager(self.allocator, self.tree, table)

    def _init_policy(self) -> None:
        self.rng = random.Random(self.args.random_seed)
        self.ratio = NewTokenRatio(self.args.schedule_conservativeness)
        # the most requests running at once (the planner's limit may be set lower, never higher)
        self.max_running = min(self.info.max_running_requests, self.info.max_req_rows - 1)
        self.priority = PriorityOrder.from_args(self.args)
        self.planner = Planner(self.kv, self.info.chunked_prefill_size, self.max_running, self.ratio,
                               mixed=self.args.enable_mixed_chunk, priority=self.priority)

    def set_speculative(self, server_args: Any) -> None:
        """Switch speculative decoding to these settings (None algorithm: off) between requests;
        the runner loads the matching drafter and verify graphs (benchmark sweeps)."""
        assert not self.running and not self.waiting, "switch speculation only when idle"
        self.runner.set_speculative(server_args)
        self.spec = optional_spec(server_args, self.runner, self.kv)
        self.results.spec = self.spec

    def set_max_running(self, limit: int) -> None:
        """Run at most `limit` requests at once (never more than the runner allows)."""
        self.planner.max_running = min(limit, self.max_running)

    def set_jump_forward(self, enabled: bool) -> None:
        """Jump forward over forced grammar text or not (--disable-jump-forward at run time)."""
        self.grammar.jump_forward = enabled

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
        params = self._fit_pool(msg)
        seed = params.seed if params.seed is not None else self.rng.getrandbits(31)
        req = Req(msg.rid, msg.input_ids, params, seed, self.stop_checker.stop_ids(params),
                  msg.return_logprob, msg.logprob_start_len, msg.top_logprobs_num, msg.stream,
                  arrival=self._arrivals)
        self._arrivals += 1
        req.min_tokens_ids = self.stop_checker.min_tokens_ids(params)
        if msg.is_embedding and self.info.pooling is not None:
            req.pooling = self.info.pooling.with_dimensions(msg.dimensions)
        if msg.return_hidden_states:
            req.hidden = HiddenStates(last_only=msg.return_hidden_states == "last")
        if self.priority is not None:
            req.priority = self.priority.unset() if msg.priority is None else msg.priority
        req.arrival_time = time.monotonic()
        if self.grammar.submit(req):
            return  # waits in the grammar queue until compiled
        if req.is_finished:
            self._early_outputs.append(make_output(req))
            return
        self.enqueue(req)

    def enqueue(self, req: Req) -> None:
        """A request ready to run (its grammar compiled) joins the waiting queue; a disaggregated
        decode server sends those whose prompt KV comes from a prefill server elsewhere."""
        self.waiting.append(req)

    def _fit_pool(self, msg: TokenizedGenerateReq) -> Any:
        """A request may never hold more KV than the pool: it would stall at the pool's edge
        with nothing left to evict (SGLang clips max_new_tokens the same way). It finishes with
        `length` where the pool ends; a prompt that fills the pool alone is refused when it
        reaches the queue's head (`_fail_unschedulable`)."""
        params = msg.sampling_params
        num_draft = self.args.speculative_settings()[2] if self.args.speculative_algorithm else 0
        room = self.allocator.size - len(msg.input_ids) - 1 - num_draft  # drafts need slots too
        if 0 <= room < params.max_new_tokens:
            logger.warning("request %s: max_new_tokens %d clipped to %d, the room its %d-token "
                           "prompt leaves in the %d-token KV pool", msg.rid, params.max_new_tokens,
                           room, len(msg.input_ids), self.allocator.size)
            params = dataclasses.replace(params, max_new_tokens=room,
                                         min_new_tokens=min(params.min_new_tokens, room))
        return params

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
            out.finished_reason = abort_reason(message, 500)
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
        if not self.step_hooks:
            return self._guarded_step()
        for hook in self.step_hooks:
            hook.begin()
        extend_before, t0 = self.stats.num_extend_passes, time.perf_counter()
        try:
            return self._guarded_step()
        finally:
            elapsed, ran_extend = time.perf_counter() - t0, self.stats.num_extend_passes > extend_before
            for hook in self.step_hooks:
                hook.end(elapsed, ran_extend)

    def _guarded_step(self) -> list[TokenOutput]:
        try:
            return self._step()
        except Exception as e:  # noqa: BLE001 - a failed step is undone and retried in parts
            return self._recover(e) + self._take_early_outputs()

    def _recover(self, error: Exception) -> list[TokenOutput]:
        """Undo the steps in flight and retry their work in smaller steps (recovery.py);
        errors outside a step (no step open), or of a runner that cannot retry (tensor
        parallelism), go to the loop, which aborts everything."""
        steps, self._open, self.inflight = self._open, [], None
        if not steps or not self.info.can_retry_steps:
            raise error
        failed = self.recovery.recover(error, steps, self.running, self.waiting)
        return [make_output(r) for r in failed]

    def _step(self) -> list[TokenOutput]:
        outputs = self._take_early_outputs()
        if self.inflight is not None:  # launch the next step, then read this one back
            flight = self.inflight
            self.inflight = self._chain()
            outputs += self._complete(*flight)
            if self.inflight is not None:
                self.inflight = self.chain.finish_launch(self.inflight)
                return outputs
        waiting = order_waiting(self.args.schedule_policy, self.waiting, self.kv.match, self.rng,
                                self.priority)
        if self.spec is not None:
            self.spec.propose(self.running)
        plan = self.planner.plan(self.running, waiting)
        self.waiting = waiting
        if not plan.reqs:
            return outputs + self._fail_unschedulable()
        step, book = build_step(plan, self.kv, self.spec is not None and self.spec.needs_hidden)
        self._open.append((plan, step, book))
        forward = self.runner.launch_forward(step)  # the device runs it while the host fills the masks
        step.vocab_mask = self.grammar.vocab_mask(book.sample_reqs,
                                                  paths=book.sample_paths if book.verify else None)
        pending = self.runner.launch_sampling(step, forward)
        if self.overlap and self.spec is None and self.chain.chainable(
                plan, step, book, len(self.running), bool(self.waiting)):
            self.inflight = (plan, step, book, pending)
            return outputs
        return outputs + self._complete(plan, step, book, pending)

    def _chain(self) -> Optional[InFlight]:
        flight = self.chain.chain(self.inflight, len(self.running), bool(self.waiting))
        self.stats.num_overlapped += flight is not None
        if flight is not None:
            self._open.append(flight[:3])
        return flight

    def _complete(self, plan: StepPlan, step: StepInputs, book: StepBook,
                  pending: PendingStep) -> list[TokenOutput]:
        result: RunResult = pending.resolve()
        outputs = self.results.process(plan, step, book, result)
        self._open = [s for s in self._open if s[2] is not book]
        self.recovery.on_good_step()
        self.recovery.num_failed_reqs += len(result.failed_reqs)
        self.stats.log_step(plan, step, book, result, self.spec)
        return outputs

    def drain(self) -> None:
        """Finish the step in flight (overlap); its outputs go out with the next step's."""
        if self.inflight is None:
            return
        try:
            flight = self.chain.finish_launch(self.inflight)
            self.inflight = None
            self._early_outputs += self._complete(*flight)
        except Exception as e:  # noqa: BLE001 - as in a step
            self._early_outputs += self._recover(e)

    def _take_early_outputs(self) -> list[TokenOutput]:
        ready, failed = self.grammar.poll() if self.grammar.waiting else ([], [])
        for req in ready:
            self.enqueue(req)
        outputs = self._early_outputs + [make_output(r) for r in failed]
        self._early_outputs = []
        return outputs

    def _release_draft(self, req: Req) -> None:
        if self.spec is not None:
            self.spec.release(req)

    def finish(self, req: Req) -> None:
        if self.spec is not None:
            self.spec.release(req)
        self.kv.release(req)
        self.running.remove(req)
        req.state = ReqState.FINISHED

    def _fail_unschedulable(self) -> list[TokenOutput]:
        """Nothing could run. With requests running, the planner retracted all but one and that
        one cannot grow in the pool: it fails (it would wait forever). With none running, the
        head waiting request can never fit."""
        if self.running:
            req = self.running[0]
            req.finish(abort_reason(f"request needs more KV cache than the pool holds ({req.seq_len} "
                                    f"tokens, pool {self.allocator.size})", 400))
            self.finish(req)
            return [make_output(req)]
        if not self.waiting:
            if self.grammar.waiting:
                time.sleep(0.001)  # only grammars compiling: do not spin
            return []
        req = self.waiting.pop(0)
        req.finish(abort_reason(f"request needs more KV cache than the pool holds ({req.seq_len} "
                                f"tokens, pool {self.allocator.size})", 400))
        return [TokenOutput(rid=req.rid, new_token_ids=[], finished_reason=req.finished_reason,
                            prompt_tokens=req.prompt_len)]

    # -- observability -----------------------------------------------------------------------
    def token_usage(self) -> float:
        used = self.allocator.size - self.allocator.available_size() - self.tree.evictable_size()
        return used / max(self.allocator.size, 1)

    def check_pool_invariant(self) -> None:
        """free + evictable + locked == capacity, once no request holds KV."""
        assert not self.running, "requests still running"
        assert_pool_invariant(self.allocator, self.tree)
