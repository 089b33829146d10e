"""Starting and stopping the scheduler and detokenizer processes (spawn start method).

Start-up overlaps the slow parts: both children are spawned first; the scheduler loads the model
while this process loads the tokenizer once and hands it to both over their pipes."""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
from typing import Any, Callable, Optional

from sgl.runtime.config import ServerArgs
from sgl.runtime.executor.tensor_parallel import start_tp_workers
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
        self.conns: dict[str, Any] = {}

    def start(self, load_tokenizer: Callable[[], Any]) -> tuple[dict[str, Any], Any]:
        """Spawn both children, hand them the tokenizer, wait until both are ready. Returns the
        scheduler's model info and the tokenizer."""
        pid = os.getpid()
        self.args, tp_workers = start_tp_workers(self.args, self.ctx)  # follow rank 0 step by step
        self.procs.update(tp_workers)
        self._spawn("scheduler", run_scheduler_process, (self.args, self.endpoints, pid))
        self._spawn("detokenizer", run_detokenizer_process,
                    (self.args.log_level, self.endpoints, pid))
        tokenizer = load_tokenizer()
        for name in ("detokenizer", "scheduler"):
            self._send(name, tokenizer)
        self._ready("detokenizer")
        return self._ready("scheduler"), tokenizer

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
        for proc in self.procs.values():
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs.values():
            proc.join(timeout_s)
            if proc.is_alive():
                logger.warning("%s did not stop in %.0f s; killing it", proc.name, timeout_s)
                proc.kill()
                proc.join(5)
        for conn in self.conns.values():
            conn.close()
