"""Data parallelism behind one front end (`--dp-size N`): N scheduler processes, each a full
replica (its own model, KV pool and radix cache, all seeded alike). The HTTP process sends each
request to one replica (`--load-balance-method`) and remembers which, so that an abort reaches
the replica holding the request; every replica's outputs meet at the one detokenizer.

    front --request--> replica i --OutputBatch--+
          --abort----> replica holding the rid  +--> detokenizer --> front
          --control--> every replica -----------+
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Sequence
from typing import Any, Callable, Optional

from sgl.runtime.config import LOAD_BALANCE_METHODS
from sgl.runtime.io_struct import AbortReq, TokenizedGenerateReq, TokenOutput

# Internal-state ratios: recomputed from the summed counts, not summed themselves.
_RATIOS = ("token_usage", "cache_hit_rate")


class ReplicaDispatcher:
    """Picks the replica of every request and routes aborts. Runs on the front's event loop
    only, so the plain counters need no lock."""

    def __init__(self, senders: Sequence[Callable[[Any], None]],
                 method: str = "round_robin") -> None:
        if method not in LOAD_BALANCE_METHODS:
            raise ValueError(f"unknown load_balance_method {method!r}")
        self.senders, self.method = list(senders), method
        self.placement: dict[str, int] = {}  # rid -> replica, until the rid's last output
        self.num_in_flight = [0] * len(self.senders)
        self.num_dispatched = [0] * len(self.senders)
        self._next = 0  # round-robin turn; also breaks shortest_queue ties
        self._pins: dict[tuple[int, ...], list[int]] = {}  # prompt -> [replica, holders]

    @property
    def dp_size(self) -> int:
        return len(self.senders)

    def send(self, msg: Any) -> None:
        """The front's `send`: a request goes to one replica, an abort where its rid went
        (an empty rid, abort-all, to every replica)."""
        if isinstance(msg, TokenizedGenerateReq):
            self._send_request(msg)
        elif isinstance(msg, AbortReq):
            self._send_abort(msg)
        else:
            raise TypeError(f"cannot dispatch {type(msg).__name__}; control calls use send_to")

    def send_to(self, replica: int, msg: Any) -> None:
        self.senders[replica](msg)

    def on_outputs(self, outputs: Sequence[TokenOutput]) -> None:
        """Forget a request once its last output is back: it holds nothing on its replica."""
        for out in outputs:
            if out.finished_reason is not None:
                replica = self.placement.pop(out.rid, None)
                if replica is not None:
                    self.num_in_flight[replica] -= 1

    @contextlib.contextmanager
    def pinned(self, prompts: Sequence[Sequence[int]]) -> Iterator[None]:
        """While the block runs, requests for any of `prompts` go to one replica per prompt:
        n>1 warms a prompt's prefix once and its n copies must find it in the same cache."""
        keys = [tuple(p) for p in prompts]
        for key in keys:
            pin = self._pins.setdefault(key, [-1, 0])
            if pin[1] == 0:
                pin[0] = self._pick()
            pin[1] += 1
        try:
            yield
        finally:
            for key in keys:
                self._pins[key][1] -= 1
                if self._pins[key][1] == 0:
                    del self._pins[key]

    def _send_request(self, req: TokenizedGenerateReq) -> None:
        replica = self._pinned_replica(req.input_ids)
        if replica is None:
            replica = self._pick()
        self.placement[req.rid] = replica
        self.num_in_flight[replica] += 1
        self.num_dispatched[replica] += 1
        self.senders[replica](req)

    def _send_abort(self, msg: AbortReq) -> None:
        if not msg.rid:
            for send in self.senders:
                send(msg)
        elif msg.rid in self.placement:
            self.senders[self.placement[msg.rid]](msg)
        # else: the request's last output is back already; there is nothing left to abort

    def _pinned_replica(self, input_ids: Sequence[int]) -> Optional[int]:
        if not self._pins:
            return None
        pin = self._pins.get(tuple(input_ids))
        return None if pin is None else pin[0]

    def _pick(self) -> int:
        n = self.dp_size
        if self.method == "shortest_queue":  # fewest requests in flight; ties in turn
            turn = [(self._next + k) % n for k in range(n)]
            replica = min(turn, key=lambda i: self.num_in_flight[i])
        else:
            replica = self._next
        self._next = (replica + 1) % n
        return replica


_PER_REPLICA = ("dp_rank", "pid")  # in `internal_states` only: no server-wide value


def merge_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The server-wide view of the replicas' internal states (scheduler_process.internal_state):
    counts and sizes summed, KV usage and cache hit rate recomputed over the sums."""
    if len(states) == 1:
        return {k: v for k, v in states[0].items() if k not in _PER_REPLICA}
    merged = {k: sum(s[k] for s in states) for k, v in states[0].items()
              if k not in _PER_REPLICA and k not in _RATIOS and isinstance(v, (int, float))}
    total = max(merged.get("max_total_tokens", 0), 1)
    merged["token_usage"] = sum(s["token_usage"] * s["max_total_tokens"] for s in states) / total
    merged["cache_hit_rate"] = merged["total_cached_tokens"] / max(merged["total_prompt_tokens"], 1)
    return merged


def merge_ready_infos(infos: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One model description from the replicas' start-up reports (they load the same model):
    the pool sizes are the server's, summed."""
    first = dict(infos[0])
    for key in ("vocab_size", "context_length"):
        if any(info[key] != first[key] for info in infos):
            values = [info[key] for info in infos]
            raise RuntimeError(f"data-parallel replicas disagree on {key}: {values}")
    for key in ("max_total_tokens", "max_running_requests"):
        first[key] = sum(info[key] for info in infos)
    return first


def replica_args(args: Any, dp_rank: int) -> Any:
    """The ServerArgs of one replica: the same model and seed, and (tp_size > 1) a rendezvous
    address of its own: the given port plus dp_rank, or a free port when none is given."""
    if args.dp_size == 1:
        return args
    addr = args.dist_init_addr
    if addr is not None:
        host, port = addr.rsplit(":", 1)
        addr = f"{host}:{int(port) + dp_rank}"
    return dataclasses.replace(args, dist_init_addr=addr)


@contextlib.contextmanager
def replica_environment(args: Any, dp_rank: int) -> Iterator[None]:
    """Processes spawned inside the block get replica dp_rank's share of the machine: on GPU its
    tp_size GPUs (CUDA_VISIBLE_DEVICES; replica i runs on GPUs [i * tp_size, (i + 1) * tp_size)),
    on CPU its share of the cores (OMP_NUM_THREADS, unless set): N replicas each running one
    thread per core would oversubscribe the cores and slow every step down many times over."""
    changes = _replica_env(args, dp_rank)
    previous = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


def _replica_env(args: Any, dp_rank: int) -> dict[str, str]:
    if args.dp_size == 1:
        return {}
    import torch
    if args.device in ("auto", "cuda") and torch.cuda.is_available():
        return {"CUDA_VISIBLE_DEVICES": ",".join(_replica_gpus(args, dp_rank))}
    if args.device in ("auto", "cpu") and "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return {"OMP_NUM_THREADS": str(max(1, (cores or 1) // (args.dp_size * args.tp_size)))}
    return {}


def _replica_gpus(args: Any, dp_rank: int) -> list[str]:
    import torch
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = env.split(",") if env else [str(i) for i in range(torch.cuda.device_count())]
    needed = args.dp_size * args.tp_size
    if len(visible) < needed:
        raise ValueError(f"dp_size {args.dp_size} x tp_size {args.tp_size} needs {needed} GPUs, "
                         f"{len(visible)} visible")
    return visible[dp_rank * args.tp_size:(dp_rank + 1) * args.tp_size]
