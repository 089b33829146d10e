"""Tensor parallelism on torch.distributed (gloo on CPU, NCCL on GPU). Rank 0 runs the scheduler;
every other rank runs `run_tp_worker`, which receives each step's ForwardBatch (and the step's
request->token table writes) from rank 0 and runs the same forward, so the collectives inside
the layers meet. Only rank 0 samples (the logits are gathered whole on every rank); with overlap
scheduling under TP (`ModelRunner.shares_sampled_ids`) it also broadcasts the sampled ids, which
the other ranks keep for a next step that names them. A speculative drafter runs on rank 0 alone
(runtime/executor/drafter.py); the verify forwards are ordinary steps for the other ranks."""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist

from sgl.runtime.layers.custom_all_reduce import install as install_one_shot
from sgl.runtime.layers.custom_all_reduce import uninstall as uninstall_one_shot
from sgl.runtime.server.runtime import free_port

logger = logging.getLogger("sgl.tp")
_OBJECT_GROUP: Any = None  # a gloo group for Python objects, whatever the tensor backend
_IDLE_FOREVER = timedelta(days=3650)


def init_tensor_parallel(rank: int, tp_size: int, dist_init_addr: str, device: torch.device, *,
                         dist_timeout: int | None, custom_all_reduce: bool,
                         custom_all_reduce_max_bytes: int) -> None:
    """Join the process group. `custom_all_reduce`: also set up the one-shot all-reduce over peer
    memory for tensors up to `custom_all_reduce_max_bytes` (GPUs of one node;
    layers/custom_all_reduce.py). `dist_timeout`: seconds (--dist-timeout; None: PyTorch's default)."""
    global _OBJECT_GROUP
    if device.type == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    backend = "nccl" if device.type == "cuda" else "gloo"
    # The rendezvous and the tensor collectives keep a finite timeout (a rank that died shows up);
    # the step broadcast does not: an idle server's followers wait in it for as long as it idles.
    timeout = timedelta(seconds=dist_timeout) if dist_timeout is not None else None
    dist.init_process_group(backend, init_method=f"tcp://{dist_init_addr}", rank=rank,
                            world_size=tp_size, timeout=timeout)
    _OBJECT_GROUP = dist.new_group(backend="gloo", timeout=_IDLE_FOREVER)
    if backend == "nccl":  # open the communicator now: a first collective inside a graph capture fails
        dist.all_reduce(torch.zeros(1, device=torch.device("cuda", torch.cuda.current_device())))
        torch.cuda.synchronize()
        if custom_all_reduce:
            one_shot = install_one_shot(dist.group.WORLD, custom_all_reduce_max_bytes)
            if one_shot is not None and rank == 0:
                logger.info("custom all-reduce: one-shot over peer memory up to %d bytes, NCCL above",
                            one_shot.max_bytes)


def agree_min(value: int) -> int:
    """The smallest value over the ranks (e.g. a KV pool size every rank can afford)."""
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=_OBJECT_GROUP)
    return int(t.item())


def broadcast_step(msg: Optional[Any]) -> Any:
    """Rank 0 sends `msg` (None: stop); the others receive it."""
    box = [msg]
    dist.broadcast_object_list(box, src=0, group=_OBJECT_GROUP)
    return box[0]


def share_sampled_ids(ids: torch.Tensor) -> torch.Tensor:
    """Rank 0 sends the ids it sampled this step, the others receive them into `ids` (a device
    broadcast, ordered on the stream after the sampling and before the next forward: no host
    sync). Every rank then holds the tokens an overlapped step's `future_src` names."""
    dist.broadcast(ids, src=0)
    return ids


def local_ranks(args: Any) -> list[int]:
    """The ranks this node runs: tp_size / nnodes consecutive ones."""
    per_node = args.tp_size // args.nnodes
    return list(range(args.node_rank * per_node, (args.node_rank + 1) * per_node))


def start_tp_workers(args: Any, ctx: Any) -> tuple[Any, dict[str, Any]]:
    """Spawn this node's follower ranks (all but rank 0). Returns the arguments every rank
    uses (with a rendezvous address filled in) and the processes by name."""
    if args.tp_size <= 1:
        return args, {}
    if args.dist_init_addr is None:
        args = dataclasses.replace(args, dist_init_addr=f"127.0.0.1:{free_port()}")
    procs = {}
    for rank in [r for r in local_ranks(args) if r != 0]:
        procs[f"tp{rank}"] = ctx.Process(target=run_tp_worker, args=(args, rank), name=f"sgl-tp{rank}",
                                         daemon=True)
        procs[f"tp{rank}"].start()
    return args, procs


def run_tp_worker(server_args: Any, rank: int) -> None:
    """Entry point of ranks 1..tp_size-1 (a spawned process)."""
    from sgl.runtime.executor.model_runner import ModelRunner
    from sgl.runtime.server.ipc import configure_logging, exit_now
    configure_logging(server_args.log_level, f"TP{rank}")
    _exit_with_parent()
    runner = ModelRunner(server_args, tp_rank=rank)
    while True:
        msg = broadcast_step(None)
        if msg is None:
            break
        runner.follow_step(*msg)
    leave_tensor_parallel(runner)
    # os._exit: no interpreter teardown (~0.7 s), and a destroy still stuck past its deadline
    # cannot hang the exit
    exit_now()


def leave_tensor_parallel(runner: Any, timeout_s: float = 60.0) -> bool:
    """Destroy the process groups, after the runner's CUDA graphs (which pin the NCCL
    communicator). The destroy runs with a deadline: a rank that still cannot leave says so and
    goes on rather than hanging its process (whose exit frees the communicator anyway). True when
    the groups were destroyed."""
    runner.release_cuda_graphs()
    uninstall_one_shot()  # its peer-memory handles belong to the group
    done = threading.Event()

    def destroy() -> None:
        try:
            dist.destroy_process_group()
        finally:
            done.set()

    threading.Thread(target=destroy, name="sgl-tp-destroy", daemon=True).start()
    if done.wait(timeout_s):
        return True
    logger.warning("leaving the tensor-parallel process groups took over %.0f s; going on "
                   "without waiting", timeout_s)
    return False


def _exit_with_parent() -> None:
    """A rank whose parent is gone would wait for rank 0 forever: leave instead."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="sgl-tp-parent-watch", daemon=True).start()
