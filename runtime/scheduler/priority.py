"""Priority scheduling (--enable-priority-scheduling), as SGLang does it: the waiting queue is
ordered by priority, first come first served within one (so it goes with --schedule-policy fcfs
only); higher values first unless --schedule-low-priority-values-first; a request that gives no
priority gets --default-priority-value, else ranks below every explicit one. A waiting request
that cannot be admitted for want of a request slot or KV room preempts running requests whose
priority is worse than its own by more than --priority-scheduling-preemption-threshold (unless
--disable-priority-preemption): the least preferred first (the newest among equals), only as
many as it needs. A preempted request is retracted (its KV stays in the radix tree) and waits
again with its own priority. There is no aging: a steady stream of higher-priority requests
keeps lower ones waiting, as in SGLang."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from sgl.runtime.request_options import PRIORITY_MAX, PRIORITY_MIN
from sgl.runtime.scheduler.req import Req


@dataclass(frozen=True)
class PriorityOrder:
    low_values_first: bool = False
    preemption_threshold: Optional[int] = 10  # None: never preempt

    @classmethod
    def from_args(cls, args: Any) -> Optional["PriorityOrder"]:
        """None when priority scheduling is off (priorities are then ignored)."""
        if not args.enable_priority_scheduling:
            return None
        threshold = None if args.disable_priority_preemption else args.priority_scheduling_preemption_threshold
        return cls(args.schedule_low_priority_values_first, threshold)

    def unset(self) -> int:
        """The priority of a request that gives none: below every explicit one."""
        return PRIORITY_MAX if self.low_values_first else PRIORITY_MIN

    def rank(self, priority: int) -> int:
        """Smaller ranks are admitted first."""
        return priority if self.low_values_first else -priority

    def preempts(self, waiting: Req, running: Req) -> bool:
        if self.preemption_threshold is None:
            return False
        return self.rank(running.priority) - self.rank(waiting.priority) > self.preemption_threshold

    def choose_victims(self, req: Req, candidates: list[Req], num_slots: int, num_tokens: int,
                       frees: Callable[[Req], int]) -> list[Req]:
        """The fewest of `candidates` (running requests) to preempt so that `req` gets
        `num_slots` request slots and `num_tokens` KV tokens (`frees(r)`: what r gives back);
        [] when the ones it may preempt cannot free that much."""
        eligible = sorted((r for r in candidates if self.preempts(req, r)),
                          key=lambda r: (-self.rank(r.priority), -r.arrival))
        chosen: list[Req] = []
        for victim in eligible:
            if num_slots <= 0 and num_tokens <= 0:
                break
            chosen.append(victim)
            num_slots, num_tokens = num_slots - 1, num_tokens - frees(victim)
        return chosen if chosen and num_slots <= 0 and num_tokens <= 0 else []


def order_by_priority(order: PriorityOrder, waiting: list[Req]) -> list[Req]:
    """Priority first, then arrival (SGLang's priority + fcfs)."""
    return sorted(waiting, key=lambda r: (order.rank(r.priority), r.arrival))
