"""shortest_queue: the worker with the fewest requests in flight from this router; ties go to
the one that has been sent fewer requests in all, so an idle pool is still used evenly."""
from __future__ import annotations

from collections.abc import Sequence

from sgl.runtime.router.policies.base import Policy, least_loaded, register_policy
from sgl.runtime.router.worker import Worker


@register_policy("shortest_queue")
class ShortestQueuePolicy(Policy):
    def select(self, workers: Sequence[Worker], text: str) -> Worker:
        return least_loaded(workers)
