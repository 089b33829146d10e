"""What the scheduler does when a step fails (the runner raised, e.g. out of device memory): no
request is aborted for another's sake. The KV the failed steps wrote is forgotten (every running
request goes back to what a step that was read back confirmed), and the work runs again in
smaller steps: half the prompt tokens per step while there are more than `MIN_CHUNK`, else half
the running requests (the others are retracted, their KV kept in the radix tree). A request
that fails alone fails with the error: at once for an error other than out of memory, for out of
memory once its prompt chunk is down to `MIN_CHUNK` tokens. Bisecting this way also isolates a
request that breaks every step it is in. The limits double back after `RELAX_AFTER` good steps
(more after each failure, so a load that keeps failing at one size settles below it)."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Optional

import torch

from sgl.runtime.io_struct import abort_reason
from sgl.runtime.scheduler.batch import StepBook
from sgl.runtime.scheduler.contract import StepInputs, StepOutOfMemory
from sgl.runtime.scheduler.kv_manager import KVManager
from sgl.runtime.scheduler.planner import Planner, StepPlan
from sgl.runtime.scheduler.req import Req, ReqState

logger = logging.getLogger("sgl.scheduler")

MIN_CHUNK = 16     # the smallest prompt chunk tried before a lone request fails for memory
RELAX_AFTER = 16   # good steps before the limits double; twice as many after each failure
_MAX_RELAX_AFTER = 4096

OpenStep = tuple[StepPlan, StepInputs, StepBook]


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, (StepOutOfMemory, torch.OutOfMemoryError))


class StepRecovery:
    def __init__(self, planner: Planner, kv: KVManager, release_draft: Callable[[Req], None],
                 finish: Callable[[Req], None]) -> None:
        self.planner, self.kv = planner, kv
        self.release_draft, self.finish = release_draft, finish
        self.num_failed_steps = 0
        self.num_failed_reqs = 0
        self._good_steps = 0
        self._relax_after = RELAX_AFTER

    def on_good_step(self) -> None:
        caps = self.planner.caps
        if not caps.active:
            return
        self._good_steps += 1
        if self._good_steps < self._relax_after:
            return
        self._good_steps = 0
        if caps.num_reqs is not None:
            caps.num_reqs *= 2
            caps.num_reqs = None if caps.num_reqs >= self.planner.max_running else caps.num_reqs
        if caps.num_tokens is not None:
            caps.num_tokens *= 2
            caps.num_tokens = None if caps.num_tokens >= self.planner.chunk_size else caps.num_tokens
        logger.info("step limits relaxed to %s running requests, %s prompt tokens per step",
                    caps.num_reqs or "no limit on", caps.num_tokens or "no limit on")

    def recover(self, error: BaseException, steps: list[OpenStep], running: list[Req],
                waiting: list[Req]) -> list[Req]:
        """Undo `steps` (launched, never read back) and choose how their work runs again.
        Returns the requests failed for good (finished, KV released)."""
        self.num_failed_steps += 1
        self._good_steps = 0
        self._relax_after = min(2 * self._relax_after, _MAX_RELAX_AFTER)
        involved = self._roll_back(steps, running)
        num_prompt = max((plan.num_prompt_tokens for plan, _, _ in steps), default=0)
        oom = is_out_of_memory(error)
        logger.warning("a step of %d request(s), %d prompt token(s) failed: %s: %s", len(involved),
                       num_prompt, type(error).__name__, error)
        if num_prompt > MIN_CHUNK and (oom or len(involved) > 1):  # fewer prompt tokens first
            self._limit(None, max(MIN_CHUNK, num_prompt // 2))
            return []
        if len(involved) > 1:  # then fewer requests: the rest wait, their KV in the tree
            self._limit(max(1, len(involved) // 2), None)
            for req in sorted(running, key=lambda r: r.arrival)[self.planner.running_limit:]:
                self.planner.retract(req, running, waiting)
            return []
        if not involved:
            return []
        what = "out of device memory even alone" if oom else "its step failed"
        self.fail(involved[0], f"{what}: {type(error).__name__}: {error}")
        return involved

    def fail(self, req: Req, message: str) -> None:
        """Fail a running request whose KV is rolled back to what was confirmed."""
        self.num_failed_reqs += 1
        logger.error("request %s failed: %s", req.rid, message)
        req.finish(abort_reason(message, 500))
        self.finish(req)

    def _roll_back(self, steps: list[OpenStep], running: list[Req]) -> list[Req]:
        for _, _, book in steps:
            for rows in book.verify.values():
                if not rows.kept:  # its draft's KV slots were never taken by the request
                    self.kv.free(rows.slots)
        for req in running:
            self.kv.roll_back(req)
            self.release_draft(req)
        seen: dict[int, Req] = {}
        for plan, _, _ in steps:
            for req in plan.reqs:
                if req.state is ReqState.RUNNING:
                    seen.setdefault(id(req), req)
        return list(seen.values())

    def _limit(self, num_reqs: Optional[int], num_tokens: Optional[int]) -> None:
        caps = self.planner.caps
        if num_reqs is not None:
            caps.num_reqs = min(num_reqs, caps.num_reqs or num_reqs)
        if num_tokens is not None:
            caps.num_tokens = min(num_tokens, caps.num_tokens or num_tokens)
        logger.warning("retrying in smaller steps: at most %s running requests, %s prompt tokens",
                       caps.num_reqs or "any number of", caps.num_tokens or "any number of")
