"""Starting and stopping the scheduler and detokenizer processes (spawn start method): one
scheduler per data-parallel replica (--dp-size), each with its tensor-parallel followers.

Start-up overlaps the slow parts: every child is spawned first (`spawn`, before the HTTP process
imports its web stack, and without importing torch here unless tensor parallelism needs it); the
schedulers load the model while this process loads the tokenizer once and hands it to each over
their pipes."""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
from typing import Any, Callable, Optional

from sgl.runtime.config import ServerArgs
from sgl.runtime.server.data_parallel import merge_ready_infos, replica_args, replica_environment
from sgl.runtime.server.detokenizer_process import run_detokenizer_process
from sgl.runtime.server.ipc import Endpoints
from sgl.runtime.server.scheduler_process import run_scheduler_process

logger = logging.getLogger("sgl.server")


class ChildFailed(RuntimeError):
    pass


class ServerProcesses:
    def __init__(self, args: ServerArgs, endpoints: Endpoints) -> None:
        self.args, self.endpoints = args, endpoints
        self.ctx = mp.get_context("spawn")
        self.procs: dict[str, Any] = {}
        self.followers: set[str] = set()  # tensor-parallel ranks 1.., released by their rank 0
        self.conns: dict[str, Any] = {}
        self._checkpoint: Callable[[], None] = lambda: None

    @property
    def scheduler_names(self) -> list[str]:
        if self.args.dp_size == 1:
            return ["scheduler"]
        return [f"scheduler-dp{i}" for i in range(self.args.dp_size)]

    def spawn(self) -> None:
        """Start every child; they load while this process does its own start-up."""
        if self.procs:
            return
        pid = os.getpid()
        for dp_rank in range(self.args.dp_size):
            self._start_replica(dp_rank, pid)
        self._spawn("detokenizer", run_detokenizer_process,
                    (self.args.log_level, self.endpoints, pid))

    def start(self, load_tokenizer: Callable[[], Any], checkpoint: Callable[[], None] = lambda: None
              ) -> tuple[dict[str, Any], Any]:
        """Spawn every child (unless `spawn` did), hand them the tokenizer, wait until all are
        ready. Returns the schedulers' model info and the tokenizer. `checkpoint` runs while
        waiting (it raises to stop start-up)."""
        self._checkpoint = checkpoint
        self.spawn()
        tokenizer = load_tokenizer()
        for name in ("detokenizer", *self.scheduler_names):
            self._send(name, tokenizer)
        self._ready("detokenizer")
        return merge_ready_infos([self._ready(name) for name in self.scheduler_names]), tokenizer

    def _start_replica(self, dp_rank: int, pid: int) -> None:
        """The scheduler (rank 0) of replica dp_rank and its follower ranks, which follow it
        step by step; they see only the replica's own GPUs or share of the CPU cores."""
        name = self.scheduler_names[dp_rank]
        prefix = "" if self.args.dp_size == 1 else f"dp{dp_rank}-"
        with replica_environment(self.args, dp_rank):
            args, tp_workers = replica_args(self.args, dp_rank), {}
            if args.tp_size > 1:  # torch.distributed follower ranks (torch is imported here only)
                from sgl.runtime.executor.tensor_parallel import start_tp_workers
                args, tp_workers = start_tp_workers(args, self.ctx)
            self.procs.update({prefix + k: p for k, p in tp_workers.items()})
            self.followers.update(prefix + k for k in tp_workers)
            self._spawn(name, run_scheduler_process, (args, self.endpoints, dp_rank, pid))

    def _spawn(self, name: str, target: Callable, args: tuple) -> None:
        parent_conn, child_conn = self.ctx.Pipe()
        proc = self.ctx.Process(target=target, args=(*args, child_conn), name=f"sgl-{name}",
                                daemon=True)
        proc.start()
        child_conn.close()
        self.procs[name], self.conns[name] = proc, parent_conn

    def _send(self, name: str, obj: Any) -> None:
        try:
            self.conns[name].send(obj)
        except OSError:
            pass  # the child died first; _ready reports why

    def _ready(self, name: str) -> dict[str, Any]:
        try:
            while not self.conns[name].poll(0.2):
                self._checkpoint()
            msg = self.conns[name].recv()
        except EOFError:
            raise ChildFailed(f"the {name} process exited during start-up "
                              f"(exit code {self.procs[name].exitcode})") from None
        if "error" in msg:
            raise ChildFailed(f"the {name} process failed to start:\n{msg['error']}")
        return msg["ready"]

    def dead_child(self) -> Optional[str]:
        """Name and exit code of a child that died, if any."""
        for name, proc in self.procs.items():
            if not proc.is_alive():
                return f"{name} (exit code {proc.exitcode})"
        return None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values() if p.pid is not None]

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Schedulers and detokenizer first: a scheduler releases its follower ranks as it
        stops, so they are seldom still there to terminate (and rank 0 sees no broken pipe)."""
        leaders = [p for name, p in self.procs.items() if name not in self.followers]
        self._stop(leaders, timeout_s)
        self._stop([self.procs[name] for name in self.followers], timeout_s)
        for conn in self.conns.values():
            conn.close()

    @staticmethod
    def _stop(procs: list[Any], timeout_s: float) -> None:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(timeout_s)
            if proc.is_alive():
                logger.warning("%s did not stop in %.0f s; killing it", proc.name, timeout_s)
                proc.kill()
                proc.join(5)
