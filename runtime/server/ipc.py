"""What crosses the process boundaries of the server, and the plumbing shared by its processes:
ZMQ endpoints, parent watching, logging set-up.

    HTTP process (TokenizerManager) --reqs--> scheduler(s) --OutputBatch--> detokenizer --+
          ^                                                                               |
          +------------------------- OutputBatch (text_delta set) / RpcResult ------------+

With --dp-size N there are N schedulers (data_parallel.py routes the requests).
"""
from __future__ import annotations

import faulthandler
import logging
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn, Optional

import zmq

from sgl.runtime.io_struct import TokenOutput

# (skip_special_tokens, spaces_between_special_tokens, no_stop_trim) of one request
DetokParams = tuple[bool, bool, bool]


@dataclass
class RpcReq:
    """HTTP process -> a scheduler: run a named control function (see scheduler_process.RPCS).
    `id` is unique over all replicas, so replies need no replica tag."""
    id: int
    name: str
    args: tuple = ()


@dataclass
class RpcResult:
    id: int
    value: Any = None
    error: Optional[str] = None


@dataclass
class Heartbeat:
    """A scheduler -> (detokenizer) -> HTTP process: "my loop still turns". Sent between steps,
    so a step that hangs (or a stopped process) stops them; the HTTP process's watchdog
    (--watchdog-timeout) notices."""
    dp_rank: int


@dataclass
class OutputBatch:
    """Scheduler -> detokenizer -> HTTP process: one step's outputs. `detok_params` holds the
    decoding options of requests the detokenizer has not seen yet."""
    outputs: list[TokenOutput]
    detok_params: dict[str, DetokParams] = field(default_factory=dict)


@dataclass(frozen=True)
class Endpoints:
    """ipc:// addresses in a private temp folder, one per direction; one per data-parallel
    replica towards the schedulers (they all push to the one detokenizer)."""
    to_schedulers: tuple[str, ...]
    to_detokenizer: str
    to_tokenizer: str
    folder: Optional[str] = None  # where the ipc sockets live

    @classmethod
    def in_dir(cls, folder: str, dp_size: int = 1) -> Endpoints:
        def addr(name: str) -> str:
            return f"ipc://{os.path.join(folder, name)}"
        return cls(tuple(addr(f"sched{i}") for i in range(dp_size)), addr("detok"), addr("tok"),
                   folder)


def pull_socket(ctx: zmq.Context, addr: str) -> zmq.Socket:
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.bind(addr)
    return sock


def push_socket(ctx: zmq.Context, addr: str) -> zmq.Socket:
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 0)  # never block the sender: the peer drains as fast as it can
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(addr)
    return sock


def watch_parent(parent_pid: int, interval_s: float = 0.5, cleanup_dir: Optional[str] = None
                 ) -> None:
    """Exit this process as soon as `parent_pid` is gone, so no child outlives the server even
    when the server is killed with SIGKILL. `cleanup_dir`: a folder the dead parent could not
    remove (its sockets), removed on the way out; that child then exits by polling (at most
    `interval_s` late) instead of being killed with its parent."""
    if cleanup_dir is None:
        _set_parent_death_signal()

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        if cleanup_dir is not None:
            shutil.rmtree(cleanup_dir, ignore_errors=True)
        os._exit(0)

    if os.getppid() != parent_pid:
        os._exit(0)
    threading.Thread(target=watch, name="sgl-parent-watch", daemon=True).start()


def watch_pid(pid: int, interval_s: float = 0.5) -> None:
    """SIGTERM ourselves (a graceful shutdown) when an unrelated process `pid` exits: the
    `sgl.Runtime` that started this server."""
    def watch() -> None:
        while _pid_alive(pid):
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="sgl-owner-watch", daemon=True).start()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _set_parent_death_signal() -> None:
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the polling thread still covers it


def child_signals() -> threading.Event:
    """Children ignore SIGINT (a terminal's Ctrl-C reaches the whole group; the HTTP process
    leads the shutdown). Until `arm_graceful_stop`, SIGTERM kills at once: a process still
    loading (a model, a tokenizer) has nothing to save, and a Python handler would wait for the
    load's long native calls to return. Returns the event SIGTERM sets once armed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return threading.Event()


def exit_now(code: int = 0) -> NoReturn:
    """End a server process (a child, or the HTTP process run as a command) once it has cleaned
    up after itself: os._exit skips the interpreter teardown (unloading torch and the rest took
    ~0.7 s in each of them at every shutdown). multiprocessing's own exit work runs first (what
    it does at any process's end: its finalizers release the semaphores of the queues and pipes
    to tensor-parallel ranks, and it joins the processes this one started); then the logs and
    the standard streams are flushed."""
    import multiprocessing.util
    multiprocessing.util._exit_function()  # noqa: SLF001 - its atexit work, which os._exit skips
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def arm_graceful_stop(stop: threading.Event) -> None:
    """From now on SIGTERM asks the process's loop to stop (it checks `stop` between steps)."""
    signal.signal(signal.SIGTERM, lambda *_: stop.set())


def configure_logging(log_level: str, tag: str = "") -> None:
    """SGLang's log line shape: `[2025-01-01 12:00:00 TP0] Prefill batch, ...`."""
    level = getattr(logging, log_level.upper(), logging.INFO)
    fmt = f"[%(asctime)s{' ' + tag if tag else ''}] %(message)s"
    logging.basicConfig(level=level, format=fmt, datefmt="%Y-%m-%d %H:%M:%S", force=True)
    arm_stack_dumps()


def arm_stack_dumps() -> None:
    """A stuck process can be asked where it is: `kill -USR1 PID` prints every thread's Python
    stack to its stderr. With SGL_STACK_DUMP_S=N set, each process also prints them every N
    seconds on its own (for runs where nobody is there to send the signal)."""
    if not hasattr(signal, "SIGUSR1"):
        return
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True, chain=False)
    every = float(os.environ.get("SGL_STACK_DUMP_S", "0") or 0)
    if every > 0:
        faulthandler.dump_traceback_later(every, repeat=True, file=sys.stderr)
