"""The HTTP process's view of whether each scheduler still steps (--watchdog-timeout).

A scheduler sends a Heartbeat between steps (at most one a second); a replica silent for longer
than the timeout is stalled: a step that hangs, a process stopped (SIGSTOP) or wedged. While
one is, /health says 503 and the requests placed on it fail with 503, so no client waits
forever; new requests are refused. When its heartbeats come back, so does the server."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Optional

from sgl.runtime.server.errors import ApiError

logger = logging.getLogger("sgl.server")


class Watchdog:
    def __init__(self, num_replicas: int, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.last_beat = [time.monotonic()] * num_replicas
        self._reported: set[int] = set()

    def beat(self, dp_rank: int) -> None:
        self.last_beat[dp_rank] = time.monotonic()
        if dp_rank in self._reported:
            self._reported.discard(dp_rank)
            logger.warning("scheduler dp%d is stepping again", dp_rank)

    def stalled(self) -> list[int]:
        now = time.monotonic()
        return [i for i, t in enumerate(self.last_beat) if now - t > self.timeout_s]

    def problem(self) -> Optional[str]:
        """Why the server is unhealthy, or None."""
        stalled = self.stalled()
        if not stalled:
            return None
        silent_s = time.monotonic() - min(self.last_beat[i] for i in stalled)
        names = ", ".join(f"dp{i}" for i in stalled)
        return (f"scheduler {names} has not stepped for {silent_s:.0f} s "
                f"(--watchdog-timeout {self.timeout_s:g})")

    def error(self) -> Optional[ApiError]:
        problem = self.problem()
        return None if problem is None else ApiError(problem, 503, None, "scheduler_stalled")

    async def run(self, front: Any) -> None:
        """Fail the requests on stalled replicas, every fraction of the timeout."""
        while True:
            await asyncio.sleep(min(0.5, self.timeout_s / 4))
            stalled = set(self.stalled())
            if not stalled:
                continue
            for i in stalled - self._reported:
                logger.error("scheduler dp%d has not stepped for %g s; failing its requests",
                             i, self.timeout_s)
            self._reported |= stalled
            placement = front.dispatcher.placement
            rids = [rid for rid, replica in placement.items() if replica in stalled]
            if rids:
                front.fail(rids, self.error())
