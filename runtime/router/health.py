"""Worker health: wait for workers at start and on /add_worker, probe every worker's /health
every --health-check-interval-secs (a worker goes out after --health-failure-threshold failed
probes in a row and comes back after --health-success-threshold good ones), and recheck at
once a worker that just failed a request."""
from __future__ import annotations

import asyncio
import logging
import time

from sgl.runtime.router.client import Client
from sgl.runtime.router.config import RouterArgs
from sgl.runtime.router.worker import Worker, WorkerPool

logger = logging.getLogger("sgl.router")
_WAIT_POLL_S = 0.25


class HealthChecker:
    def __init__(self, args: RouterArgs, pool: WorkerPool, client: Client) -> None:
        self.args, self.pool, self.client = args, pool, client
        self._rechecks: set[asyncio.Task] = set()

    async def probe(self, url: str) -> bool:
        return await self.client.probe(url + "/health", self.args.health_check_timeout_secs)

    async def wait_healthy(self, url: str, timeout_s: float) -> bool:
        """Poll `url`'s /health until it answers 200 or `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            if await self.probe(url):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_WAIT_POLL_S)

    async def wait_all(self) -> None:
        """At start: mark each worker healthy as soon as it answers; warn about the rest."""
        timeout_s = self.args.worker_startup_timeout_secs
        oks = await asyncio.gather(*(self.wait_healthy(w.url, timeout_s) for w in self.pool.all()))
        for worker, ok in zip(self.pool.all(), oks):
            worker.is_healthy = worker.is_healthy or ok
            if not ok:
                logger.warning("worker %s is not healthy after %.0f s; it joins when it is",
                               worker.url, timeout_s)

    async def check_all(self) -> None:
        workers = self.pool.all()
        oks = await asyncio.gather(*(self.probe(w.url) for w in workers))
        for worker, ok in zip(workers, oks):
            was_healthy = worker.is_healthy
            self.pool.record_probe(worker, ok, self.args.health_failure_threshold,
                                   self.args.health_success_threshold)
            if worker.is_healthy != was_healthy:
                logger.warning("worker %s is %s", worker.url,
                               "back" if worker.is_healthy else "out (failed /health)")

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.args.health_check_interval_secs)
            try:
                await self.check_all()
            except Exception:  # keep probing whatever one round hit
                logger.exception("health check round failed")

    def on_request_failure(self, worker: Worker) -> None:
        """Take the worker out now; one good probe right away brings it back (a dropped
        connection need not mean a dead worker)."""
        was_healthy = worker.is_healthy
        self.pool.record_failure(worker)
        if not was_healthy:
            return
        task = asyncio.get_running_loop().create_task(self._recheck(worker))
        self._rechecks.add(task)
        task.add_done_callback(self._rechecks.discard)

    async def _recheck(self, worker: Worker) -> None:
        if await self.probe(worker.url) and worker.url in self.pool and not worker.is_healthy:
            logger.info("worker %s answers /health again", worker.url)
            worker.is_healthy = True
