"""Prometheus text for GET /metrics: the router's counters and each worker's state."""
from __future__ import annotations

from collections.abc import Mapping

from sgl.runtime.router.worker import WorkerPool

_WORKER_GAUGES = (("sgl_router_worker_healthy", "1 while the worker is in rotation", "gauge",
                   lambda w: int(w.is_healthy)),
                  ("sgl_router_worker_load", "requests in flight on the worker", "gauge",
                   lambda w: w.load),
                  ("sgl_router_worker_requests_total", "requests routed to the worker", "counter",
                   lambda w: w.num_requests),
                  ("sgl_router_worker_failures_total", "requests the worker failed (resent)",
                   "counter", lambda w: w.num_failures))


def render(pool: WorkerPool, counters: Mapping[str, int]) -> str:
    lines: list[str] = []
    for key in ("requests_total", "retries_total", "failed_total", "broken_streams_total"):
        name = f"sgl_router_{key}"
        lines += [f"# TYPE {name} counter", f"{name} {counters.get(key, 0)}"]
    for name, help_text, kind, value in _WORKER_GAUGES:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        lines += [f'{name}{{worker="{w.url}"}} {value(w)}' for w in pool.all()]
    return "\n".join(lines) + "\n"
