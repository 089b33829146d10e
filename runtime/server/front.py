"""The HTTP process's TokenizerManager: the shared front end, wired to the scheduler(s) and the
detokenizer over ZMQ, plus what only a server needs: data-parallel dispatch, control calls (RPC)
to the schedulers, latency metrics, and request logging."""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Optional

import zmq
import zmq.asyncio

from sgl.runtime.io_struct import AbortReq, TokenizedGenerateReq, TokenOutput
from sgl.runtime.matryoshka import Matryoshka
from sgl.runtime.request import ParsedRequest
from sgl.runtime.request_options import RequestPolicy
from sgl.runtime.server.data_parallel import ReplicaDispatcher
from sgl.runtime.server.errors import ApiError
from sgl.runtime.server.ipc import (
    Endpoints,
    Heartbeat,
    OutputBatch,
    RpcReq,
    RpcResult,
    pull_socket,
    push_socket,
)
from sgl.runtime.server.metrics import ServerMetrics
from sgl.runtime.server.watchdog import Watchdog
from sgl.runtime.tokenizer_manager import ReqStream, TokenizerManager

logger = logging.getLogger("sgl.server")
RETRY_AFTER_S = 1  # what a shed request is told to wait: queues move in about a step


class ServerTokenizerManager(TokenizerManager):
    def __init__(self, tokenizer: Any, vocab_size: int, context_len: int, endpoints: Endpoints,
                 metrics: ServerMetrics, log_requests: bool = False,
                 stream_interval: int = 1, grammar_backend: str = "xgrammar",
                 load_balance_method: str = "round_robin", is_embedding: bool = False,
                 disaggregation_mode: str = "null", policy: RequestPolicy = RequestPolicy(),
                 matryoshka: Optional[Matryoshka] = None) -> None:
        self._sync_ctx = zmq.Context()
        socks = [push_socket(self._sync_ctx, addr) for addr in endpoints.to_schedulers]
        self.dispatcher = ReplicaDispatcher([s.send_pyobj for s in socks], load_balance_method)
        super().__init__(tokenizer, vocab_size, context_len, self.dispatcher.send, grammar_backend,
                         is_embedding, disaggregation_mode, policy, matryoshka)
        self.endpoints, self.metrics, self.log_requests = endpoints, metrics, log_requests
        self.stream_interval = max(stream_interval, 1)
        self._rpc_ids = itertools.count()
        self._rpc_waiters: dict[int, asyncio.Future] = {}
        self._recv_task: Optional[asyncio.Task] = None
        self._timings: dict[str, _Timing] = {}
        self.max_queued_requests: Optional[int] = None  # server flag; None: no limit
        self.watchdog = Watchdog(self.dispatcher.dp_size, timeout_s=300.0)
        self.closing: Optional[ApiError] = None  # set when the server starts shutting down
        self._watch_task: Optional[asyncio.Task] = None

    # -- life cycle (on the server's event loop) -----------------------------------------------
    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._async_ctx = zmq.asyncio.Context()
        self._recv_sock = pull_socket(self._async_ctx, self.endpoints.to_tokenizer)
        self._recv_task = asyncio.create_task(self._recv_loop(), name="sgl-recv")
        self._watch_task = asyncio.create_task(self.watchdog.run(self), name="sgl-watchdog")

    def refuse_new(self, message: str) -> None:
        """Shutting down: new requests are refused with a 503 (and /health says it); running
        ones go on (they drain)."""
        self.closing = ApiError(message, 503, None, "server_shutting_down")

    def refuse_all(self, message: str) -> None:
        """The drain is over: requests still running end with a 503 too (a final event when
        streaming)."""
        self.refuse_new(message)
        self.fail(list(self.states), self.closing)

    def health_error(self) -> Optional[ApiError]:
        return self.closing or self.watchdog.error()

    def close(self) -> None:
        for task in (self._recv_task, self._watch_task):
            if task is not None:
                task.cancel()
        if self._worker is not None:
            self._worker.shutdown(wait=False, cancel_futures=True)
        for ctx in (self._sync_ctx, getattr(self, "_async_ctx", None)):
            if ctx is not None:
                ctx.destroy(linger=0)

    async def _recv_loop(self) -> None:
        while True:
            msg = await self._recv_sock.recv_pyobj()
            try:
                if isinstance(msg, OutputBatch):
                    self._dispatch(msg.outputs)
                elif isinstance(msg, Heartbeat):
                    self.watchdog.beat(msg.dp_rank)
                elif isinstance(msg, RpcResult):
                    self._resolve(msg)
            except Exception:  # one bad message must not stop every other request
                logger.exception("failed to handle a message from the detokenizer")

    # -- control calls -------------------------------------------------------------------------
    async def rpc_all(self, name: str, *args: Any, timeout_s: float = 60.0) -> list[Any]:
        """Run control call `name` on every replica; their results in dp_rank order."""
        calls = [self.rpc(name, *args, replica=i, timeout_s=timeout_s)
                 for i in range(self.dispatcher.dp_size)]
        return list(await asyncio.gather(*calls))

    async def rpc(self, name: str, *args: Any, replica: int = 0, timeout_s: float = 60.0) -> Any:
        rid = next(self._rpc_ids)
        fut = asyncio.get_running_loop().create_future()
        self._rpc_waiters[rid] = fut
        self.dispatcher.send_to(replica, RpcReq(rid, name, args))
        try:
            return await asyncio.wait_for(fut, timeout_s)
        finally:
            self._rpc_waiters.pop(rid, None)

    def _resolve(self, msg: RpcResult) -> None:
        fut = self._rpc_waiters.get(msg.id)
        if fut is None or fut.done():
            return
        if msg.error is not None:
            fut.set_exception(RuntimeError(msg.error))
        else:
            fut.set_result(msg.value)

    def abort_request(self, rid: str) -> None:
        """Abort `rid`, and its n>1 copies (`rid-0`, `rid-1`, ...). Empty rid: everything."""
        self.send(AbortReq(rid))
        for other in [r for r in self.states if r.startswith(f"{rid}-") and rid]:
            self.send(AbortReq(other))

    # -- hooks on the shared front end ---------------------------------------------------------
    async def generate(self, obj: dict[str, Any], parsed: Optional[ParsedRequest] = None
                       ) -> AsyncIterator[list[dict[str, Any]]]:
        refusal = self.health_error()  # shutting down, or a scheduler is stuck
        if refusal is not None:
            raise refusal
        parsed = parsed or await self.parse_async(obj)
        self._check_queue(parsed)
        if len(parsed.reqs) <= len(parsed.prompts):
            async for results in super().generate(obj, parsed):
                yield results
            return
        with self.dispatcher.pinned(parsed.prompts):  # n>1: warm-up and copies on one replica
            async for results in super().generate(obj, parsed):
                yield results

    def _check_queue(self, parsed: ParsedRequest) -> None:
        """--max-queued-requests: shed load before it reaches a scheduler. Queued: sent and
        not yet given a first token (waiting, or in prefill). With priority scheduling a
        request that finds the queue full takes the places of queued ones of lower priority,
        which fail with 503 (SGLang's rule); otherwise it is the one refused."""
        if self.max_queued_requests is None:
            return
        queued = [s for s in self.states.values() if not s.output_ids and not s.finished]
        num_over = len(queued) + len(parsed.reqs) - self.max_queued_requests
        if num_over <= 0:
            return
        victims = self._outranked(queued, parsed.reqs[0].priority, num_over)
        if victims is None:
            raise ApiError(f"the server is busy: {len(queued)} requests are queued "
                           f"(--max-queued-requests {self.max_queued_requests}); retry later",
                           503, None, "server_busy", {"Retry-After": str(RETRY_AFTER_S)})
        for state in victims:
            state.error = ApiError("the request was aborted by a higher priority request (the "
                                   f"queue holds --max-queued-requests {self.max_queued_requests})",
                                   503, None, "server_busy", {"Retry-After": str(RETRY_AFTER_S)})
            state.event.set()
            self.send(AbortReq(state.req.rid))

    def _outranked(self, queued: list[ReqStream], priority: Optional[int], num: int
                   ) -> Optional[list[ReqStream]]:
        """The `num` queued sequences of strictly lower priority than `priority` to give way,
        the least preferred (then the newest) first; None when there are not that many."""
        if not self.policy.enable_priority:
            return None
        rank = self.policy.rank
        lower = [s for s in reversed(queued) if rank(s.req.priority) > rank(priority)]
        lower.sort(key=lambda s: -rank(s.req.priority))  # stable: newest first among equals
        return lower[:num] if len(lower) >= num else None

    def _submit(self, req: TokenizedGenerateReq, text_in_logprobs: bool,
                event: Optional[asyncio.Event] = None) -> ReqStream:
        state = super()._submit(req, text_in_logprobs, event)
        # kept apart from `states`: an aborted request leaves `states` before its last output
        self._timings[req.rid] = _Timing(time.perf_counter())
        if self.log_requests:
            logger.info("Receive: rid=%s, prompt_tokens=%d, sampling_params=%s", req.rid,
                        len(req.input_ids), _short(_non_default(req.sampling_params)))
        return state

    def _dispatch(self, outputs: list[TokenOutput]) -> None:
        now = time.perf_counter()
        for out in outputs:
            timing = self._timings.get(out.rid)
            if timing is not None:
                self._observe(timing, out, now)
        super()._dispatch(outputs)
        self.dispatcher.on_outputs(outputs)
        if self.log_requests:
            for out in outputs:
                if out.finished_reason is not None:
                    self._log_finish(out)

    def _observe(self, timing: _Timing, out: TokenOutput, now: float) -> None:
        n = len(out.new_token_ids)
        if n and timing.last_token_at is None:
            self.metrics.ttft.observe(now - timing.created_at)
        elif n:
            self.metrics.itl.observe((now - timing.last_token_at) / n, times=n)
        if n:
            timing.last_token_at = now
        if out.finished_reason is not None:
            del self._timings[out.rid]
            meta = {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                    "cached_tokens": out.cached_tokens}
            self.metrics.on_finish(meta, now - timing.created_at,
                                   out.finished_reason.get("type") == "abort")

    def _log_finish(self, out: TokenOutput) -> None:
        state = self.states.get(out.rid)
        text = state.text() if state is not None else None
        logger.info("Finish: rid=%s, finish_reason=%s, prompt_tokens=%d, completion_tokens=%d, "
                    "cached_tokens=%d, text=%s", out.rid, out.finished_reason, out.prompt_tokens,
                    out.completion_tokens, out.cached_tokens, _short(text))


@dataclass
class _Timing:
    created_at: float
    last_token_at: Optional[float] = None


def _non_default(params: Any) -> dict[str, Any]:
    defaults = type(params)()
    return {k: v for k, v in vars(params).items() if getattr(defaults, k) != v}


def _short(value: Any, limit: int = 500) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"
