"""Small pieces the benchmark programs share."""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any


def append_jsonl(path: str | None, record: dict[str, Any]) -> None:
    """Append one result as a JSON line (SGLang's benchmarks keep results this way)."""
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


class _StepTimer:
    """A `Scheduler.step_hooks` entry: times each step, under a cProfile profiler if given."""

    def __init__(self, steps: list[tuple[bool, float]], prof: Any) -> None:
        self.steps, self.prof = steps, prof

    def begin(self) -> None:
        if self.prof is not None:
            self.prof.enable()

    def end(self, seconds: float, ran_extend: bool) -> None:
        if self.prof is not None:
            self.prof.disable()
        self.steps.append((ran_extend, seconds))


@contextlib.contextmanager
def hook_steps(sched: Any, steps: list[tuple[bool, float]], prof: Any = None) -> Iterator[None]:
    """While inside: time every scheduler step on the scheduler's own thread (its public
    `step_hooks`), appending (whether it ran in EXTEND mode, seconds) to `steps`, under the
    cProfile `prof` if given (cProfile sees only the thread it is enabled on)."""
    timer = _StepTimer(steps, prof)
    sched.step_hooks.append(timer)
    try:
        yield
    finally:
        sched.step_hooks.remove(timer)
