"""The workers the router balances over: their health and the requests it has in flight on each.
Everything here runs on the router's one event loop, so plain counters need no locks."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sgl.runtime.router.config import normalize_url


@dataclass
class Worker:
    url: str
    is_healthy: bool = False  # becomes True on its first good /health probe
    load: int = 0  # requests this router has sent and not yet seen finish
    # ... of which no byte of the answer has come back yet: queued or prefilling on the worker
    # (a stream's first event is its first token; a non-streamed answer comes whole)
    num_waiting: int = 0
    num_requests: int = 0  # requests ever routed here
    num_failures: int = 0  # requests that failed here before an answer (then retried)
    failed_probes: int = 0  # consecutive failed /health probes
    good_probes: int = 0  # consecutive good /health probes

    def view(self) -> dict[str, Any]:
        return {"url": self.url, "healthy": self.is_healthy, "load": self.load,
                "waiting": self.num_waiting,
                "num_requests": self.num_requests, "num_failures": self.num_failures}


class WorkerPool:
    """Workers in the order they were added. `on_remove` callbacks let a policy drop its state."""

    def __init__(self, urls: Iterable[str] = ()) -> None:
        self._workers: dict[str, Worker] = {}
        self.on_remove: list[Callable[[str], None]] = []
        for url in urls:
            self.add(url)

    def add(self, url: str, is_healthy: bool = False) -> Worker:
        url = normalize_url(url)
        if url in self._workers:
            raise ValueError(f"worker {url} is already registered")
        self._workers[url] = worker = Worker(url, is_healthy=is_healthy)
        return worker

    def remove(self, url: str) -> Worker | None:
        worker = self._workers.pop(normalize_url(url), None)
        if worker is not None:
            for callback in self.on_remove:
                callback(worker.url)
        return worker

    def get(self, url: str) -> Worker | None:
        return self._workers.get(normalize_url(url))

    def __contains__(self, url: str) -> bool:
        return normalize_url(url) in self._workers

    def all(self) -> list[Worker]:
        return list(self._workers.values())

    def healthy(self) -> list[Worker]:
        return [w for w in self._workers.values() if w.is_healthy]

    def urls(self) -> list[str]:
        return list(self._workers)

    def record_probe(self, worker: Worker, ok: bool, failure_threshold: int,
                     success_threshold: int) -> None:
        """Count a /health probe; flip the worker's health after enough probes in a row."""
        if ok:
            worker.good_probes, worker.failed_probes = worker.good_probes + 1, 0
            if not worker.is_healthy and worker.good_probes >= success_threshold:
                worker.is_healthy = True
        else:
            worker.failed_probes, worker.good_probes = worker.failed_probes + 1, 0
            if worker.is_healthy and worker.failed_probes >= failure_threshold:
                worker.is_healthy = False

    @staticmethod
    def record_failure(worker: Worker) -> None:
        """A request could not reach the worker: take it out now; probes bring it back."""
        worker.num_failures += 1
        worker.is_healthy = False
        worker.good_probes = 0
