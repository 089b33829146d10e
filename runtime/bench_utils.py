"""Small pieces the benchmark programs share."""
from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any


def append_jsonl(path: str | None, record: dict[str, Any]) -> None:
    """Append one result as a JSON line (SGLang's benchmarks keep results this way)."""
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


@contextlib.contextmanager
def hook_steps(sched: Any, steps: list[tuple[bool, float]], prof: Any = None) -> Iterator[None]:
    """While inside: time every scheduler step on the scheduler's own thread, appending
    (whether it ran in EXTEND mode, seconds) to `steps`, under the cProfile `prof` if given
    (cProfile sees only the thread it is enabled on)."""
    plain_step = sched.step

    def step():
        stats = sched.stats
        extend_before, t0 = stats.num_extend_passes, time.perf_counter()
        if prof is not None:
            prof.enable()
        try:
            return plain_step()
        finally:
            if prof is not None:
                prof.disable()
            steps.append((stats.num_extend_passes > extend_before, time.perf_counter() - t0))
    sched.step = step  # the loop looks it up on every step
    try:
        yield
    finally:
        del sched.step
