"""The runner's side of prefill-decode disaggregation: moving KV between two servers' pools over
torch.distributed point-to-point (NCCL between GPUs, gloo on CPU), one process group of two per
prefill/decode pair (a "link"), built on the prefill's bootstrap store.

Each link has a worker thread that runs its jobs one at a time, in the order the scheduler
queued them; both sides queue a pair's jobs in the same order (the prefill announces each send
first), which is what NCCL's ordered point-to-point needs. A job waits at most the link's
timeout: gloo's `wait(timeout)` and a polled NCCL work both give up, and any failure (a timeout,
a peer that died: gloo reports "connection closed" within milliseconds) closes the link, whose
queued jobs then fail at once. The scheduler frees a job's slots only after its result, so a
late transfer can never write into slots handed to another request."""
from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from datetime import timedelta
from typing import Any, Optional, Protocol

import torch
import torch.distributed as dist

from sgl.runtime.cache.memory_pool import MHATokenToKVPool
from sgl.runtime.disaggregation.messages import error_text
from sgl.runtime.scheduler.contract import KVJob, KVJobResult, KVLinkSpec

logger = logging.getLogger("sgl.disaggregation")
_NCCL_POLL_S = 0.0005


class KVStoreIO(Protocol):
    """A runner's KV storage, as transfers see it: tokens' KV gathered into one contiguous
    tensor (what goes over the wire) and scattered back into slots."""
    device: torch.device

    def empty(self, num_tokens: int, device: torch.device) -> torch.Tensor: ...

    def gather(self, slots: torch.Tensor) -> torch.Tensor: ...

    def scatter(self, slots: torch.Tensor, data: torch.Tensor) -> None: ...


class PoolIO:
    """KVStoreIO over an MHATokenToKVPool: the wire tensor is (2 * layers, tokens, kv heads,
    head dim), every layer's K then every layer's V."""

    def __init__(self, pool: MHATokenToKVPool) -> None:
        self.pool, self.device = pool, pool.device
        self.buffers = [*pool.k_buffer, *pool.v_buffer]

    def empty(self, num_tokens: int, device: torch.device) -> torch.Tensor:
        p = self.pool
        return torch.empty((len(self.buffers), num_tokens, p.num_kv_heads, p.head_dim),
                           dtype=p.dtype, device=device)

    def gather(self, slots: torch.Tensor) -> torch.Tensor:
        idx = slots.to(self.device, non_blocking=True)
        out = self.empty(int(slots.numel()), self.device)
        for i, buf in enumerate(self.buffers):
            torch.index_select(buf, 0, idx, out=out[i])
        return out

    def scatter(self, slots: torch.Tensor, data: torch.Tensor) -> None:
        idx = slots.to(self.device, non_blocking=True)
        data = data.to(self.device, non_blocking=True)
        for buf, part in zip(self.buffers, data):
            buf.index_copy_(0, idx, part)


class KVTransferAgent:
    """The links of one runner and the results of their jobs."""

    def __init__(self, io: KVStoreIO) -> None:
        self.io = io
        self.links: dict[int, LinkWorker] = {}
        self.results: queue.Queue[KVJobResult] = queue.Queue()

    def open(self, spec: KVLinkSpec) -> None:
        self.close(spec.link_id)
        self.links[spec.link_id] = LinkWorker(spec, self.io, self.results)

    def submit(self, job: KVJob) -> None:
        link = self.links.get(job.link_id)
        if link is None:
            self.results.put(KVJobResult(job.link_id, job.job_id, f"KV link {job.link_id} is not open"))
        else:
            link.submit(job)

    def poll(self) -> list[KVJobResult]:
        out = []
        while True:
            try:
                out.append(self.results.get_nowait())
            except queue.Empty:
                return out

    def close(self, link_id: int) -> None:
        link = self.links.pop(link_id, None)
        if link is not None:
            link.close("closed by this server")

    def close_all(self) -> None:
        for link_id in list(self.links):
            self.close(link_id)


class LinkWorker:
    """One link: a process group of two and the thread that runs its jobs in order."""

    def __init__(self, spec: KVLinkSpec, io: KVStoreIO, results: queue.Queue) -> None:
        self.spec, self.io, self.results = spec, io, results
        self.peer = 1 - spec.rank
        # gloo moves CPU tensors only: GPU KV goes through host memory on that backend
        self.wire_device = torch.device("cpu") if spec.backend == "gloo" else io.device
        self._jobs: collections.deque[KVJob] = collections.deque()
        self._cv = threading.Condition()
        self._closed: Optional[str] = None
        self._pg: Any = None
        self._thread = threading.Thread(target=self._run, name=f"sgl-kv-link{spec.link_id}",
                                        daemon=True)
        self._thread.start()

    def submit(self, job: KVJob) -> None:
        with self._cv:
            if self._closed is None:
                self._jobs.append(job)
                self._cv.notify()
                return
            reason = self._closed
        self.results.put(KVJobResult(job.link_id, job.job_id, f"KV link closed: {reason}"))

    def close(self, reason: str) -> None:
        """Fail the queued jobs; one already running finishes (or times out) first."""
        with self._cv:
            self._closed = self._closed or reason
            failed, self._jobs = list(self._jobs), collections.deque()
            self._cv.notify()
        for job in failed:
            self.results.put(KVJobResult(job.link_id, job.job_id, f"KV link closed: {reason}"))

    def _next(self) -> Optional[KVJob]:
        with self._cv:
            while not self._jobs and self._closed is None:
                self._cv.wait()
            return self._jobs.popleft() if self._jobs else None

    def _run(self) -> None:
        if self.io.device.type == "cuda":
            torch.cuda.set_device(self.io.device)
        try:
            self._pg = self._connect()
        except Exception as e:
            self.close(f"pairing with the peer server failed: {error_text(e)}")
            return
        while (job := self._next()) is not None:
            error = self._run_job(job)
            self.results.put(KVJobResult(job.link_id, job.job_id, error))
            if error is not None:
                self.close(error)
        self._abort()

    def _run_job(self, job: KVJob) -> Optional[str]:
        t0 = time.monotonic()
        try:
            self._transfer(job, t0 + self.spec.timeout_s)
            return None
        except Exception as e:
            what = "sending KV to" if job.is_send else "receiving KV from"
            return f"{what} the peer server failed after {time.monotonic() - t0:.1f} s: {error_text(e)}"

    def _connect(self) -> Any:
        spec = self.spec
        timeout = timedelta(seconds=spec.pair_timeout_s)
        store = dist.TCPStore(spec.store_host, spec.store_port, is_master=False, timeout=timeout)
        prefixed = dist.PrefixStore(f"sgl/link{spec.link_id}", store)
        if spec.backend == "gloo":  # its timeout bounds the pairing; each wait passes its own
            return dist.ProcessGroupGloo(prefixed, spec.rank, 2, timeout)
        options = dist.ProcessGroupNCCL.Options()
        # Our own deadline aborts a stuck transfer first; NCCL's watchdog would end the process.
        options._timeout = timedelta(seconds=4 * max(spec.timeout_s, spec.pair_timeout_s) + 60)
        pg = dist.ProcessGroupNCCL(prefixed, spec.rank, 2, options)
        # NCCL builds the pair's communicator at its first send/recv, blocking until the peer
        # does too: do it here, as part of the pairing, not inside a transfer's deadline.
        probe = torch.zeros(1, device=self.io.device)
        (pg.send if spec.rank == 0 else pg.recv)([probe], self.peer, 0).wait()
        torch.cuda.current_stream().synchronize()
        return pg

    def _transfer(self, job: KVJob, deadline: float) -> None:
        if job.is_send:
            # (2 * layers, tokens, kv heads, head dim); ordered after the forward that wrote it
            data = self.io.gather(job.slots).to(self.wire_device)
            work = self._pg.send([data], self.peer, 0)
        else:
            data = self.io.empty(job.num_tokens, self.wire_device)
            work = self._pg.recv([data], self.peer, 0)
        self._wait(work, deadline)
        if not job.is_send and job.slots is not None:
            self.io.scatter(job.slots, data)
        if self.io.device.type == "cuda":  # the KV is in place before the scheduler hears of it
            torch.cuda.current_stream().synchronize()

    def _wait(self, work: Any, deadline: float) -> None:
        if self.spec.backend == "gloo":  # gloo's works complete only inside wait()
            work.wait(timedelta(seconds=max(deadline - time.monotonic(), 0.001)))
            return
        while not work.is_completed():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no progress in {self.spec.timeout_s:.0f} s")
            time.sleep(_NCCL_POLL_S)
        work.wait()

    def _abort(self) -> None:
        """Tear the group down; the peer's pending and later jobs fail (connection closed)."""
        if self._pg is None:
            return
        try:
            self._pg.abort()
        except Exception as e:  # nothing more to do for a group that is already broken
            logger.debug("aborting KV link %d: %s", self.spec.link_id, e)
        self._pg = None

