"""Fault injection around a real runner (the ModelRunner of an in-process Engine): it implements
the scheduler's `Runner` protocol by delegating, and fails the rows of chosen requests (those
whose new tokens in a step include `poison_token`: `RunResult.failed_reqs`) or whole steps (too
many tokens: StepOutOfMemory), the way a device would, so the frontend's and the scheduler's
error paths run on real models."""
from __future__ import annotations

from typing import Any, Optional

from sgl.runtime.scheduler.contract import RunResult, StepInputs, StepOutOfMemory


class FaultyRunner:
    def __init__(self, inner: Any, poison_token: Optional[int] = None,
                 oom_above_tokens: Optional[int] = None) -> None:
        self.inner, self.info = inner, inner.info
        self.poison_token, self.oom_above_tokens = poison_token, oom_above_tokens
        self.num_failed_rows = self.num_oom = 0

    def launch_batch(self, step: StepInputs) -> "_Pending":
        return self.launch_sampling(step, self.launch_forward(step))

    def launch_forward(self, step: StepInputs) -> Any:
        n = step.batch.num_tokens
        if self.oom_above_tokens is not None and n > self.oom_above_tokens:
            self.num_oom += 1
            raise StepOutOfMemory(f"injected: {n} tokens > {self.oom_above_tokens}")
        return self.inner.launch_forward(step)

    def launch_sampling(self, step: StepInputs, forward: Any) -> "_Pending":
        return _Pending(self.inner.launch_sampling(step, forward), self._poisoned(step))

    def draft(self, inputs: Any) -> Any:
        return self.inner.draft(inputs)

    def set_speculative(self, server_args: Any) -> None:
        self.inner.set_speculative(server_args)

    def _poisoned(self, step: StepInputs) -> dict[int, str]:
        if self.poison_token is None:
            return {}
        b, out, start = step.batch, {}, 0
        ids = b.input_ids.tolist()
        for i, n in enumerate(b.extend_lens_cpu):
            if self.poison_token in ids[start:start + n]:
                out[i] = "injected row fault"
            start += n
        self.num_failed_rows += len(out)
        return out


class _Pending:
    def __init__(self, inner: Any, failed: dict[int, str]) -> None:
        self.inner, self.failed = inner, failed

    def resolve(self) -> RunResult:
        result = self.inner.resolve()
        result.failed_reqs = dict(self.failed)
        return result


def install(engine: Any, **faults: Any) -> FaultyRunner:
    """Put a FaultyRunner between the engine's scheduler and its ModelRunner (idle engine)."""
    def swap(sched: Any) -> FaultyRunner:
        inner = sched.runner.inner if isinstance(sched.runner, FaultyRunner) else sched.runner
        faulty = FaultyRunner(inner, **faults)
        sched.runner = sched.chain.runner = faulty
        return faulty
    return engine.call_in_scheduler(swap)


def uninstall(engine: Any) -> None:
    def swap(sched: Any) -> None:
        if isinstance(sched.runner, FaultyRunner):
            sched.runner = sched.chain.runner = sched.runner.inner
    engine.call_in_scheduler(swap)
