"""round_robin: the healthy workers in turn."""
from __future__ import annotations

from collections.abc import Sequence

from sgl.runtime.router.config import RouterArgs
from sgl.runtime.router.policies.base import Policy, register_policy
from sgl.runtime.router.worker import Worker


@register_policy("round_robin")
class RoundRobinPolicy(Policy):
    def __init__(self, args: RouterArgs) -> None:
        super().__init__(args)
        self._next = 0

    def select(self, workers: Sequence[Worker], text: str) -> Worker:
        worker = workers[self._next % len(workers)]
        self._next += 1
        return worker
