"""The data-parallel router: one HTTP endpoint in front of several sgl servers, with
round_robin, shortest_queue and cache_aware (approximate prefix tree) policies, retries on
worker failure, health checks, and workers added or removed while it runs.

    sgl router --worker-urls http://127.0.0.1:30001 http://127.0.0.1:30002 --port 30000
"""
from sgl.runtime.router.config import RouterArgs
from sgl.runtime.router.launch import main, run_router

__all__ = ["RouterArgs", "main", "run_router"]
