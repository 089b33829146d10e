"""The scheduler process: ModelRunner + Scheduler driven by the same loop as the in-process
engine, reading requests from a ZMQ socket and pushing each step's outputs to the detokenizer.
It never waits on HTTP or tokenization: requests arrive already tokenized."""
from __future__ import annotations

import dataclasses
import logging
import os
import queue
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any, Callable

import zmq

from sgl.runtime.config import ServerArgs
from sgl.runtime.io_struct import TokenizedGenerateReq
from sgl.runtime.scheduler.loop import Call, run_scheduler_loop
from sgl.runtime.server.ipc import (
    DetokParams,
    Endpoints,
    Heartbeat,
    OutputBatch,
    RpcReq,
    RpcResult,
    arm_graceful_stop,
    child_signals,
    configure_logging,
    exit_now,
    pull_socket,
    push_socket,
    watch_parent,
)

logger = logging.getLogger("sgl.scheduler")


def internal_state(sched: Any, inbox: ZmqInbox) -> dict[str, Any]:
    """What /get_server_info and /metrics report about this replica's scheduler."""
    alloc, tree, stats = sched.allocator, sched.tree, sched.stats
    return {
        "dp_rank": inbox.dp_rank, "pid": os.getpid(), "num_received_reqs": inbox.num_received_reqs,
        "num_running_reqs": len(sched.running), "num_queue_reqs": len(sched.waiting),
        "token_usage": sched.token_usage(), "max_total_tokens": alloc.size,
        "available_kv_tokens": alloc.available_size() + tree.evictable_size(),
        "free_kv_tokens": alloc.available_size(), "evictable_kv_tokens": tree.evictable_size(),
        "locked_kv_tokens": tree.protected_size(), "cache_hit_rate": stats.cache_hit_rate(),
        "gen_throughput": stats.last_gen_throughput, "num_forward_passes": stats.num_forward_passes,
        "total_prompt_tokens": stats.total_prompt_tokens,
        "total_cached_tokens": stats.total_cached_tokens,
        "total_generated_tokens": stats.total_generated_tokens,
    }


class ZmqInbox:
    """The queue interface `run_scheduler_loop` reads (get with timeout, get_nowait) over a ZMQ
    socket. Control calls become `Call`s so they run in order with the requests around them."""

    def __init__(self, sock: zmq.Socket, reply: Callable[[Any], None],
                 dp_rank: int = 0, heartbeat_interval_s: float = 1.0) -> None:
        self.sock, self.reply, self.dp_rank = sock, reply, dp_rank
        self.new_params: dict[str, DetokParams] = {}
        self.num_received_reqs = 0  # requests the front sent this replica
        self.heartbeat_interval_s = heartbeat_interval_s
        self._last_beat = 0.0

    def _beat(self) -> None:
        """The loop reads the inbox between steps: a due heartbeat goes out from here."""
        now = time.monotonic()
        if now - self._last_beat >= self.heartbeat_interval_s:
            self._last_beat = now
            self.reply(Heartbeat(self.dp_rank))

    def get(self, timeout: float) -> Any:
        self._beat()
        if not self.sock.poll(int(timeout * 1000)):
            raise queue.Empty
        return self.get_nowait()

    def get_nowait(self) -> Any:
        self._beat()
        try:
            msg = self.sock.recv_pyobj(zmq.NOBLOCK)
        except zmq.Again:
            raise queue.Empty from None
        if isinstance(msg, TokenizedGenerateReq):
            self.num_received_reqs += 1
            sp = msg.sampling_params
            self.new_params[msg.rid] = (sp.skip_special_tokens, sp.spaces_between_special_tokens,
                                        sp.no_stop_trim)
        if isinstance(msg, RpcReq):
            return self._call(msg)
        return msg

    def _call(self, msg: RpcReq) -> Call:
        fn = RPCS.get(msg.name, _unknown_rpc)
        call = Call(lambda sched: fn(sched, self, *msg.args))
        call.future.add_done_callback(lambda f: self.reply(_rpc_result(msg.id, f)))
        return call

    def take_params(self) -> dict[str, DetokParams]:
        params, self.new_params = self.new_params, {}
        return params


def _rpc_result(rid: int, fut: Any) -> RpcResult:
    err = fut.exception()
    return RpcResult(rid, error=repr(err)) if err else RpcResult(rid, value=fut.result())


def _unknown_rpc(sched: Any, inbox: ZmqInbox, *args: Any) -> None:
    raise ValueError("unknown control call")


# name -> fn(scheduler, inbox, *args), run on the scheduler's thread
RPCS: dict[str, Callable[..., Any]] = {
    "internal_state": internal_state,
    "flush_cache": lambda sched, inbox: sched.flush_cache(),
}


def run_scheduler_process(args: ServerArgs, endpoints: Endpoints, dp_rank: int, parent_pid: int,
                          conn: Connection) -> None:
    """Process entry of data-parallel replica `dp_rank`. Sends {"ready": info} or
    {"error": text} on `conn` once loaded; the tokenizer (loaded once by the HTTP process)
    arrives on `conn` too."""
    watch_parent(parent_pid)
    stop = child_signals()
    configure_logging(args.log_level, f"DP{dp_rank} TP0" if args.dp_size > 1 else "TP0")
    try:
        sched, runner, info = _load(args, conn)
    except BaseException:
        conn.send({"error": traceback.format_exc()})
        return
    ctx = zmq.Context()
    out = push_socket(ctx, endpoints.to_detokenizer)
    beat_s = min(1.0, args.watchdog_timeout / 4)
    inbox = ZmqInbox(pull_socket(ctx, endpoints.to_schedulers[dp_rank]), out.send_pyobj, dp_rank,
                     beat_s)
    conn.send({"ready": info})
    arm_graceful_stop(stop)

    def emit(outputs: list) -> None:
        out.send_pyobj(OutputBatch(outputs, inbox.take_params()))

    run_scheduler_loop(sched, inbox, emit, stop)
    runner.shutdown()  # releases the other tensor-parallel ranks
    ctx.destroy(linger=0)
    exit_now()


def _load(args: ServerArgs, conn: Connection) -> tuple[Any, Any, dict[str, Any]]:
    from sgl.runtime.disaggregation import make_scheduler
    from sgl.runtime.executor.model_runner import ModelRunner
    runner = ModelRunner(args)
    tokenizer = conn.recv()
    sched = make_scheduler(args, runner, tokenizer, runner.loaded.eos_token_ids)
    info = {"model_path": runner.model_path, "vocab_size": runner.vocab_size,
            "context_length": runner.context_len, "max_total_tokens": runner.max_total_tokens,
            "max_running_requests": runner.max_running_requests,
            "chunked_prefill_size": runner.chunked_prefill_size, "device": str(runner.device),
            # embeddings: which `dimensions` the front end accepts (plain data: /get_server_info)
            "matryoshka": dataclasses.asdict(runner.matryoshka) if runner.matryoshka else None}
    return sched, runner, info
